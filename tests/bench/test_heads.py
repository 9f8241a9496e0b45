"""The task heads: the cosine (zero-shot) head, its file format, and how label descriptions become one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mergesmith.adapt.functional import fixed_head_logits
from mergesmith.bench.heads import CosineHead, check_label_texts, load_head, save_head, zero_shot_head
from mergesmith.errors import MergesmithError


def test_cosine_head_is_scaled_cosine_similarity():
    rows = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    head = CosineHead(rows, scale=20.0)
    features = torch.tensor([[5.0, 0.0], [1.0, 1.0]])
    expected = 20.0 * nn.functional.cosine_similarity(features[:, None], rows[None], dim=-1)
    assert torch.allclose(head(features), expected, atol=1e-5)
    assert (head.in_features, head.out_features) == (2, 3)
    assert list(head.parameters()) == []  # nothing of a fixed head can train


def test_heads_round_trip_through_their_files(tmp_path):
    cosine = CosineHead(torch.randn(4, 8), scale=12.5)
    save_head(cosine, tmp_path / "c.safetensors")
    back = load_head(tmp_path / "c.safetensors")
    assert isinstance(back, CosineHead) and back.scale == 12.5
    assert torch.equal(back.weight, cosine.weight)
    linear = nn.Linear(8, 3)
    save_head(linear, tmp_path / "l.safetensors")
    again = load_head(tmp_path / "l.safetensors")
    assert isinstance(again, nn.Linear)
    assert torch.equal(again.weight, linear.weight) and torch.equal(again.bias, linear.bias)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_fixed_head_logits_reach_the_features_never_the_head(kind):
    torch.manual_seed(0)
    head = nn.Linear(6, 3) if kind == "linear" else CosineHead(torch.randn(3, 6), 20.0)
    features = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    logits = fixed_head_logits(head, features)
    assert logits.dtype == torch.float64
    assert torch.allclose(logits.float(), head(features.detach().float()), atol=1e-5)
    logits.sum().backward()
    assert features.grad is not None
    assert all(p.grad is None for p in head.parameters())


class _Featurizer:
    """Features = bag of characters: enough to check that the head's rows are the texts' normalised features."""

    def encode(self, examples):
        return [e.text for e in examples]

    def __call__(self, encoder, split):
        return torch.stack([torch.tensor([t.count("a"), t.count("b"), 1.0]) for t in split])


def test_zero_shot_head_rows_are_the_label_descriptions_features():
    head = zero_shot_head(None, _Featurizer(), ["aa", "bbbb"], temperature=10.0)
    assert torch.allclose(head.weight, nn.functional.normalize(torch.tensor([[2.0, 0, 1], [0, 4.0, 1]]), dim=1))
    assert head(torch.tensor([[4.0, 0.0, 2.0]])).argmax().item() == 0


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ((), "task t: the zero-shot protocol needs a description of each class"),
        (("a cat",), "task t: class .dog. has no label description"),
        (("a cat", "  "), "task t: class .dog. has a blank label description"),
        (("a cat", "A  Cat"), "task t: classes 'cat' and 'dog' have the same label description"),
    ],
)
def test_label_descriptions_missing_or_repeated_are_refused(texts, message):
    with pytest.raises(MergesmithError, match=message):
        check_label_texts("t", ("cat", "dog"), texts)

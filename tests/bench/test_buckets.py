"""Text features of many splits in one pass over length buckets: the same features as split by split, in each split's
order, the same on every call; featurizers without buckets score split by split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mergesmith.bench.buckets import bucket_by_length, bucketed_features
from mergesmith.bench.data import Example
from mergesmith.bench.encoder import EncodedSplit, split_features
from mergesmith.bench.features import TextFeaturizer
from mergesmith.bench.scoring import Evaluator
from mergesmith.errors import MergesmithError


class _Task:
    def __init__(self, name: str):
        self.name = name


def _examples(seed: int, n: int, longest: int) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = int(torch.randint(1, longest + 1, (1,), generator=g))
        out.append(Example(" ".join(f"w{int(x)}" for x in torch.randint(10, 200, (words,), generator=g)), i % 2))
    return out


@pytest.fixture(scope="module")
def text(bert_family):
    featurizer = TextFeaturizer.from_base(bert_family.base)
    # Three tasks whose lengths overlap but differ: short, mixed, long.
    splits = {
        name: featurizer.encode(_examples(seed, n, longest))
        for name, seed, n, longest in (("short", 1, 23, 4), ("mixed", 2, 31, 20), ("long", 3, 17, 30))
    }
    return featurizer, featurizer.load(bert_family.base), splits


def test_buckets_place_every_row_once_and_keep_its_ids():
    splits = {
        "a": EncodedSplit(((1, 2, 3), (4,), (5, 6), (7, 8, 9)), torch.tensor([0, 1, 0, 1])),
        "b": EncodedSplit(((10, 11), (12, 13, 14, 15), (16,)), torch.tensor([1, 0, 1])),
    }
    buckets = bucket_by_length(splits, pad_id=0, max_tokens=6)
    rows = [row for batch in buckets.batches for row in batch.ids.tolist()]
    masks = [
        row
        for b in buckets.batches
        for row in (b.mask.tolist() if b.mask is not None else [[1] * b.ids.shape[1]] * len(b.ids))
    ]
    placed = sorted(int(p) for positions in buckets.positions.values() for p in positions)
    assert placed == list(range(7)) and buckets.rows == 7 and buckets.tokens == 16
    for name, split in splits.items():
        for row, ids in enumerate(split.ids):
            at = int(buckets.positions[name][row])
            assert tuple(t for t, m in zip(rows[at], masks[at], strict=True) if m) == ids
    assert all(b.ids.numel() <= 6 or len(b.ids) == 1 for b in buckets.batches)
    # Rows of one length run unpadded, without a mask.
    assert any(b.mask is None for b in buckets.batches)


def test_length_multiple_rounds_every_batch_width():
    splits = {"a": EncodedSplit(tuple(tuple(range(1, n + 1)) for n in (1, 3, 5, 8, 9, 17)), torch.zeros(6))}
    buckets = bucket_by_length(splits, pad_id=0, max_tokens=16, length_multiple=8)
    assert {b.ids.shape[1] for b in buckets.batches} <= {8, 16, 24}
    with pytest.raises(MergesmithError, match="at least 1"):
        bucket_by_length(splits, pad_id=0, length_multiple=0)


@pytest.mark.parametrize("max_tokens, length_multiple", [(64, 1), (4096, 1), (64, 8)])
def test_bucketed_features_equal_the_per_split_features(text, max_tokens, length_multiple):
    featurizer, encoder, splits = text
    buckets = bucket_by_length(splits, featurizer.pad_id, max_tokens=max_tokens, length_multiple=length_multiple)
    features = bucketed_features(encoder, buckets)
    assert list(features) == list(splits)
    for name, split in splits.items():
        expected = split_features(encoder, split, featurizer.pad_id)
        assert features[name].shape == expected.shape and features[name].dtype == torch.float32
        torch.testing.assert_close(features[name], expected, atol=1e-5, rtol=1e-5)
        assert not features[name].is_inference()  # usable by callers outside inference mode


def test_bucketed_features_are_the_same_on_every_call(text):
    featurizer, encoder, splits = text
    first = bucketed_features(encoder, bucket_by_length(splits, featurizer.pad_id, max_tokens=128))
    again = bucketed_features(encoder, bucket_by_length(splits, featurizer.pad_id, max_tokens=128))
    assert all(torch.equal(first[name], again[name]) for name in splits)


def _heads(width: int, names) -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    return {name: nn.Linear(width, 2) for name in names}


def test_evaluator_scores_as_split_by_split_and_builds_buckets_once(text):
    featurizer, encoder, splits = text
    built = []

    class CountingFeaturizer:
        def __call__(self, encoder, split):
            return featurizer(encoder, split)

        def length_buckets(self, chosen):
            built.append(tuple(chosen))
            return featurizer.length_buckets(chosen)

    heads: dict[str, nn.Linear | None] = dict(_heads(encoder.config.hidden_size, splits))
    heads["long"] = None  # a task without a head is neither featurized nor scored
    tasks = [_Task(name) for name in splits]
    evaluator = Evaluator(tasks, splits, heads, CountingFeaturizer())
    hits = evaluator.correct(encoder)
    again = evaluator.correct(encoder)
    assert all(torch.equal(hits[n], again[n]) for n in ("short", "mixed"))  # type: ignore[arg-type]
    assert built == [("short", "mixed")]
    assert hits["long"] is None
    for name in ("short", "mixed"):
        head = heads[name]
        assert head is not None
        with torch.no_grad():
            expected = head(split_features(encoder, splits[name], featurizer.pad_id)).argmax(-1) == splits[name].labels
        assert torch.equal(hits[name], expected)
    # A pad id stands for the text features: bucketed too, same scores.
    assert Evaluator(tasks, splits, heads, featurizer.pad_id)(encoder) == evaluator(encoder)


def test_a_featurizer_without_buckets_scores_split_by_split(text):
    featurizer, encoder, splits = text
    seen = []

    def features(encoder, split):
        seen.append(len(split))
        return featurizer(encoder, split)

    tasks = [_Task(name) for name in splits]
    heads = _heads(encoder.config.hidden_size, splits)
    scores = Evaluator(tasks, splits, heads, features)(encoder)
    assert seen == [len(s) for s in splits.values()]
    assert scores == Evaluator(tasks, splits, heads, featurizer)(encoder)
    with pytest.raises(MergesmithError, match="text encoders only"):
        Evaluator(tasks, splits, heads, features, precision="bf16")(encoder)


def test_bf16_is_opt_in_and_close(text):
    featurizer, encoder, splits = text
    buckets = featurizer.length_buckets(splits)
    full = bucketed_features(encoder, buckets)
    low = bucketed_features(encoder, buckets, "bf16")
    for name in splits:
        assert low[name].dtype == torch.float32
        torch.testing.assert_close(low[name], full[name], atol=0.1, rtol=0.1)
    with pytest.raises(MergesmithError, match="unknown precision"):
        bucketed_features(encoder, buckets, "fp8")

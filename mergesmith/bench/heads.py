"""Task heads: the linear head of the probe protocol and the cosine (zero-shot) head of the papers' protocol, their
file format, and how a zero-shot head is built from label descriptions.

The zero-shot head transposes the task-arithmetic papers' CLIP protocol (Ilharco et al. 2023, Sec. 2; AdaMerging and
WEMoE use the same heads) to a sentence encoder: row c is the L2-normalised embedding of class c's description, made
by the *pretrained* encoder, and logits = T * cos(f(x), row_c). The head is fixed: experts are fine-tuned through it,
and the pretrained model, every expert and every merge are scored with the same rows, so the pretrained row of a
table is zero-shot accuracy.

File format (safetensors): a linear head is ``{"weight": [C, D], "bias": [C]}``; a cosine head is
``{"weight": [C, D] (unit rows), "scale": [1]}``. A head file with a ``scale`` tensor is a cosine head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mergesmith.bench.data import Example, check_label_texts as check_descriptions
from mergesmith.errors import MergesmithError

HEAD_FILE = "task_head.safetensors"  # an expert directory's head, beside its weights

# The logit scale of zero-shot heads. On the bench's eight tasks the validation NLL of the pretrained model's zero-shot
# heads is lowest at T = 10-30 (20 for four tasks); CLIP's learned scale is 100 on image-text pairs, which are further
# apart than sentence embeddings. Accuracy does not depend on T; the entropy objectives of AdaMerging and WEMoE do.
ZERO_SHOT_TEMPERATURE = 20.0


class CosineHead(nn.Module):
    """``logits = scale * normalize(features) @ weight.T`` with unit-norm rows ``weight`` [C, D]; no parameters train."""

    weight: Tensor

    def __init__(self, weight: Tensor, scale: float):
        super().__init__()
        rows = weight.detach().float()
        if not torch.allclose(rows.norm(dim=1), torch.ones(rows.shape[0]), atol=1e-6):
            rows = nn.functional.normalize(
                rows, dim=1
            )  # rows read back from a head file are unit already: kept bit-exact
        self.register_buffer("weight", rows)
        self.scale = float(scale)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, features: Tensor) -> Tensor:
        unit = nn.functional.normalize(features, dim=-1)
        return self.scale * (unit @ self.weight.to(features.dtype).T)


Head = nn.Linear | CosineHead


def save_head(head: Head, path: Path) -> None:
    if isinstance(head, CosineHead):
        tensors = {"weight": head.weight.contiguous(), "scale": torch.tensor([head.scale])}
    else:
        tensors = {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}
    save_file(tensors, str(path))


def head_from_tensors(tensors: dict[str, Tensor]) -> Head:
    """A cosine head when the tensors carry a ``scale``, else a linear head (zero bias when it has none)."""
    weight = tensors["weight"].float()
    if "scale" in tensors:
        return CosineHead(weight, float(tensors["scale"].reshape(-1)[0]))
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        bias = tensors.get("bias")
        if bias is None:
            head.bias.zero_()
        else:
            head.bias.copy_(bias.float())
    head.requires_grad_(False)
    return head


def load_head(path: Path) -> Head:
    """A head the bench wrote itself (the zoo's cache); user head files go through ``bench.pool``'s bounded reader."""
    return head_from_tensors(load_file(str(path)))


def check_label_texts(task: str, label_names: Sequence[str], texts: Sequence[str]) -> None:
    """The zero-shot protocol's rule: a task must have label descriptions; their shape is ``data.check_label_texts``'."""
    if not texts:
        raise MergesmithError(
            f"task {task}: the zero-shot protocol needs a description of each class and this task has none; "
            "give label_texts (one per class) or use the probe protocol (--protocol probe)"
        )
    check_descriptions(task, label_names, texts)


def zero_shot_head(
    encoder: nn.Module, featurizer, texts: Sequence[str], temperature: float = ZERO_SHOT_TEMPERATURE
) -> CosineHead:
    """The cosine head whose rows are ``encoder``'s features of the label descriptions ``texts`` (the featurizer's own
    tokenization and pooling, as for any input)."""
    split = featurizer.encode([Example(str(text), 0) for text in texts])
    return CosineHead(featurizer(encoder, split), temperature)

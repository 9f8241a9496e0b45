"""TensorInfo: what the planner needs to know about one stored tensor, without reading it; and the checks every
reader applies to a tensor's name and shape before trusting them."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from mergesmith.errors import UNPRINTABLE_CATEGORIES, CheckpointError

# Bounds on what a header may claim, checked before anything is allocated from it. A zero-byte tensor costs no data,
# so without them a few header bytes could describe a [2^60, 0] tensor whose row blocks or strides exhaust memory.
MAX_NAME_BYTES = 1024  # the longest transformers names are about 100
MAX_RANK = 16  # conv weights have 5 dimensions
MAX_ELEMENTS = 1 << 48  # the product of the dimensions, zeros counted as 1: 256 Ti elements


@dataclass(frozen=True)
class TensorInfo:
    name: str
    path: Path  # the file that holds the tensor
    dtype: torch.dtype  # the stored dtype
    shape: tuple[int, ...]
    # Absolute byte offset of the tensor's data in ``path``. None for torch.load formats (.bin/.pt), whose
    # storages we do not address by hand.
    offset: int | None
    # Bytes of the tensor's data: numel x element size (also set for .bin/.pt, where it is the logical size).
    nbytes: int | None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a tensor (None if it can): what the safetensors writer and every message need."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if name == "__metadata__":
        return "is reserved by the safetensors format"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long, more than the {MAX_NAME_BYTES} accepted"
    # Surrogates cannot be written as UTF-8; controls, bidi overrides and line separators would forge lines and hide
    # text in messages and plans.
    bad = next((ch for ch in name if unicodedata.category(ch) in UNPRINTABLE_CATEGORIES), None)
    if bad is not None:
        return f"holds the control or invisible character U+{ord(bad):04X}"
    return None


def _shown(name: object) -> str:
    return ascii(name)[:80]


def check_tensor_name(where: str, name: object) -> str:
    """``name`` if it can name a tensor, else a CheckpointError naming the file."""
    problem = name_problem(name)
    if problem is not None:
        raise CheckpointError(
            f"{where}: tensor name {_shown(name)} {problem}; the file is corrupt or hostile, "
            f"re-save the checkpoint with plain tensor names"
        )
    return name  # type: ignore[return-value]


def shape_problem(shape: tuple[int, ...]) -> str | None:
    """Why ``shape`` cannot be trusted (None if it can): rank and size bounds, zero-byte tensors included."""
    if len(shape) > MAX_RANK:
        return f"has {len(shape)} dimensions, more than the {MAX_RANK} accepted"
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        return f"has dimensions whose product exceeds {MAX_ELEMENTS} (2^48)"
    return None


def check_shape(where: str, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    problem = shape_problem(shape)
    if problem is not None:
        raise CheckpointError(
            f"{where}: tensor '{name}' with shape {list(shape)[: MAX_RANK + 1]} {problem}; the file is "
            f"corrupt or hostile, re-download or re-save it"
        )
    return shape

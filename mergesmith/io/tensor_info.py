"""TensorInfo: what the planner needs to know about one stored tensor, without reading it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


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

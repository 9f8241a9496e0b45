"""Fixed row blocks: the unit in which large tensors stream through block-wise methods.

The block size is a constant, never derived from a memory budget or a thread count, so random masks drawn per
block (DARE, DELLA) are the same whether a tensor is merged whole or streamed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

BLOCK_ELEMENTS = 1 << 20  # 1 Mi elements: 4 MiB in fp32 (small blocks keep peak memory and heap churn low)


class RowBlocks(Sequence[slice]):
    """The row blocks of one tensor, computed on demand: a few integers whatever the shape, so a header claiming
    2^44 empty rows costs nothing to plan."""

    def __init__(self, rows: int, per_block: int) -> None:
        self.rows, self.per_block = rows, per_block

    def __len__(self) -> int:
        return max(1, -(-self.rows // self.per_block))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.per_block
        return slice(start, min(self.rows, start + self.per_block))

    def __iter__(self) -> Iterator[slice]:
        for index in range(len(self)):
            yield self[index]

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, RowBlocks)) else NotImplemented

    def __repr__(self) -> str:
        return f"RowBlocks(rows={self.rows}, per_block={self.per_block})"


def row_blocks(shape: tuple[int, ...] | list[int]) -> Sequence[slice]:
    """Slices along dim 0 covering the tensor in blocks of about BLOCK_ELEMENTS elements (whole rows each)."""
    if len(shape) == 0:
        return [slice(0, 1)]  # a scalar is one block; callers index 0-d tensors with [...]
    rows = shape[0]
    row_numel = math.prod(shape[1:]) if len(shape) > 1 else 1
    if len(shape) == 1 or row_numel == 0:
        # 1-D tensors (norms, biases) are a single "row": methods that rank within a row (DELLA) see all of it.
        # A tensor with no elements is one (empty) block however many rows it claims.
        return [slice(0, rows)]
    per_block = max(1, BLOCK_ELEMENTS // row_numel)
    return RowBlocks(rows, per_block)

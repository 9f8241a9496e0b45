"""Fixed row blocks: the unit in which large tensors stream through block-wise methods.

The block size is a constant, never derived from a memory budget or a thread count, so random masks drawn per
block (DARE, DELLA) are the same whether a tensor is merged whole or streamed.
"""

from __future__ import annotations

import math

BLOCK_ELEMENTS = 1 << 20  # 1 Mi elements: 4 MiB in fp32 (small blocks keep peak memory and heap churn low)


def row_blocks(shape: tuple[int, ...] | list[int]) -> list[slice]:
    """Slices along dim 0 covering the tensor in blocks of about BLOCK_ELEMENTS elements (whole rows each)."""
    if len(shape) == 0:
        return [slice(0, 1)]  # a scalar is one block; callers index 0-d tensors with [...]
    rows = shape[0]
    row_numel = math.prod(shape[1:]) if len(shape) > 1 else 1
    if len(shape) == 1:
        # 1-D tensors (norms, biases) are a single "row": methods that rank within a row (DELLA) see all of it.
        return [slice(0, rows)]
    per_block = max(1, BLOCK_ELEMENTS // max(1, row_numel))
    return [slice(start, min(rows, start + per_block)) for start in range(0, rows, per_block)] or [slice(0, 0)]

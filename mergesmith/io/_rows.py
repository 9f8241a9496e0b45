"""Turning a ``rows`` slice into a contiguous [start, stop) range of dim 0."""

from __future__ import annotations


def resolve_rows(name: str, shape: tuple[int, ...], rows: slice) -> tuple[int, int]:
    """[start, stop) along dim 0; a 0-d tensor counts as one row, so ``slice(0, 1)`` selects it.

    Only step 1 is accepted: the point of ``rows`` is to read one contiguous byte range.
    """
    if not isinstance(rows, slice):
        raise TypeError(f"rows must be a slice, got {type(rows).__name__}")
    length = shape[0] if shape else 1
    start, stop, step = rows.indices(length)
    if step != 1:
        raise ValueError(
            f"tensor '{name}': rows={rows} has step {step}; only contiguous row ranges (step 1) can be read"
        )
    if not shape and (start, stop) != (0, 1):
        raise ValueError(f"tensor '{name}' is 0-d (one row); rows={rows} must select it, e.g. slice(0, 1)")
    return start, max(start, stop)

"""The calling protocol of a merge method, typed: what the engine and ``merge_state_dicts`` call, and with what.

A method merges one tensor at a time. It gives either a whole-tensor function or the block protocol (or both):

- ``Merge``: ``merge(base, experts, params, rng) -> Tensor`` on whole tensors (methods with per-task parts, EMR and
  TALL masks, return ``(tensor, PerTaskParts)``);
- ``Streaming``: for methods whose output at a position depends only on the inputs at that position plus
  per-tensor values. ``context(blocks, params, rng)`` computes those values in passes over the row blocks
  (``blocks()`` yields ``(base rows, expert rows)`` afresh each call), then ``merge_block(base, experts, params, ctx,
  rng, block)`` merges each fixed row block (``_blocks.row_blocks``). Without a whole-tensor function of its own, a
  method's whole-tensor merge is exactly this over the tensor's row blocks (``merge_in_blocks``), the bytes the
  engine gives when it streams.

Statistics (a Fisher or a Gram per model, ``Statistics``) are passed as their own argument, ``statistics=``, one per
expert in the experts' order; never appended to ``experts``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from mergesmith.methods import _blocks
from mergesmith.methods._per_task import PerTaskParts

MergeOutput = Tensor | tuple[Tensor, PerTaskParts]
Blocks = Callable[[], Iterator[tuple[Any, Sequence[Tensor]]]]  # yields (base rows or None, expert rows)


class Rng(Protocol):
    """The random source of one tensor (``mergesmith.engine.rng.TensorRng``)."""

    def generator(self, *keys: object) -> torch.Generator: ...


class Merge(Protocol):
    def __call__(
        self, base: Tensor | None, experts: Sequence[Tensor], params: Any, rng: Rng | None = None, /
    ) -> MergeOutput: ...


class Context(Protocol):
    def __call__(self, blocks: Blocks, params: Any, rng: Rng | None, /) -> Any: ...


class MergeBlock(Protocol):
    def __call__(
        self, base: Tensor | None, experts: Sequence[Tensor], params: Any, ctx: Any, rng: Rng | None, block: int, /
    ) -> Tensor: ...


class MergeWithStatistics(Protocol):
    def __call__(
        self,
        base: Tensor | None,
        experts: Sequence[Tensor],
        params: Any,
        rng: Rng | None = None,
        /,
        *,
        statistics: Sequence[Tensor],
    ) -> Tensor: ...


class MergeBlockWithStatistics(Protocol):
    def __call__(
        self,
        base: Tensor | None,
        experts: Sequence[Tensor],
        params: Any,
        ctx: Any,
        rng: Rng | None,
        block: int,
        /,
        *,
        statistics: Sequence[Tensor],
    ) -> Tensor: ...


StatisticsShape = Callable[[tuple[int, ...], Any], tuple[int, ...] | None]


def no_context(blocks: Blocks, params: Any, rng: Rng | None) -> None:
    """The context of a method that needs no per-tensor values: every block is merged on its own."""
    return None


@dataclass(frozen=True)
class Streaming:
    merge_block: MergeBlock
    context: Context = no_context
    # ``merge_block`` walks ``experts`` once, in order, holding one at a time (sum-like methods): the engine then
    # reads each expert's block only when the method reaches it, so memory does not grow with the number of experts.
    one_expert_at_a_time: bool = False


@dataclass(frozen=True)
class Statistics:
    """Per-model statistics beside the weights (fisher_combine, regmean_combine): each model entry of the merge
    config names its statistics file (``statistics:``, a safetensors file keyed by tensor name).

    ``shape(tensor shape, params)`` is the shape of a tensor's statistic (None: the tensor has none). A tensor with
    statistics is merged by ``merge`` (whole tensors), or, when the statistics are per parameter and row-aligned with
    the weights (Fisher), block by block by ``merge_block`` (streamed like the weights; ``merge`` then defaults to
    it over the row blocks). Tensors without statistics are merged like any other (``MethodSpec``).
    """

    shape: StatisticsShape
    merge: MergeWithStatistics | None = None
    merge_block: MergeBlockWithStatistics | None = None

    def __post_init__(self) -> None:
        if self.merge is None and self.merge_block is None:
            raise TypeError("Statistics needs merge (whole tensors) or merge_block (row-aligned statistics)")


def rows(tensor: Tensor, s: slice) -> Tensor:
    """The rows ``s`` of a tensor; a 0-d tensor is its own single block."""
    return tensor[...] if tensor.ndim == 0 else tensor[s]


def check_shapes(method: str, reference: Tensor, tensors: Sequence[Tensor], what: str = "expert") -> None:
    for i, tensor in enumerate(tensors):
        if tensor.shape != reference.shape:
            raise ValueError(f"{method}: {what} {i} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}")


BlockMerger = Callable[[Tensor | None, list[Tensor], list[Tensor], Any, int], Tensor]


def merge_in_blocks(
    method: str,
    base: Tensor | None,
    experts: Sequence[Tensor],
    statistics: Sequence[Tensor],
    context: Callable[[Blocks], Any],
    merge_one: BlockMerger,
) -> Tensor:
    """A whole tensor merged as the engine streams it: ``context`` over its fixed row blocks, then ``merge_one(base
    rows, expert rows, statistic rows, ctx, block index)`` per block, written into one output tensor."""
    if not experts:
        if base is None:
            raise ValueError(f"{method} needs at least one model")
        return base.clone()
    reference = base if base is not None else experts[0]
    check_shapes(method, reference, experts)
    check_shapes(method, reference, statistics, "statistic")
    slices = _blocks.row_blocks(tuple(reference.shape))

    def base_rows(s: slice) -> Tensor | None:
        return rows(base, s) if base is not None else None

    def blocks() -> Iterator[tuple[Tensor | None, Sequence[Tensor]]]:
        for s in slices:
            yield base_rows(s), [rows(e, s) for e in experts]

    ctx = context(blocks)
    out = torch.empty_like(reference)
    for index, s in enumerate(slices):
        merged = merge_one(base_rows(s), [rows(e, s) for e in experts], [rows(x, s) for x in statistics], ctx, index)
        rows(out, s).copy_(merged)
    return out

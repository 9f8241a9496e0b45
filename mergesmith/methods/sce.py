"""SCE (Select, Calculate, Erase): FuseChat's merge of task vectors.

Wan, Zhong, Yang, Chen, Quan 2024, "FuseChat: Knowledge Fusion of Chat Models", arXiv:2408.07990 (Sec. on model
merging, SCE). Per parameter matrix: (1) select the entries whose task-vector values vary most across the experts
(top ``select_topk`` fraction by variance); (2) calculate each expert's merge weight as the sum of squares of its
selected task vector, normalised over experts; (3) erase entries whose sign disagrees with the elected sign (sign of
the summed mass, as in TIES); theta = theta_base + the weighted mean of the surviving task-vector entries.

As in mergekit's ``sce``: variance is the population variance over experts; k = int(nonzero * select_topk) entries
are selected, nonzero = the number of entries with non-zero variance (none selected when k = 0, e.g. identical
experts); the weight of expert t is mean(selected tau_t ** 2) / sum over experts (uniform when that sum is below
1e-6); tau_m = sum_t w_t m_t tau_t / max(sum_t w_t m_t, 1e-6) with m_t the agreement mask.

Parameters (mergekit names and defaults):
- ``select_topk`` (default 1.0, in (0, 1]): fraction of entries selected by variance; 1.0 selects all.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect.

Streaming: exact. ``context`` finds the variance threshold (the exact k-th largest, two passes; one for a
single-block tensor) and accumulates each expert's sum of squares in fp64 in a fixed row order (one more pass), so
the result does not depend on the row blocks; selection ties with the threshold are all kept (mergekit keeps exactly
k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._kth import kth_largest
from mergesmith.methods._protocol import Blocks, Rng, Streaming
from mergesmith.methods._spec import MethodSpec, between, param

NAME = "sce"


@dataclass(frozen=True)
class Params:
    select_topk: float = param(
        1.0, within=between(0, 1, open_low=True), doc="fraction of entries selected by variance across experts"
    )
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


@dataclass(frozen=True)
class Context:
    threshold: float | None  # entries with variance >= threshold are selected; None selects all
    weights: tuple[float, ...]  # per expert, from the selected task vectors' sums of squares


def _variance(taus: Tensor) -> Tensor:
    """Population variance over experts: Welford's recurrence in float64, elementwise over experts in order.

    For fp32 inputs this is bit for bit ``torch.var(taus, dim=0, unbiased=False)`` (what mergekit ranks) on CPU, about
    3x faster; for fp64 it may differ from torch in the last bit. Either way it is computed entry by entry, so it does
    not depend on the row blocks."""
    n = taus.shape[0]
    mean = taus[0].to(torch.float64, copy=True)
    m2 = torch.zeros_like(mean)
    delta = torch.empty_like(mean)
    x = torch.empty_like(mean)
    for i in range(1, n):
        x.copy_(taus[i])
        torch.sub(x, mean, out=delta)
        mean += delta / (i + 1)
        x -= mean
        m2.addcmul_(delta, x)
    return m2.div_(n).to(taus.dtype)


def _selected(taus: Tensor, threshold: float | None) -> Tensor:
    """Select: zero (in place) the entries whose variance across experts is below the threshold."""
    if threshold is not None:
        taus.mul_(_variance(taus) >= threshold)
    return taus


def context(blocks: Blocks, params: Params, rng: Rng | None) -> Context:
    topk = params.select_topk
    threshold = None
    if topk < 1.0:

        def variances():
            for base, experts in blocks():
                yield [_variance(tv.stacked_task_vectors(base, experts))]

        def ranks(numel: int, nonzero: list[int]) -> list[list[int]]:
            # as mergekit: k = int(count_nonzero(var) * select_topk), the product taken in fp32
            return [[int(torch.tensor(nonzero[0]) * topk)]]

        _, ((threshold,),) = kth_largest(variances, ranks)  # +inf when k = 0: nothing is selected

    # calculate: mean of squares of each expert's selected task vector
    sums: list[Tensor] = []
    numel = 0
    dtype = torch.float32
    for base, experts in blocks():
        taus = _selected(tv.stacked_task_vectors(tv.require_base(NAME, base), experts), threshold)
        if not sums:
            sums = [torch.zeros((), dtype=torch.float64) for _ in experts]
        for t in range(len(experts)):
            sums[t] = tv.add_in_row_order(sums[t], taus[t].square())
        numel += base.numel()
        dtype = base.dtype
    if not sums:
        return Context(threshold, ())
    means = (torch.stack(sums) / max(numel, 1)).to(dtype)
    total = float(means.sum())
    weights = torch.full_like(means, 1.0 / means.numel()) if abs(total) < 1e-6 else means / total
    return Context(threshold, tuple(weights.tolist()))


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: Context, rng: Rng | None, block: int
) -> Tensor:
    base = tv.require_base(NAME, base)
    if len(ctx.weights) != len(experts):
        raise ValueError(f"{NAME}: the context was computed for {len(ctx.weights)} experts, got {len(experts)}")
    taus = _selected(tv.stacked_task_vectors(base, experts), ctx.threshold)  # select
    agree = tv.agreement(taus, "sum")  # erase: keep entries agreeing with the elected sign
    w = [torch.tensor(x, dtype=taus.dtype) for x in ctx.weights]
    merged = tv.sum_in_order(taus[t].mul_(w_t * agree[t]) for t, w_t in enumerate(w))
    weight = tv.sum_in_order(w_t * agree[t] for t, w_t in enumerate(w))
    return base + merged / weight.clamp(min=1e-6)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Wan et al. 2024, FuseChat: Knowledge Fusion of Chat Models, arXiv:2408.07990",
    base="required",
    streaming=Streaming(merge_block, context),
    description="select high-variance entries, weight experts by their squared task vectors, erase sign conflicts",
)

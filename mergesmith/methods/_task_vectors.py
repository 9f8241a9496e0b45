"""Shared steps of the task-arithmetic family: task vectors, sparsification, sign election, disjoint merge.

Small pure functions used by task_arithmetic, ties, dare (dare_linear, dare_ties), breadcrumbs (breadcrumbs,
breadcrumbs_ties), della (della, della_linear), magmax and sce. Each public method module is a thin composition of
these; the comments follow the papers' steps.

Notation: for expert t, the task vector is tau_t = theta_t - theta_base (Ilharco et al. 2023, Sec. 2). The merged
tensor is theta_base + lambda * tau_m, where tau_m combines the (sparsified, weighted) task vectors.

Numerics follow mergekit 0.1.5 operation by operation where it has the method (weights applied to the sparsified
deltas, experts summed in order, division by the (masked) weight sum, then lambda, then ``base +``), so task
arithmetic and TIES reproduce its bytes for up to 4 experts (``sum_in_order`` says why not beyond: a last-bit
difference on some entries). Per-tensor sums and thresholds are exact or summed in a fixed row order, so no result
depends on how a tensor is cut into row blocks.

Streaming: a method sees one row block of the tensor at a time (``_blocks.row_blocks``); per-tensor scalars such as
magnitude thresholds come from a ``context`` computed in passes over the blocks beforehand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from mergesmith.methods._kth import kth_largest
from mergesmith.methods._protocol import Blocks, Rng, Streaming, no_context
from mergesmith.methods._spec import MethodSpec

Consensus = Literal["sum", "count"]


# ---------------------------------------------------------------------------------------------------------------
# Two variants of one method


def variant_spec(
    name: str,
    consensus: Consensus | None,
    merge_block: Callable[..., Tensor],
    *,
    context: Callable[..., Any] | None = None,
    params: type,
    paper: str,
    description: str,
    randomized: bool = False,
    order_invariant: bool = True,
) -> MethodSpec:
    """The spec of one variant of a method that comes in two, one module each: dare (dare_linear, dare_ties),
    breadcrumbs (breadcrumbs, breadcrumbs_ties), della (della, della_linear).

    The module writes ``merge_block(method, consensus, base, experts, params, ctx, rng, block)`` (and, if it needs
    one, ``context(method, blocks, params, rng)``) once; here they are bound to the variant's ``name`` (its errors say
    it) and ``consensus`` (passed to ``combine``: None for a weighted sum, "sum" for TIES' sign election and disjoint
    merge).
    """
    streaming = Streaming(
        merge_block=partial(merge_block, name, consensus),
        context=partial(context, name) if context is not None else no_context,
    )
    return MethodSpec(
        name=name,
        params=params,
        paper=paper,
        base="required",
        randomized=randomized,
        order_invariant=order_invariant,
        streaming=streaming,
        description=description,
    )


# ---------------------------------------------------------------------------------------------------------------
# Checks of the tensors a method is given


def require_base(method: str, base: Tensor | None) -> Tensor:
    if base is None:
        raise ValueError(f"{method} merges task vectors theta_i - theta_base and needs a base model; set base_model")
    return base


def require_rng(method: str, rng: Rng | None) -> Rng:
    if rng is None:
        raise ValueError(f"{method} drops entries at random and needs an rng (mergesmith.engine.rng.TensorRng)")
    return rng


# ---------------------------------------------------------------------------------------------------------------
# Task vectors


def stacked_task_vectors(base: Tensor, experts: Sequence[Tensor]) -> Tensor:
    """tau_t = theta_t - theta_base for every expert, in one [n_experts, *shape] buffer that later steps edit."""
    out = base.new_empty((len(experts), *base.shape))
    for t, expert in enumerate(experts):
        torch.sub(expert, base, out=out[t])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Trim by magnitude (TIES step 1; Model Breadcrumbs' two-sided mask)


@dataclass(frozen=True)
class Band:
    """An expert keeps the entries with lo <= |tau| <= hi (lo > hi keeps nothing); kept entries are then multiplied
    by ``scale`` when it is set (mergekit's L1 rescaling, ``rescale: true``)."""

    lo: float = -math.inf
    hi: float = math.inf
    scale: float | None = None


def keep_band(tau: Tensor, band: Band | None) -> Tensor:
    """Zero the entries of ``tau`` outside ``band`` (in place) and apply its rescaling."""
    if band is None:
        return tau
    magnitude = tau.abs()
    keep = magnitude >= band.lo
    if band.hi < math.inf:
        keep &= magnitude <= band.hi
    del magnitude
    tau.mul_(keep.to(tau.dtype))  # a float mask: multiplying by a bool tensor takes a slow mixed-dtype path
    if band.scale is not None:
        tau.mul_(band.scale)
    return tau


def _abs_task_vectors(blocks: Blocks, experts: Sequence[int]) -> Callable[[], Iterator[list[Tensor]]]:
    def chunks() -> Iterator[list[Tensor]]:
        for base, tensors in blocks():
            yield [(tensors[t] - base).abs_() for t in experts]

    return chunks


def magnitude_bands(blocks: Blocks, densities: Sequence[float], rescale: bool) -> list[Band | None]:
    """TIES "trim": expert t keeps its k_t = max(1, int(density_t * numel)) largest |tau_t| entries.

    The threshold is the exact k-th largest |tau_t| of the whole tensor (``_kth.kth_largest``, no full sort); entries
    tied with it are all kept. ``density >= 1`` keeps everything (no band).
    """
    trimmed = [t for t, d in enumerate(densities) if d < 1.0]
    bands: list[Band | None] = [None] * len(densities)
    if not trimmed:
        return bands

    def ranks(numel: int, nonzero: list[int]) -> list[list[int]]:
        return [[max(1, int(densities[t] * numel))] for t in trimmed]

    _, values = kth_largest(_abs_task_vectors(blocks, trimmed), ranks)
    for t, (lo,) in zip(trimmed, values):
        bands[t] = Band(lo=lo)
    return l1_rescaled(blocks, bands) if rescale else bands


def outlier_bands(
    blocks: Blocks, densities: Sequence[float], gammas: Sequence[float], rescale: bool
) -> list[Band | None]:
    """Model Breadcrumbs' mask: drop the ``gamma`` fraction of largest |tau_t| (outliers), then the smallest, keeping
    ``density``.

    As in mergekit: with n = numel, keep = int(density * n), top = int(gamma * n), bottom = max(0, n - keep - top);
    in ascending order of |tau_t| the kept entries are ranks [bottom, bottom + keep). Two exact order statistics
    bound that band. ``density >= 1`` keeps everything (no outlier removal either).
    """
    trimmed = [t for t, d in enumerate(densities) if d < 1.0]
    bands: list[Band | None] = [None] * len(densities)
    if not trimmed:
        return bands

    def counts(t: int, numel: int) -> tuple[int, int]:
        keep = int(densities[t] * numel)
        top = int(gammas[t] * numel)
        return keep, max(0, numel - keep - top)

    def ranks(numel: int, nonzero: list[int]) -> list[list[int]]:
        out = []
        for t in trimmed:
            keep, bottom = counts(t, numel)
            # as ranks from the largest (1 = largest): the band's smallest kept entry and its largest
            out.append([numel - bottom, numel - bottom - keep + 1])
        return out

    numel, values = kth_largest(_abs_task_vectors(blocks, trimmed), ranks)
    for t, (lo, hi) in zip(trimmed, values):
        keep, _ = counts(t, numel)
        bands[t] = Band(lo=lo, hi=hi) if keep > 0 else Band(lo=math.inf, hi=-math.inf)
    return l1_rescaled(blocks, bands) if rescale else bands


def l1_rescaled(blocks: Blocks, bands: Sequence[Band | None]) -> list[Band | None]:
    """mergekit's ``rescale``: multiply the kept entries by ||tau||_1 / ||kept tau||_1 (per expert, per tensor),
    unless either norm is below 1e-7. One more pass over the blocks; sums in fp64 (``add_in_row_order``)."""
    trimmed = [t for t, b in enumerate(bands) if b is not None]
    before = torch.zeros(len(trimmed), dtype=torch.float64)
    after = torch.zeros(len(trimmed), dtype=torch.float64)
    for base, experts in blocks():
        for j, t in enumerate(trimmed):
            tau = experts[t] - base
            before[j] = add_in_row_order(before[j], tau.abs())
            after[j] = add_in_row_order(after[j], keep_band(tau, bands[t]).abs_())
    out = list(bands)
    for j, t in enumerate(trimmed):
        b, a = float(before[j]), float(after[j])
        if b >= 1e-7 and a >= 1e-7:
            band = bands[t]
            assert band is not None
            out[t] = Band(lo=band.lo, hi=band.hi, scale=b / a)
    return out


def add_in_row_order(total: Tensor, values: Tensor) -> Tensor:
    """total + sum(values) in fp64: each row summed left to right, then the rows top to bottom after ``total``.

    A fixed order per row, and rows carried over from block to block, so a per-tensor sum has the same bits however
    the tensor is cut into row blocks (torch's ``sum`` reorders with the tensor's shape and the thread count).
    """
    if values.numel() == 0:
        return total
    rows = values.reshape(values.shape[0] if values.ndim > 1 else 1, -1).to(torch.float64)
    per_row = rows.cumsum(dim=1)[:, -1]  # a scan: strictly left to right
    return torch.cat([total.reshape(1).to(torch.float64), per_row]).cumsum(dim=0)[-1]


# ---------------------------------------------------------------------------------------------------------------
# Random drops: DARE and DELLA's MagPrune


def dare_drop(tau: Tensor, density: float, generator: torch.Generator, rescale: bool) -> Tensor:
    """DARE (Yu et al. 2024, Sec. 3): m ~ Bernoulli(p) with drop rate p = 1 - density; tau~ = (1 - m) * tau, then
    rescale the survivors by 1 / (1 - p) = 1 / density so that E[tau^] = tau. In place on ``tau``.

    Uniforms are drawn in fp32 whatever the dtype, so the mask does not depend on it.
    """
    if density >= 1.0:
        return tau
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float32) < density
    tau.mul_(keep)
    if rescale:
        tau.div_(density)
    return tau


def magprune(tau: Tensor, density: float, epsilon: float, generator: torch.Generator, rescale: bool) -> Tensor:
    """DELLA's MagPrune (Deep et al. 2024, Sec. 3): rank, assign probabilities, sample, rescale. In place on ``tau``.

    Ranks run within rows: along dim 1 (mergekit's axis), a 1-D tensor is one row, a scalar one entry. Keep
    probabilities grow linearly with the magnitude rank, from density - epsilon (smallest) to density + epsilon
    (largest), as in mergekit; a row of one entry keeps with probability ``density``. Kept entries are divided by their
    own keep probability 1 - p_i (the paper's rescaling), so E[tau^_i] = tau_i entry by entry.
    """
    if density >= 1.0:
        return tau
    rows = tau.reshape(1, 1) if tau.ndim == 0 else tau.unsqueeze(0) if tau.ndim == 1 else tau
    n = rows.shape[1]
    # rank: 0 for the smallest magnitude in its row, n - 1 for the largest
    if n > 1:
        order = rows.abs().argsort(dim=1, stable=True)
        ranks = torch.empty_like(order)
        position = torch.arange(n).view(1, n, *([1] * (rows.ndim - 2))).expand_as(order)
        ranks.scatter_(1, order, position)
        del order
        spread = ranks.to(tau.dtype).div_(n - 1)
        del ranks
    else:
        spread = torch.full_like(rows, 0.5)
    # assign probabilities: keep_i = (density - epsilon) + 2 * epsilon * rank_i / (n - 1), i.e. 1 - p_i
    keep_probability = spread.mul_(2.0 * epsilon).add_(density - epsilon)
    # sample
    keep = torch.rand(rows.shape, generator=generator, dtype=torch.float32) < keep_probability
    rows.mul_(keep)
    # rescale each survivor by 1 / (1 - p_i)
    if rescale:
        rows.div_(keep_probability)
    return tau


# ---------------------------------------------------------------------------------------------------------------
# Elect sign and disjoint merge (TIES steps 2 and 3)


def sum_in_order(tensors: Iterable[Tensor]) -> Tensor:
    """sum_t x_t, accumulated expert by expert from zero.

    This is the order torch's ``sum(dim=0)`` (and so mergekit) uses over up to 4 experts; with more, torch's order
    depends on the tensor's length (vectorised body vs. tail), so results could change with the row blocks. Summing in
    order keeps every entry's result independent of how the tensor is cut.
    """
    total: Tensor | None = None
    for x in tensors:
        if total is None:
            total = torch.zeros_like(x)
        total += x
    assert total is not None, "no tensors to sum"
    return total


def agreement(deltas: Tensor, method: Consensus = "sum") -> Tensor:
    """TIES "elect sign": gamma = sgn(sum_t tau_t) per entry ("sum", the paper's total mass; ties go to +), or the
    majority of the signs ("count"). Returns a bool mask [n_experts, ...]: where sgn(tau_t) == gamma (zeros never
    agree)."""
    if method == "sum":
        mass = sum_in_order(deltas)
    elif method == "count":
        mass = deltas.sign().sum(dim=0)  # integers: exact in any order
    else:
        raise ValueError(f"sign consensus must be 'sum' or 'count', got {method!r}")
    positive = mass >= 0
    del mass
    # sgn(tau_t) == gamma without a three-way select: (tau > 0) == (gamma > 0), and zeros never agree.
    agree = (deltas > 0) == positive
    agree &= deltas != 0
    return agree


def combine(
    base: Tensor,
    deltas: Tensor,
    weights: Sequence[float],
    *,
    consensus: Consensus | None,
    normalize: bool,
    lam: float,
) -> Tensor:
    """theta_base + lambda * tau_m from the sparsified task vectors ``deltas`` [n_experts, ...] (edited in place).

    Without consensus (task arithmetic): tau_m = sum_t w_t tau_t, divided by sum_t w_t when ``normalize``.
    With consensus (TIES "disjoint merge"): only entries whose sign agrees with the elected sign count,
    tau_m = sum_{t in A} w_t tau_t / sum_{t in A} w_t per entry (A = agreeing experts; an empty A divides by 1).
    """
    w = [torch.tensor(x, dtype=deltas.dtype) for x in weights]
    for t, w_t in enumerate(w):
        deltas[t].mul_(w_t)  # weight each task vector
    if consensus is None:
        mixed = sum_in_order(deltas)
        divisor = weight_sum(weights, deltas.dtype)
    else:
        agree = agreement(deltas, consensus)  # elect sign
        # disjoint merge: the agreeing entries, over the weight they carry
        agree = agree.to(deltas.dtype)
        mixed = sum_in_order(deltas[t].mul_(agree[t]) for t in range(len(w)))
        divisor = sum_in_order(w_t * agree[t] for t, w_t in enumerate(w))
        del agree
        divisor[divisor == 0] = 1
    return finish(base, mixed, divisor, normalize=normalize, lam=lam)


def weighted_task_vectors(base: Tensor, experts: Iterable[Tensor], weights: Sequence[float]) -> Iterator[Tensor]:
    """w_t * tau_t for each expert in turn: one task vector exists at a time (task arithmetic streams experts)."""
    for expert, weight in zip(experts, weights):
        yield torch.sub(expert, base).mul_(torch.tensor(weight, dtype=base.dtype))


def weight_sum(weights: Sequence[float], dtype: torch.dtype) -> Tensor:
    """sum_t w_t, the divisor of a normalized weighted sum (a sum below 1e-8 divides by 1, as in mergekit)."""
    divisor = sum_in_order(torch.tensor(x, dtype=dtype) for x in weights)
    return torch.ones_like(divisor) if divisor.abs() < 1e-8 else divisor


def finish(base: Tensor, mixed: Tensor, divisor: Tensor, *, normalize: bool, lam: float) -> Tensor:
    """theta_base + lambda * tau_m, with tau_m = mixed / divisor when ``normalize`` (``mixed`` is edited in place)."""
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return (base + mixed).to(base.dtype)

"""Model Breadcrumbs: mask out both tails of each task vector's magnitudes, then task arithmetic (``breadcrumbs``) or
TIES' sign election and disjoint merge (``breadcrumbs_ties``).

Davari, Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", ECCV 2024,
arXiv:2312.06795. Per layer, sort |tau_t|, mask a top percentile (large outliers) and a bottom percentile (small
perturbations), keep the rest ("breadcrumbs"): tau^_t = m_t * tau_t; theta = theta_base + alpha * sum_t tau^_t.

As in mergekit's ``breadcrumbs`` (per tensor): with n = numel, keep = int(density * n), top = int(gamma * n) and
bottom = max(0, n - keep - top), an expert keeps the entries ranked [bottom, bottom + keep) in ascending |tau_t|
(when keep + top > n the outlier cut shrinks so that ``keep`` entries remain). Here the band is bounded by two exact
order statistics, so entries tied with a bound are all kept. The two methods mask alike and differ only in the merge:
- ``breadcrumbs``: theta = theta_base + lambda * sum_t w_t m_t tau_t (optionally divided by sum_t w_t);
- ``breadcrumbs_ties``, as mergekit's ``breadcrumbs_ties``, with TIES' steps 2-3 (Yadav et al. 2023,
  arXiv:2306.01708, Algorithm 1): elect sgn(sum_t w_t m_t tau_t) per entry, keep the agreeing entries:
  theta = theta_base + lambda * sum_{t in A} w_t m_t tau_t (divided by sum_{t in A} w_t when ``normalize``).

Parameters (mergekit names and defaults, the same for both):
- ``weight`` (per model, required): w_t.
- ``density`` (per model, default 1.0, in (0, 1]): fraction of entries kept. 1.0 keeps everything (no outlier cut).
- ``gamma`` (per model, default 0.01, in [0, 1)): fraction of largest-magnitude entries removed (outliers).
- ``normalize`` (default false, as in mergekit): ``breadcrumbs`` divides by sum_t w_t, ``breadcrumbs_ties`` by the
  weight of the agreeing experts (disjoint mean).
- ``rescale`` (default false): mergekit's L1 rescaling of the masked task vector to the original L1 norm.
- ``lambda`` (default 1.0): scale of the merged task vector (the paper's alpha).
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect.

Streaming: ``context`` finds the two thresholds per expert exactly in two passes over the row blocks (one when the
tensor is a single block), plus one pass for ``rescale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Blocks, Rng
from mergesmith.methods._spec import between, param, per_model

PAPER = (
    "Davari & Belilovsky 2024, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks, arXiv:2312.06795"
)


@dataclass(frozen=True)
class LinearParams:
    """breadcrumbs: ``normalize`` divides by the sum of the weights."""

    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, within=between(0, 1, open_low=True), doc="fraction of entries kept")
    gamma: tuple[float, ...] = per_model(
        0.01, within=between(0, 1, open_high=True), doc="fraction of largest-magnitude entries removed"
    )
    normalize: bool = param(False, doc="divide the weighted sum by the sum of the weights")
    rescale: bool = param(False, doc="L1-rescale the masked task vector to the norm of the original one")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


@dataclass(frozen=True)
class TiesParams:
    """breadcrumbs_ties: ``normalize`` divides by the weight of the agreeing experts."""

    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, within=between(0, 1, open_low=True), doc="fraction of entries kept")
    gamma: tuple[float, ...] = per_model(
        0.01, within=between(0, 1, open_high=True), doc="fraction of largest-magnitude entries removed"
    )
    normalize: bool = param(False, doc="divide by the weight of the agreeing experts (disjoint mean)")
    rescale: bool = param(False, doc="L1-rescale the masked task vector to the norm of the original one")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def _context(method: str, blocks: Blocks, params: LinearParams | TiesParams, rng: Rng | None) -> list[tv.Band | None]:
    # mask: each expert's band of kept magnitudes over the whole tensor
    return tv.outlier_bands(blocks, params.density, params.gamma, params.rescale)


def _merge_block(
    method: str,
    consensus: tv.Consensus | None,
    base: Tensor | None,
    experts: Sequence[Tensor],
    params: LinearParams | TiesParams,
    ctx: list[tv.Band | None],
    rng: Rng | None,
    block: int,
) -> Tensor:
    base = tv.require_base(method, base)
    deltas = tv.stacked_task_vectors(base, experts)
    for t, band in enumerate(ctx):
        tv.keep_band(deltas[t], band)  # mask both tails
    # weighted sum (consensus None), or elect sign + disjoint merge (consensus "sum")
    return tv.combine(base, deltas, params.weight, consensus=consensus, normalize=params.normalize, lam=params.lambda_)


LINEAR_SPEC = tv.variant_spec(
    "breadcrumbs",
    None,
    _merge_block,
    context=_context,
    params=LinearParams,
    paper=PAPER,
    description="drop the largest (gamma) and smallest magnitudes, keep density, weighted sum of task vectors",
)
TIES_SPEC = tv.variant_spec(
    "breadcrumbs_ties",
    "sum",
    _merge_block,
    context=_context,
    params=TiesParams,
    paper=PAPER,
    description="drop the largest (gamma) and smallest magnitudes, keep density, TIES sign election and merge",
)
SPECS = (LINEAR_SPEC, TIES_SPEC)

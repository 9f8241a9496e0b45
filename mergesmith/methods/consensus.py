"""TALL masks and Consensus merging: which entries of the multi-task vector each task needs.

Wang, Dimitriadis, Ortiz-Jimenez, Fleuret, Frossard 2024, "Localizing Task Information for Improved Model Merging
and Compression", ICML 2024, arXiv:2405.07813.

- Multi-task vector (Sec. 3): tau_MTL from task arithmetic, sum_t w_t tau_t, or from TIES (trim to the top
  ``density`` by magnitude, elect signs, disjoint weighted mean); theta_MTL = theta_0 + tau_MTL.
- TALL mask of task t (Sec. 4.1): m_t = 1{ |theta_0 - theta_t| >= lambda_t * |theta_MTL - theta_t| },
  the entries where the multi-task model is closer to the task's model than the pre-trained model is (up to
  lambda_t).
- ``tall_masks`` (Sec. 4, compression): task t's model is theta_0 + m_t * tau_MTL. The engine writes theta_0 as the
  model and tau_MTL and the masks beside it (``engine/side_outputs.py``); ``load_merged(out, task=...)`` gives one.
- ``consensus`` (Sec. 5, Consensus Merging): keep the entries that at least k tasks' masks keep,
  m_cons = 1{ sum_t m_t >= k } (k = 2 removes "catastrophic" weights used by no task and "selfish" ones used by one),
  then theta = theta_0 + alpha * (m_cons * tau_MTL). k = 0 is plain task arithmetic / TIES; k > T gives theta_0.

Parameters:
- ``weight`` (per model, default 1.0): w_t in tau_MTL.
- ``tall_mask_lambda`` (per model, default 0.4): lambda_t; the paper picks it per task from {0.2, ..., 0.6} on
  validation data (fusion-bench's default is 0.6).
- ``aggregation`` (default "task_arithmetic"): how tau_MTL is built: "task_arithmetic" or "ties".
- ``density`` (per model, default 0.2): TIES' trim fraction (only with ``aggregation: ties``).
- ``k`` (consensus, default 2) and ``lambda`` (consensus, default 1.0): the consensus threshold and alpha.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._per_task import PerTaskParts
from mergesmith.methods._protocol import Rng, check_shapes
from mergesmith.methods._spec import MethodSpec, at_least, between, param, per_model

PAPER = "Wang et al. 2024, Localizing Task Information for Improved Model Merging and Compression, arXiv:2405.07813"


AGGREGATIONS = ("task_arithmetic", "ties")


@dataclass(frozen=True)
class TallMasksParams:
    weight: tuple[float, ...] = per_model(1.0, doc="w_t, the coefficient of the task vector in tau_MTL")
    tall_mask_lambda: tuple[float, ...] = per_model(0.4, within=at_least(0), doc="lambda_t of the TALL mask")
    aggregation: str = param("task_arithmetic", choices=AGGREGATIONS, doc="how tau_MTL is built")
    density: tuple[float, ...] = per_model(
        0.2, within=between(0, 1, open_low=True), doc="TIES trim fraction (aggregation: ties)"
    )


@dataclass(frozen=True)
class ConsensusParams:
    weight: tuple[float, ...] = per_model(1.0, doc="w_t, the coefficient of the task vector in tau_MTL")
    tall_mask_lambda: tuple[float, ...] = per_model(0.4, within=at_least(0), doc="lambda_t of the TALL mask")
    aggregation: str = param("task_arithmetic", choices=AGGREGATIONS, doc="how tau_MTL is built")
    density: tuple[float, ...] = per_model(
        0.2, within=between(0, 1, open_low=True), doc="TIES trim fraction (aggregation: ties)"
    )
    k: int = param(2, within=at_least(0), doc="keep entries that at least k tasks' TALL masks keep")
    lambda_: float = param(1.0, alias="lambda", doc="alpha, the scale of the masked multi-task vector")


def multi_task_vector(
    base: Tensor, experts: Sequence[Tensor], taus: Tensor, params: TallMasksParams | ConsensusParams
) -> Tensor:
    """tau_MTL (Sec. 3): task arithmetic's sum_t w_t tau_t, or TIES' trimmed, sign-elected disjoint mean."""
    weights = params.weight
    deltas = taus.clone()
    if params.aggregation == "ties":
        bands = tv.magnitude_bands(lambda: iter([(base, list(experts))]), params.density, rescale=False)
        for t, band in enumerate(bands):
            tv.keep_band(deltas[t], band)  # TIES step 1: trim
    for t, w in enumerate(weights):
        deltas[t].mul_(torch.tensor(w, dtype=deltas.dtype))
    if params.aggregation == "task_arithmetic":
        return tv.sum_in_order(deltas)
    agree = tv.agreement(deltas, "sum").to(deltas.dtype)  # TIES step 2: elect sign
    mixed = tv.sum_in_order(deltas[t] * agree[t] for t in range(len(weights)))  # step 3: disjoint mean
    divisor = tv.sum_in_order(torch.tensor(w, dtype=deltas.dtype) * agree[t] for t, w in enumerate(weights))
    divisor[divisor == 0] = 1
    return mixed / divisor


def tall_masks_for(base: Tensor, experts: Sequence[Tensor], tau_mtl: Tensor, lambdas: Sequence[float]) -> list[Tensor]:
    """m_t = 1{|theta_0 - theta_t| >= lambda_t * |theta_MTL - theta_t|} (Sec. 4.1), in parameter space."""
    theta_mtl = base + tau_mtl
    masks = []
    for expert, lam in zip(experts, lambdas):
        masks.append((base - expert).abs() >= (theta_mtl - expert).abs() * lam)
    return masks


def _prepare(
    method: str, base: Tensor | None, experts: Sequence[Tensor], params: TallMasksParams | ConsensusParams
) -> tuple[Tensor, Tensor, list[Tensor]]:
    base = tv.require_base(method, base)
    check_shapes(method, base, experts)
    taus = tv.stacked_task_vectors(base, experts)
    tau_mtl = multi_task_vector(base, experts, taus, params)
    return base, tau_mtl, tall_masks_for(base, experts, tau_mtl, params.tall_mask_lambda)


def merge_tall_masks(
    base: Tensor | None, experts: Sequence[Tensor], params: TallMasksParams, rng: Rng | None = None
) -> tuple[Tensor, PerTaskParts]:
    base, tau_mtl, masks = _prepare("tall_masks", base, experts, params)
    # theta_t = theta_0 + m_t * tau_MTL (Sec. 4): the model is theta_0, tau_MTL and the masks go beside it
    return base, PerTaskParts(task_vector=tau_mtl, masks=masks, scale_terms=None)


def merge_consensus(
    base: Tensor | None, experts: Sequence[Tensor], params: ConsensusParams, rng: Rng | None = None
) -> Tensor:
    base, tau_mtl, masks = _prepare("consensus", base, experts, params)
    # m_cons = 1{sum_t m_t >= k} (Sec. 5); counts are integers, exact in any order
    votes = torch.stack(masks).sum(dim=0)
    keep = (votes >= params.k).to(tau_mtl.dtype)
    # theta = theta_0 + alpha * (m_cons * tau_MTL)
    return (base + (tau_mtl * keep) * torch.tensor(params.lambda_, dtype=tau_mtl.dtype)).to(base.dtype)


TALL_MASKS_SPEC = MethodSpec(
    name="tall_masks",
    params=TallMasksParams,
    whole_tensor=merge_tall_masks,
    paper=PAPER,
    base="required",
    description="multi-task vector + per-task TALL masks (compression); one model per task, base + m_t * tau_MTL",
    side_outputs="tall_masks",
)
CONSENSUS_SPEC = MethodSpec(
    name="consensus",
    params=ConsensusParams,
    whole_tensor=merge_consensus,
    paper=PAPER,
    base="required",
    description="keep the entries of the multi-task vector that at least k tasks' TALL masks keep",
)
SPECS = (CONSENSUS_SPEC, TALL_MASKS_SPEC)

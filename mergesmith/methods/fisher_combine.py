"""Fisher merging's combination step: a per-parameter weighted average with diagonal Fisher weights.

Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging", arXiv:2111.09832, eq. (3):
theta*_j = sum_i lambda_i F_i,j theta_i,j / sum_i lambda_i F_i,j, with F_i the diagonal Fisher of model i (its
statistics, collected by ``mergesmith adapt fisher``) floored at ``fisher_floor`` so that a parameter no model's data
touched (F = 0 everywhere) gets the plain weighted average instead of 0/0.

The engine passes each model's Fisher tensor (its ``statistics:`` file in the merge config) as ``statistics``, in
the models' order; a tensor without statistics is the weighted average. Fishers are per parameter, so weights and
Fishers stream by row block together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng, Statistics, Streaming
from mergesmith.methods._spec import MethodSpec, at_least, param, per_model


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(1.0, doc="the model's weight lambda_i (eq. 3)")
    fisher_floor: float = param(
        1e-6, within=at_least(0), doc="lower bound on every Fisher value (avoids 0/0 for untouched parameters)"
    )


def fisher_average(
    thetas: Sequence[Tensor], fishers: Sequence[Tensor] | None, weights: Sequence[float], floor: float
) -> Tensor:
    """Eq. (3): sum_i w_i F_i theta_i / sum_i w_i F_i with F_i >= floor; the weighted average without Fishers.
    Model i's tensors are indexed when the sum reaches them (the engine may read each only then)."""
    num: Tensor | None = None
    den: Tensor | None = None
    for i in range(len(thetas)):
        theta = thetas[i]
        if num is None or den is None:
            num, den = torch.zeros_like(theta), torch.zeros_like(theta)
        f = fishers[i].to(theta.dtype).clamp_min(floor) if fishers is not None else torch.ones_like(theta)
        num.addcmul_(f, theta, value=float(weights[i]))
        den.add_(f, alpha=float(weights[i]))
        del theta, f
    assert num is not None and den is not None, "fisher_combine needs at least one model"
    return num / den


def merge_block(
    base: Tensor | None,
    experts: Sequence[Tensor],
    params: Params,
    ctx: None,
    rng: Rng | None,
    block: int,
    *,
    statistics: Sequence[Tensor] | None = None,
) -> Tensor:
    # Elementwise, so any row block. The engine's on-demand experts and Fishers are read when the sum reaches them.
    return fisher_average(experts, statistics, params.weight, params.fisher_floor)


def statistics_shape(shape: tuple[int, ...], params: Params) -> tuple[int, ...]:
    return tuple(shape)  # one Fisher value per parameter


SPEC = MethodSpec(
    name="fisher_combine",
    params=Params,
    paper="Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging, arXiv:2111.09832",
    base="unused",
    streaming=Streaming(merge_block, one_expert_at_a_time=True),
    statistics=Statistics(statistics_shape, merge_block=merge_block),
    description="Fisher-weighted average; the per-model diagonal Fishers come from `mergesmith adapt fisher`",
)

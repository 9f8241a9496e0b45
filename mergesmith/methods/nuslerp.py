"""nuSLERP: mergekit's weighted SLERP of two models, optionally of their task vectors around a base.

Shoemake 1985, "Animating rotation with quaternion curves", SIGGRAPH '85 (no arXiv), in the form mergekit defines as
``nuslerp`` (Goddard et al. 2024, "Arcee's MergeKit: A Toolkit for Merging Large Language Models",
arXiv:2403.13257). Differences from ``slerp``:
- the two models are weighted, t = w_2 / (w_1 + w_2) (t = 0.5 when the weights sum to about zero, as mergekit);
- with a base, the task vectors tau_i = theta_i - theta_base are interpolated and the base added back
  ("task-vector SLERP"); without one, the models themselves;
- the interpolation can be done per row or per column instead of over the whole tensor;
- only exactly collinear vectors fall back to linear interpolation.

    slerp(v0, v1; t) = (sin((1 - t) Omega) v0 + sin(t Omega) v1) / sin(Omega),  cos Omega = <v0, v1> / |v0||v1|

Parameters:
    weight (per model, required): the models' relative weights; t = w_2 / (w_1 + w_2).
    nuslerp_flatten (default True): interpolate the whole tensor as one vector.
    nuslerp_row_wise (default False): when not flattened, interpolate the vectors along dimension 0 (the columns of
        a 2-D weight) instead of those along the last dimension (the rows); ignored when flattened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, param, per_model

UNIT_EPS = 1e-7  # smallest norm divided by when normalising: a zero vector stays zero (cosine 0 with anything)
COLLINEAR_EPS = 1e-8  # sin^2(Omega) <= COLLINEAR_EPS^2 counts as collinear: lerp instead of dividing by ~0
ZERO_WEIGHT_SUM = 1e-6  # |w_1 + w_2| below this: t = 0.5 (mergekit's rule)


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="relative weight of each of the two models (required)")
    nuslerp_flatten: bool = param(True, doc="interpolate the whole tensor as one vector (default True)")
    nuslerp_row_wise: bool = param(
        False, doc="if not flattened, interpolate vectors along dim 0 instead of the last dim (default False)"
    )


def interpolation_factor(weights: Sequence[float]) -> float:
    """t = w_2 / (w_1 + w_2): the share of the second model."""
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < ZERO_WEIGHT_SUM else weights[1] / total


def slerp_vectors(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """SLERP of the vectors along the last dimension of v0 and v1 (any leading shape)."""
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=UNIT_EPS)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=UNIT_EPS)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= COLLINEAR_EPS**2
    # keep acos away from +-1 on the collinear entries so the unselected branch stays finite
    omega = torch.acos(torch.where(collinear, torch.zeros_like(cos), cos))
    sin_omega = torch.sin(omega)
    # Shoemake eq. 1 on the raw vectors (norms are interpolated along with directions)
    spherical = (torch.sin((1 - t) * omega) * v0 + torch.sin(t * omega) * v1) / sin_omega
    return torch.where(collinear, (1 - t) * v0 + t * v1, spherical)


def _slerp_shaped(t: float, v0: Tensor, v1: Tensor, flatten: bool, row_wise: bool) -> Tensor:
    shape = v0.shape
    if flatten or v0.dim() == 0:
        return slerp_vectors(t, v0.reshape(-1), v1.reshape(-1)).reshape(shape)
    if row_wise:
        # vectors along dim 0: move it last, interpolate, move it back
        return slerp_vectors(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1).reshape(shape)
    return slerp_vectors(t, v0, v1)


def _check(base: Tensor | None, experts: Sequence[Tensor]) -> None:
    if len(experts) != 2:
        raise ValueError(f"nuslerp interpolates exactly two models (not counting the base); got {len(experts)}")
    for tensor in (*experts, *([] if base is None else [base])):
        if tensor.shape != experts[0].shape:
            raise ValueError(f"nuslerp: shape mismatch, {tuple(tensor.shape)} vs {tuple(experts[0].shape)}")


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    _check(base, experts)
    t = interpolation_factor(params.weight)
    flatten, row_wise = params.nuslerp_flatten, params.nuslerp_row_wise
    if base is None:
        return _slerp_shaped(t, experts[0], experts[1], flatten, row_wise)
    # task-vector SLERP: interpolate tau_i = theta_i - theta_base, then add the base back
    delta = _slerp_shaped(t, experts[0] - base, experts[1] - base, flatten, row_wise)
    return delta.add_(base)


SPEC = MethodSpec(
    name="nuslerp",
    params=Params,
    whole_tensor=merge,
    paper='Shoemake 1985, "Animating rotation with quaternion curves", SIGGRAPH 85 (no arXiv); '
    "nuSLERP as defined by mergekit, Goddard et al. 2024, arXiv:2403.13257",
    base="optional",
    min_models=2,
    max_models=2,
    description="weighted SLERP of two models, or of their task vectors around a base; per tensor, row or column",
)

"""SLERP: spherical linear interpolation between the base and one other model, over the whole tensor.

Shoemake 1985, "Animating rotation with quaternion curves", SIGGRAPH '85 (no arXiv), as used for model merging by
mergekit (Goddard et al. 2024, "Arcee's MergeKit: A Toolkit for Merging Large Language Models", arXiv:2403.13257).

With the tensors flattened to vectors p0 (base) and p1 (other) and Omega the angle between them,

    slerp(p0, p1; t) = sin((1 - t) Omega) / sin(Omega) * p0 + sin(t Omega) / sin(Omega) * p1      (Shoemake, eq. 1)

The angle is measured between the normalised vectors, but the coefficients multiply the raw tensors (as mergekit
does), so the norm is interpolated along with the direction. Nearly parallel or antiparallel pairs (|cos Omega| >
0.9995), where sin(Omega) vanishes, fall back to linear interpolation (1 - t) p0 + t p1.

Parameters:
    t (required, float): position along the arc; 0 gives the base, 1 the other model. mergekit accepts any real
        value (outside [0, 1] the arc is extrapolated), and so do we. In a config ``t`` may be a per-layer gradient;
        the config resolves it to one number per tensor before this function runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, param

# Above this |cos Omega| the pair is treated as collinear (mergekit's threshold): sin(Omega) is too small to divide by.
DOT_THRESHOLD = 0.9995
# Norms at or below this are treated as 1, so a zero tensor has cosine 0 with everything instead of NaN.
NORM_EPS = 1e-8


@dataclass(frozen=True)
class Params:
    t: float = param(doc="position along the arc: 0 = base, 1 = the other model (any real value; default: required)")


def _check(base: Tensor | None, experts: Sequence[Tensor]) -> Tensor:
    if base is None:
        raise ValueError("slerp needs a base model: set base_model (t=0 gives the base, t=1 the other model)")
    if len(experts) != 1:
        raise ValueError(f"slerp interpolates the base with exactly one other model; got {len(experts)}")
    if experts[0].shape != base.shape:
        raise ValueError(f"slerp: shape mismatch, base {tuple(base.shape)} vs model {tuple(experts[0].shape)}")
    return base


def slerp_coefficients(t: float, v0: Tensor, v1: Tensor) -> tuple[Tensor, Tensor]:
    """The two scalar weights (c0, c1) such that slerp = c0 * v0 + c1 * v1; 0-d tensors in the inputs' dtype."""
    dtype = v0.dtype
    a, b = v0.reshape(-1), v1.reshape(-1)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    one = torch.ones((), dtype=dtype)
    norm_a = torch.where(norm_a > NORM_EPS, norm_a, one)
    norm_b = torch.where(norm_b > NORM_EPS, norm_b, one)
    # cos Omega from unit vectors (normalising first keeps the dot product from overflowing)
    cos = torch.dot(a / norm_a, b / norm_b).clamp(-1, 1)
    t_ = torch.tensor(t, dtype=dtype)
    if cos.abs() > DOT_THRESHOLD:
        # collinear: sin(Omega) ~ 0, so Shoemake's weights are ill-conditioned; lerp is the limit for Omega -> 0
        return 1 - t_, t_
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    # Shoemake eq. 1
    return torch.sin((1 - t_) * omega) / sin_omega, torch.sin(t_ * omega) / sin_omega


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    base = _check(base, experts)
    other = experts[0]
    if base.numel() == 0:
        return base.clone()
    c0, c1 = slerp_coefficients(params.t, base, other)
    result = base * c0
    result.add_(other * c1)
    return result


SPEC = MethodSpec(
    name="slerp",
    params=Params,
    whole_tensor=merge,
    paper='Shoemake 1985, "Animating rotation with quaternion curves", SIGGRAPH 85 (no arXiv); '
    "as in mergekit, Goddard et al. 2024, arXiv:2403.13257",
    base="required",
    min_models=1,
    max_models=1,
    description="spherical interpolation between the base and one other model (whole tensor), t in [0, 1]",
)

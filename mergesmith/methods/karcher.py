"""Karcher mean: the Riemannian (Fréchet) centre of mass of the models' directions on the unit hypersphere.

Wang, Ye & Yin 2026, "Functionality-Oriented LLM Merging on the Fisher-Rao Manifold", arXiv:2603.04972 (mergekit's
``karcher``), after Karcher 1977, "Riemannian center of mass and mollifier smoothing", CPAM 30(5) (no arXiv), and
Buss & Fillmore 2001, "Spherical averages and applications to spherical splines and interpolation" (no arXiv).

Each tensor is flattened to a vector x_i = r_i u_i (norm r_i, direction u_i). The direction of the merge is the
point m on the sphere minimising sum_i a_i d(m, u_i)^2, with d the geodesic distance and a_i = 1/N; the norm is
the mean norm sum_i a_i r_i. m is found by Riemannian gradient descent (Buss & Fillmore's fixed-point iteration):
    start: m = normalised sum_i a_i u_i  (u_1 if that sum is ~0)
    repeat up to max_iter times:
        g = sum_i a_i theta_i / sin(theta_i) (u_i - cos(theta_i) m),  cos(theta_i) = <m, u_i>   (log map Log_m(u_i))
        stop if |g| < tol
        m <- cos(|g|) m + sin(|g|) g / |g|                                                        (exp map Exp_m(g))
Models whose norm is <= tol have no direction: they are left out of the direction (the other weights renormalised)
but still count, with their ~0 norm, in the mean norm. All models zero gives zero.

Parameters:
    max_iter (default 10): the most gradient steps; >= 0.
    tol (default 1e-5): stop when the tangent step is shorter than this; also the norm below which a model has no
        direction, and the angle below which a model is taken to coincide with the mean; >= 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MAX_STEPS, MethodSpec, at_least, between, param


@dataclass(frozen=True)
class Params:
    max_iter: int = param(10, within=between(0, MAX_STEPS), doc="most Riemannian gradient steps (default 10)")
    tol: float = param(
        1e-5, within=at_least(0), doc="stopping step length, zero-norm and zero-angle threshold (default 1e-5)"
    )


def _check(experts: Sequence[Tensor]) -> None:
    if len(experts) < 1:
        raise ValueError("karcher needs at least one model")
    for tensor in experts:
        if tensor.shape != experts[0].shape:
            raise ValueError(f"karcher: shape mismatch, {tuple(tensor.shape)} vs {tuple(experts[0].shape)}")


def karcher_mean_direction(
    vectors: Sequence[Tensor], norms: Sequence[Tensor], alphas: Sequence[float], max_iter: int, tol: float
) -> Tensor:
    """The weighted Karcher mean of the directions u_i = vectors[i] / norms[i] (flat, nonzero), same dtype.

    The unit vectors are recomputed where used instead of stored: memory stays at a few tensors whatever N is.
    """

    def units():
        return (vector / norm for vector, norm in zip(vectors, norms))

    mean = torch.zeros_like(vectors[0])
    for alpha, unit in zip(alphas, units()):
        mean += alpha * unit
    mean_norm = torch.linalg.vector_norm(mean)
    # start from the normalised chordal mean; if the directions cancel, from the first of them
    mean = vectors[0] / norms[0] if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        # Riemannian gradient: the weighted mean of the log maps Log_m(u_i) = theta_i/sin(theta_i) (u_i - cos m)
        tangent = torch.zeros_like(mean)
        for alpha, unit in zip(alphas, units()):
            cos = torch.dot(mean, unit).clamp(-1.0, 1.0)
            theta = torch.arccos(cos)
            sin = torch.sin(theta)
            if theta.item() < tol or sin.item() == 0.0:
                continue  # u_i coincides with m (Log is 0), or is exactly antipodal (Log undefined)
            tangent += alpha * (theta / sin) * (unit - cos * mean)
        step = torch.linalg.vector_norm(tangent)
        if step.item() < tol:
            break
        # exponential map: walk |g| along the great circle in the direction of g
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm.item() > tol:
            mean = mean / mean_norm  # keep m on the sphere despite rounding
    return mean


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    _check(experts)
    if len(experts) == 1:
        return experts[0]
    alphas = [1.0 / len(experts)] * len(experts)  # mergekit's karcher weights all models equally
    flat = [x.reshape(-1) for x in experts]
    norms = [torch.linalg.vector_norm(x) for x in flat]
    with_direction = [i for i, norm in enumerate(norms) if norm.item() > params.tol]
    if not with_direction:
        return torch.zeros_like(experts[0])
    total = sum(alphas[i] for i in with_direction)
    direction = karcher_mean_direction(
        [flat[i] for i in with_direction],
        [norms[i] for i in with_direction],
        [alphas[i] / total for i in with_direction],
        params.max_iter,
        params.tol,
    )
    # the merged norm is the plain weighted mean of all the norms
    scale = sum(alpha * norm for alpha, norm in zip(alphas, norms))
    return (scale * direction).reshape(experts[0].shape)


SPEC = MethodSpec(
    name="karcher",
    params=Params,
    whole_tensor=merge,
    paper='Wang, Ye & Yin 2026, "Functionality-Oriented LLM Merging on the Fisher-Rao Manifold", arXiv:2603.04972; '
    'Karcher 1977, "Riemannian center of mass and mollifier smoothing" (no arXiv)',
    base="unused",
    min_models=1,
    description="Karcher (Fréchet) mean of the models' directions on the sphere, scaled by their mean norm",
)

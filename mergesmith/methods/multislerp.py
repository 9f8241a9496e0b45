"""Multi-SLERP: a weighted barycentre of several models on the hypersphere, optionally around a base.

Goddard 2025, "Multi-SLERP" (https://goddard.blog/posts/multislerp-wow-what-a-cool-idea, no arXiv), mergekit's
``multislerp``; spherical barycentres after Buss & Fillmore 2001, "Spherical averages and applications to spherical
splines and interpolation", ACM TOG 20(2) (no arXiv).

The method, per tensor (each flattened to a vector; with a base, on the task vectors x_i = theta_i - theta_base):
1. project onto the unit sphere: u_i = x_i / (|x_i| + eps);
2. take the weighted Euclidean mean m = sum_i w_i u_i and its direction m_hat = m / |m| as the tangent point;
3. map each u_i to the tangent space at m_hat (orthogonal projection u_i - <u_i, m_hat> m_hat), average there with
   the weights, and map back with the exponential map;
4. scale by the weighted mean norm sum_i w_i |x_i| (and add the base back).

Because step 3 uses the orthogonal projection (a linear map) at the weighted mean's own direction, the weighted
tangent average is sum_i w_i u_i - <m, m_hat> m_hat = m - |m| m_hat = 0 exactly, and exp(0) = m_hat. So the result
is exactly m_hat * sum_i w_i |x_i|; we compute that closed form rather than a vector that is zero up to rounding
(mergekit computes the long form; the two agree to rounding).

Special cases (as mergekit): one model is returned unchanged (its weight is not applied); if |m| < eps and there
are two models, the result is the weighted sum w_1 x_1 + w_2 x_2 (e.g. antipodal task vectors with equal weights).
Where mergekit raises for three or more models with |m| < eps, we return the base when every task vector is zero
(experts equal to the base give the base) and raise otherwise.

Parameters:
    weight (per model, required): the models' weights.
    normalize_weights (default True): divide the weights by their sum.
    eps (default 1e-8): added to norms before dividing; must be > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.errors import ConfigError
from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, above, param, per_model


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="the model's weight in the barycentre (required)")
    normalize_weights: bool = param(True, doc="divide the weights by their sum (default True)")
    eps: float = param(1e-8, within=above(0), doc="added to norms before dividing (default 1e-8)")

    def check(self) -> None:
        """with normalize_weights and several models, the weights must not sum to 0."""
        if self.normalize_weights and len(self.weight) > 1 and sum(self.weight) == 0:
            raise ConfigError(
                f"the weights {list(self.weight)} sum to 0, so they cannot be normalised; change the "
                "weights or set normalize_weights: false"
            )


def _check(base: Tensor | None, experts: Sequence[Tensor]) -> None:
    if len(experts) < 1:
        raise ValueError("multislerp needs at least one model (not counting the base)")
    for tensor in (*experts, *([] if base is None else [base])):
        if tensor.shape != experts[0].shape:
            raise ValueError(f"multislerp: shape mismatch, {tuple(tensor.shape)} vs {tuple(experts[0].shape)}")


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    _check(base, experts)
    if len(experts) == 1:
        return experts[0]  # nothing to interpolate (mergekit returns it as is, weight not applied)
    dtype = experts[0].dtype
    eps = params.eps
    weights = torch.tensor(params.weight, dtype=dtype)
    if params.normalize_weights:
        weights = weights / weights.sum()

    # task vectors are recomputed per pass rather than stored, so memory stays at a few tensors whatever N is
    def vectors():
        for x in experts:
            yield x.reshape(-1) if base is None else (x - base).reshape(-1)

    # 1. project onto the unit sphere
    norms = torch.stack([torch.linalg.vector_norm(x) for x in vectors()])
    # 2. weighted Euclidean mean of the unit vectors: the tangent point's direction
    mean = torch.zeros(experts[0].numel(), dtype=dtype)
    for x, norm, w in zip(vectors(), norms.unbind(0), weights.unbind(0)):
        mean.add_(x * (w / (norm + eps)))
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        # no direction to average around: antipodal task vectors with balancing weights, or all zero
        if len(experts) == 2 or bool((norms == 0).all()):
            mean.zero_()
            for x, w in zip(vectors(), weights.unbind(0)):
                mean.add_(x * w)
            return _finish(mean, experts[0].shape, base)
        raise ValueError(
            "multislerp: the weighted mean of the models' directions is zero (e.g. antipodal task vectors whose "
            "weights cancel), so it has no direction; change the weights"
        )
    # 3. the tangent-space average at mean/|mean| is zero (see the module docstring), exp(0) = mean/|mean|
    # 4. scale by the weighted mean norm
    scale = (norms * weights).sum()
    return _finish(mean.mul_(scale / mean_norm), experts[0].shape, base)


def _finish(flat: Tensor, shape: torch.Size, base: Tensor | None) -> Tensor:
    result = flat.reshape(shape)
    return result if base is None else result.add_(base)


SPEC = MethodSpec(
    name="multislerp",
    params=Params,
    whole_tensor=merge,
    paper='Goddard 2025, "Multi-SLERP" (goddard.blog, no arXiv; mergekit multislerp); Buss & Fillmore 2001, '
    '"Spherical averages and applications to spherical splines and interpolation", ACM TOG (no arXiv)',
    base="optional",
    min_models=1,
    description="weighted barycentre of several models (or task vectors around a base) on the hypersphere",
)

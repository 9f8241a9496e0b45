"""Model Stock: move from the base toward the experts' average by a ratio set by the angle between their task vectors.

Jang, Yun & Han 2024, "Model Stock: All we need is just a few fine-tuned models", arXiv:2403.19522.

With N fine-tuned weights w_1..w_N of a pretrained w_0, task vectors tau_i = w_i - w_0 and theta the angle between
them (the paper assumes it is the same for every pair; we use the mean pairwise cosine, as mergekit does):

    t = N cos(theta) / (1 + (N - 1) cos(theta))       (paper, Sec. 3: the ratio; 2 cos / (1 + cos) for N = 2)
    w_H = t w_avg + (1 - t) w_0,  w_avg = (1/N) sum_i w_i   (paper, Sec. 3: the merged weight)

Identical experts (cos = 1) give t = 1, the experts; orthogonal task vectors give t = 0, the base. Where the
denominator vanishes (cos = -1/(N - 1)) there is no finite ratio and the base is kept (t = 0), as mergekit. Cosines
divide by max(|tau_i| |tau_j|, 1e-6), as mergekit: for very small task vectors this pulls the cosine (and so t)
toward 0.

Parameters:
    filter_wise (default False): compute one angle and ratio per vector along the last dimension (per row of a
        2-D weight, as the paper's per-filter variant) instead of one per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, param

NORM_PRODUCT_FLOOR = 1e-6  # mergekit's floor on |tau_i| |tau_j| in the cosine's denominator
SINGULAR = 1e-6  # |1 + (N - 1) cos| below this: keep the base


@dataclass(frozen=True)
class Params:
    filter_wise: bool = param(
        False, doc="one ratio per row (vectors along the last dim) instead of one per tensor (default False)"
    )


def _check(base: Tensor | None, experts: Sequence[Tensor]) -> Tensor:
    if base is None:
        raise ValueError("model_stock needs a base model (the pretrained weights w_0): set base_model")
    if len(experts) < 2:
        raise ValueError(
            f"model_stock needs at least two fine-tuned models besides the base (it uses the angle between their "
            f"task vectors); got {len(experts)}"
        )
    for tensor in experts:
        if tensor.shape != base.shape:
            raise ValueError(f"model_stock: shape mismatch, base {tuple(base.shape)} vs model {tuple(tensor.shape)}")
    return base


def mean_pairwise_cosine(base: Tensor, experts: Sequence[Tensor]) -> Tensor:
    """Mean over pairs i < j of cos(tau_i, tau_j), along the last dimension (shape: base.shape[:-1])."""
    norms = [torch.linalg.vector_norm(x - base, dim=-1) for x in experts]
    cosines = []
    for i in range(len(experts)):
        tau_i = experts[i] - base  # task vectors recomputed per pair: memory stays at a few tensors
        for j in range(i + 1, len(experts)):
            dot = (tau_i * (experts[j] - base)).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=NORM_PRODUCT_FLOOR)).clamp(-1, 1))
    return torch.stack(cosines).mean(dim=0)


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    base = _check(base, experts)
    shape = base.shape
    if params.filter_wise and base.dim() >= 2:
        w0, ws = base, list(experts)  # one vector per position of the leading dims
    else:
        w0, ws = base.reshape(-1), [x.reshape(-1) for x in experts]  # 1-D weights are one filter anyway
    n = len(ws)
    cos = mean_pairwise_cosine(w0, ws).unsqueeze(-1)
    # the paper's ratio t = N cos / (1 + (N - 1) cos); at its pole keep the base
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < SINGULAR
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(cos), denominator))
    # the paper's merge w_H = t w_avg + (1 - t) w_0
    average = ws[0].clone()
    for w in ws[1:]:
        average.add_(w)
    average.div_(n)
    return (average.mul_(t) + (1 - t) * w0).reshape(shape)


SPEC = MethodSpec(
    name="model_stock",
    params=Params,
    whole_tensor=merge,
    paper='Jang, Yun & Han 2024, "Model Stock: All we need is just a few fine-tuned models", arXiv:2403.19522',
    base="required",
    min_models=2,
    description="interpolate from the base toward the experts' average, ratio from the angle between task vectors",
)

"""CART: centered task arithmetic with rank-reduced task vectors.

Choi, Kim, Lee, Hong 2024, "Revisiting Weight Averaging for Model Merging", arXiv:2412.12153. Sec. 3-4:

1. weight averaging as centered task arithmetic: theta_avg = (1/T) sum_t theta_t, and the task vectors centered at
   it, tau_t = theta_t - theta_avg (Sec. 3.1), which sum to zero;
2. rank reduction: replace each centered task vector of a 2-D weight by its best rank-k approximation
   SVD_k(tau_t) = U_k S_k V_k^T, k = ``rank_ratio`` * min(m, n) (Sec. 4; the paper finds about 8 % of the full rank
   works across settings);
3. theta = theta_avg + lambda * sum_t SVD_k(tau_t) (Sec. 4).

No pretrained model takes part (theta_base cancels from theta_t - theta_avg), so CART needs no base_model. At full
rank the centered task vectors sum to zero and CART is weight averaging, which is task arithmetic with lambda = 1/T.
Tensors that are not 2-D matrices have no low-rank approximation: their centered task vectors sum to zero and they
are averaged; the plan says so once per merge.

Parameters:
- ``lambda`` (default 1.0): scale of the summed rank-reduced centered task vectors.
- ``rank_ratio`` (default 0.08, in (0, 1]): fraction of min(m, n) kept, k = max(1, int(min(m, n) * rank_ratio)).

Whole-tensor (each SVD needs the whole matrix); deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _spectral as sp, _task_vectors as tv
from mergesmith.methods._protocol import Rng, check_shapes
from mergesmith.methods._spec import MethodSpec, between, param

NAME = "cart"


@dataclass(frozen=True)
class Params:
    lambda_: float = param(1.0, alias="lambda", doc="scale of the summed rank-reduced centered task vectors")
    rank_ratio: float = param(
        0.08, within=between(0, 1, open_low=True), doc="fraction of each weight matrix's rank kept"
    )


def kept_rank(shape: Sequence[int], rank_ratio: float) -> int:
    return max(1, int(min(shape) * rank_ratio))


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    if not experts:
        raise ValueError(f"{NAME} needs at least one model")
    first = experts[0]
    check_shapes(NAME, first, experts, "model")
    if all(torch.equal(expert, first) for expert in experts[1:]):
        return first.clone()  # one point (a frozen weight): its average, without rounding or SVDs
    # step 1: theta_avg = (1/T) sum_t theta_t
    average = tv.sum_in_order(experts) / len(experts)
    if first.dim() != 2:
        return average.to(first.dtype)  # the centered task vectors of a non-matrix sum to zero: the average
    if not sp.all_finite(experts):
        return sp.undefined_like(first)
    k = kept_rank(first.shape, params.rank_ratio)
    # step 1: tau_t = theta_t - theta_avg;  step 2: SVD_k(tau_t);  step 3: theta_avg + lambda * sum_t SVD_k(tau_t)
    reduced = tv.sum_in_order(sp.low_rank(expert - average, k) for expert in experts)
    return (average + params.lambda_ * reduced).to(first.dtype)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Choi et al. 2024, Revisiting Weight Averaging for Model Merging, arXiv:2412.12153",
    base="unused",
    whole_tensor=merge,
    description="weight average + lambda * sum of low-rank (SVD) task vectors centered at the average",
    non_matrix="they are averaged (their centered task vectors sum to zero and have no low-rank approximation)",
)

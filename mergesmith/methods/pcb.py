"""PCB-Merging: parameter competition balancing, then drop and rescale.

Du, Lee, Li, Jiang, Guo, Yu, Liu, Goh, Tang, He, Zhang 2024, "Parameter Competition Balancing for Model Merging",
NeurIPS 2024, arXiv:2410.02396. Sec. 3 (method), with N experts and task vectors tau_i = theta_i - theta_pre:

1. intra-balancing, how much a parameter matters to its own task:
   beta_intra,i = Softmax(N * Norm(tau_i * tau_i)); the number of tasks N acts as the softmax's inverse temperature
   (more tasks, sharper competition);
2. inter-balancing, how much a task's parameter agrees with the other tasks':
   beta_inter,i = sum_j Softmax(Norm(tau_i * tau_j));
3. the balancing matrix beta_i = beta_intra,i * beta_inter,i;
4. drop: keep the entries whose score reaches the top fraction r of task i's scores,
   m_i = beta_i >= sorted(beta_i)[(1 - r) * D], beta^_i = m_i * beta_i;
5. rescale: tau_m = sum_i beta^_i * tau_i / sum_i beta^_i;
6. theta_m = theta_pre + lambda * tau_m.

Norm is min-max normalisation to [0, 1] and Softmax runs over the D entries, as in the authors' code; a constant
input (e.g. a zero task vector) normalises to zeros. The paper flattens the whole model into one vector; here, as
mergekit and FusionBench do for TIES, each tensor is one vector (a tensor-wise merge). Entries that every task drops
keep the base value.

The authors' released code differs from the paper's equations in its activations (exp instead of the intra softmax,
tanh instead of the inter softmax, a min-max rescaling of the kept scores, and clipping of the 0.01 % most extreme
task-vector values); this module follows the paper. The paper's r is the fraction of entries KEPT per task (the code's
``pcb_ratio``, 0.1 by default and 0.05-0.2 in its experiments): ``density`` here, the name mergekit uses for it.

Parameters:
- ``density`` (default 0.1, in (0, 1]): r, the fraction of each task's entries kept.
- ``lambda`` (default 1.0): scale of the merged task vector.

Whole-tensor (the normalisations and the threshold are per tensor); deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _spectral as sp
from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, between, param

NAME = "pcb"


@dataclass(frozen=True)
class Params:
    density: float = param(
        0.1, within=between(0, 1, open_low=True), doc="r: fraction of each task's entries kept after balancing"
    )
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")


def min_max(x: Tensor) -> Tensor:
    """Norm: (x - min) / (max - min); a constant vector gives zeros."""
    low, high = x.min(), x.max()
    if not bool(high > low):
        return torch.zeros_like(x)
    return (x - low) / (high - low)


def balancing_scores(taus: Tensor) -> Tensor:
    """beta_i = beta_intra,i * beta_inter,i for every task (steps 1-3); ``taus`` is [N, D]."""
    n = taus.shape[0]
    scores = torch.empty_like(taus)
    for i in range(n):
        # step 1: intra-balancing, Softmax(N * Norm(tau_i * tau_i)) over the D entries
        intra = torch.softmax(n * min_max(taus[i] * taus[i]), dim=0)
        # step 2: inter-balancing, sum_j Softmax(Norm(tau_i * tau_j))
        inter = torch.zeros_like(intra)
        for j in range(n):
            inter += torch.softmax(min_max(taus[i] * taus[j]), dim=0)
        # step 3: the balancing matrix
        scores[i] = intra * inter
    return scores


def drop_low_scores(scores: Tensor, density: float) -> Tensor:
    """Step 4: per task, keep the scores at or above sorted(beta_i)[(1 - r) * D] and zero the others (in place)."""
    d = scores.shape[1]
    index = min(d - 1, int((1 - density) * d))  # 0-based index into the ascending sort
    for i in range(scores.shape[0]):
        threshold = torch.kthvalue(scores[i], index + 1).values
        scores[i] *= scores[i] >= threshold
    return scores


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    base = sp.check_inputs(NAME, base, experts)
    # tau_i = theta_i - theta_pre, one flat vector per task
    taus = torch.stack([(expert - base).reshape(-1) for expert in experts])
    if not bool(taus.any()):
        return base.clone()  # no task moved this tensor (a frozen weight): nothing to balance
    scores = drop_low_scores(balancing_scores(taus), params.density)
    # step 5: rescale, tau_m = sum_i beta^_i tau_i / sum_i beta^_i (entries every task dropped stay 0)
    total = scores.sum(dim=0)
    merged = (scores * taus).sum(dim=0) / torch.where(total > 0, total, torch.ones_like(total))
    # step 6: theta_m = theta_pre + lambda * tau_m
    return (base + params.lambda_ * merged.reshape(base.shape)).to(base.dtype)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Du et al. 2024, Parameter Competition Balancing for Model Merging, arXiv:2410.02396",
    base="required",
    whole_tensor=merge,
    description="intra- and inter-task balancing scores, drop low scores, score-weighted mean of task vectors",
)

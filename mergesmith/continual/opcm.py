"""OPCM: orthogonal projection-based continual merging.

Tang, Li, Shen, Zhan, Hu, Wang, Ye, Tao 2025, "Merging Models on the Fly Without Retraining: A Sequential Approach
to Scalable Continual Model Merging" (in the seeds). When expert t arrives, with base theta_0, previous merge
theta_{t-1} and its task vector tau_{t-1}^m = theta_{t-1} - theta_0:

1. per linear weight, the SVD tau_{t-1}^m = U S V^T spans the subspace the tasks merged so far live in;
2. the new task vector tau_t is expressed in that basis, P = U^T tau_t V, and the components that would interfere
   are removed: the diagonal (each merged direction's own singular pair) and the leading r x r block, where r is the
   number of singular values needed to pass a fraction ``alpha`` of the spectrum's mass (cumulative sum / sum >
   alpha); the cleaned vector is U P' V^T;
3. the merged task vector is (lambda_{t-1} tau_{t-1}^m + P'(tau_t)) / lambda_t (other tensors: the plain task
   vector, no projection);
4. lambda_t is chosen so the merged task vector keeps the average norm of the task vectors seen so far:
   lambda_t = || lambda_{t-1} tau_{t-1}^m + P'(tau_t) || / mean_i ||tau_i||, norms over the whole model.

Step 4 needs the norm of the whole unscaled sum before any tensor can be written; ``continual.add`` runs two
passes for it. Memory does not grow with t: only lambda_{t-1} and the sum of the task-vector norms are carried.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mergesmith.continual._spec import StepContext

NAME = "opcm"
PAPER = (
    'Tang et al. 2025, "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable '
    'Continual Model Merging"'
)


class OpcmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.5, ge=0, le=1, description="share of the merged spectrum whose block is projected out")


def split_rank(s: Tensor, alpha: float) -> int:
    """r: the first index where the cumulative share of the singular values exceeds ``alpha`` (step 2)."""
    total = s.sum()
    if not bool(total > 0):
        return 0
    above = (s.cumsum(0) / total) > alpha
    return int(above.float().argmax()) if bool(above.any()) else s.numel()


def project_out(previous_tv: Tensor, new_tv: Tensor, alpha: float) -> Tensor:
    """Step 2: tau_t without its components on the previous merge's diagonal and leading r x r singular block.

    With the full SVD, U P' V^T = tau_t - U D V^T where D holds the removed entries of P = U^T tau_t V; those
    entries involve only the first min(m, n) singular vectors, so the thin SVD suffices:
    U D V^T = U_r (U_r^T tau_t V_r) V_r^T + sum_{i >= r} (u_i^T tau_t v_i) u_i v_i^T.
    """
    u, s, vh = torch.linalg.svd(previous_tv, full_matrices=False)
    r = split_rank(s, alpha)
    p = u.T @ new_tv @ vh.T  # [k, k] block of U^T tau_t V, k = min(m, n)
    removed = torch.zeros_like(p)
    removed[:r, :r] = p[:r, :r]
    diagonal = torch.arange(r, p.shape[0])
    removed[diagonal, diagonal] = p[diagonal, diagonal]
    return new_tv - u @ removed @ vh


def unscaled_step(previous_tv: Tensor, new_tv: Tensor, lambda_prev: float, alpha: float, is_matrix: bool) -> Tensor:
    """Step 3 before the division by lambda_t: lambda_{t-1} tau_{t-1}^m + P'(tau_t) (P' = identity off matrices)."""
    cleaned = project_out(previous_tv, new_tv, alpha) if is_matrix else new_tv
    return lambda_prev * previous_tv + cleaned


def next_lambda(unscaled_norm: float, mean_task_norm: float) -> float:
    """Step 4: lambda_t = ||lambda_{t-1} tau^m + P'(tau_t)|| / mean_i ||tau_i||."""
    if mean_task_norm <= 0:
        return 1.0
    return unscaled_norm / mean_task_norm if unscaled_norm > 0 else 1.0


def start(base: Tensor, expert: Tensor, params: OpcmParams) -> Tensor:
    return expert


def step(base: Tensor, previous: Tensor, new: Tensor, params: OpcmParams, ctx: StepContext) -> Tensor:
    """theta_0 + lambda_{t-1} tau^m + P'(tau_t): the merge before the whole-model division by lambda_t."""
    return base + unscaled_step(previous - base, new - base, ctx.scale, params.alpha, ctx.is_matrix)

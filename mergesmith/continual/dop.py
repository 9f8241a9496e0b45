"""DOP: dual orthogonal projections for data-free continual merging.

"Continual Model Merging without Data: Dual Projections for Balancing Stability and Plasticity" (NeurIPS 2025, in
the seeds). Adding expert t to the merge theta_{t-1}, each linear weight W is found by optimisation, data-free:

- every model i in {previous merge, new expert} has a task matrix tau_i = W_i - W_0 with SVD U_i S_i V_i^T, cut to
  the r_i leading triplets that hold a share ``svd_epsilon`` of the spectrum's mass (the task's principal subspace);
- the loss of model i measures how far W moves from W_i inside that subspace, from both sides (the "dual"
  projections, on the input space V and on the output space U), weighted by the singular values:
  L_i(W) = || S_i U_i^T (W - W_i) ||_F^2 + || (W - W_i) V_i S_i ||_F^2;
- stability (the previous merge) and plasticity (the new expert) are balanced as a two-objective problem by MGDA
  (Sener & Koltun 2018): each step takes the min-norm convex combination of the loss-normalised gradients,
  smoothed by an exponential moving average that starts at (alpha, 1 - alpha); Adam from W = (W_{t-1} + W_t) / 2.

Tensors that are not linear weights (biases, norms, embeddings) are averaged, (theta_{t-1} + theta_t) / 2, as in the
authors' code. The gradient of L_i is closed form, grad_i = 2 (U_i S_i^2 U_i^T Delta + Delta V_i S_i^2 V_i^T) with
Delta = W - W_i, and L_i = <Delta, grad_i> / 2, so no autograd graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mergesmith.continual._spec import StepContext

NAME = "dop"
PAPER = '"Continual Model Merging without Data: Dual Projections for Balancing Stability and Plasticity", NeurIPS 2025'


class DopParams(BaseModel):
    """Defaults of the authors' configuration."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-4, gt=0, le=1, description="Adam learning rate")
    num_steps: int = Field(200, ge=0, le=100_000, description="Adam steps per linear weight")
    alpha: float = Field(0.8, ge=0, le=1, description="initial weight of the previous merge (stability)")
    ema_beta: float = Field(0.99, ge=0, le=1, description="EMA factor of the MGDA weights")
    svd_epsilon: float = Field(0.99999, ge=0, le=1, description="share of the spectrum kept per task subspace")
    mgda: bool = Field(True, description="balance the two losses by MGDA (false: fixed alpha, 1 - alpha)")
    ema: bool = Field(True, description="smooth the MGDA weights by an EMA starting at (alpha, 1 - alpha)")


def principal_rank(s: Tensor, epsilon: float) -> int:
    """r: the number of leading singular values before the cumulative share reaches ``epsilon`` (searchsorted)."""
    total = s.sum()
    if not bool(total > 0):
        return 0
    return int(torch.searchsorted(s.cumsum(0) / total, torch.tensor(epsilon, dtype=s.dtype)))


@dataclass
class _Subspace:
    """The weighted principal subspace of one task matrix: P = U_r S_r and Q = V_r S_r."""

    target: Tensor
    p: Tensor
    q: Tensor
    dense: tuple[Tensor, Tensor] | None  # (P P^T, Q Q^T) when that is cheaper than the low-rank products

    def gradient(self, w: Tensor) -> tuple[Tensor, float]:
        """(grad L_i, L_i) at W."""
        delta = w - self.target
        if self.dense is not None:
            a, b = self.dense
            grad = 2 * (a @ delta + delta @ b)
        else:
            grad = 2 * (self.p @ (self.p.T @ delta) + (delta @ self.q) @ self.q.T)
        return grad, float((delta * grad).sum()) / 2


def _subspace(base: Tensor, weight: Tensor, epsilon: float) -> _Subspace:
    u, s, vh = torch.linalg.svd(weight - base, full_matrices=False)
    r = principal_rank(s, epsilon)
    p, q = u[:, :r] * s[:r], vh[:r].T * s[:r]
    m, n = weight.shape
    # low-rank products cost 4 m n r per gradient, the dense Gram forms m n (m + n)
    dense = (p @ p.T, q @ q.T) if 4 * r > m + n else None
    return _Subspace(weight, p, q, dense)


def min_norm_pair(g1: Tensor, g2: Tensor) -> float:
    """gamma in [0, 1] minimising ||gamma g1 + (1 - gamma) g2|| (the two-task MGDA step, closed form)."""
    v11, v12, v22 = float((g1 * g1).sum()), float((g1 * g2).sum()), float((g2 * g2).sum())
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return (v22 - v12) / (v11 + v22 - 2 * v12)


def merge_matrix(base: Tensor, previous: Tensor, new: Tensor, settings: DopParams) -> Tensor:
    """The DOP weight for one linear layer: Adam on the MGDA-balanced dual-projection losses."""
    subspaces = [_subspace(base, previous, settings.svd_epsilon), _subspace(base, new, settings.svd_epsilon)]
    w = ((previous + new) / 2).clone().requires_grad_(True)
    weights = [settings.alpha, 1 - settings.alpha]
    optimizer = torch.optim.Adam([w], lr=settings.lr)
    with torch.no_grad():
        return _descend(w, subspaces, weights, optimizer, settings)


def _descend(w: Tensor, subspaces: list[_Subspace], weights: list[float], optimizer, settings: DopParams) -> Tensor:
    for _ in range(settings.num_steps):
        grads, losses = zip(*(sub.gradient(w) for sub in subspaces))
        if settings.mgda:
            # normalise each gradient by its loss, then the min-norm combination (Sener & Koltun 2018, Alg. 2)
            normed = [g / (loss if loss > 0 else 1.0) for g, loss in zip(grads, losses)]
            gamma = min_norm_pair(normed[0], normed[1])
            solution = [gamma, 1 - gamma]
            if settings.ema:
                weights = [settings.ema_beta * e + (1 - settings.ema_beta) * s for e, s in zip(weights, solution)]
            else:
                weights = solution
        w.grad = weights[0] * grads[0] + weights[1] * grads[1]
        optimizer.step()
    return w.detach()


def merge_other(previous: Tensor, new: Tensor) -> Tensor:
    """Tensors that are not linear weights: the mean of the previous merge and the new expert."""
    return (previous + new) / 2


def start(base: Tensor, expert: Tensor, params: DopParams) -> Tensor:
    return expert


def step(base: Tensor, previous: Tensor, new: Tensor, params: DopParams, ctx: StepContext) -> Tensor:
    if ctx.is_matrix:
        return merge_matrix(base, previous, new, params)
    return merge_other(previous, new)

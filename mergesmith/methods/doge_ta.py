"""DOGE-TA: task arithmetic plus a data-free, projected-gradient modification of the task vectors.

Wei, Tang, Shen, Hu, Yuan, Cao 2025, "Modeling Multi-Task Model Merging as Adaptive Projective Gradient Descent",
ICML 2025, arXiv:2501.01230 (in /work/shared/seeds). Data-free variant, per 2-D weight matrix:

1. Adaptive coefficients (Sec. 4.3, "merging coefficients as adaptive learning rates", task-aware and training-free):
   lambda_i = eta / ||tau_i||_F for each task i.
2. Objective (Sec. 4.1, the gap between the merged model and each task model, decomposed and reconstituted with
   the task vectors standing in for the task inputs): the merged vector is sum_i lambda_i (tau_i + delta) =
   tau_TA + Lambda delta (tau_TA = sum_i lambda_i tau_i, Lambda = sum_i lambda_i), and each output neuron r uses
   its own row tau_j[r] as the proxy of task j's inputs:
       L(delta) = sum_j sum_r < tau_j[r], tau_j[r] - tau_TA[r] - Lambda delta[r] >^2.
3. Shared subspace (Sec. 4.2): the top r = min(out, in) // T left singular vectors of each tau_i, side by side,
   are orthogonalised by an SVD; the first min(out, in) // ``subspace`` of the result span the subspace S shared by
   the tasks. Projective gradient descent: each gradient g becomes g - S S^T g, so delta leaves the shared
   knowledge alone; Adam (lr ``lr``) for ``steps`` steps from delta = 0.
4. Merge: each task vector plus delta is trimmed to the ``density`` fraction of tau_i's largest magnitudes (as
   TIES' trim) and theta = theta_0 + sum_i lambda_i * mask_i * (tau_i + delta).

The steps, defaults (eta = 0.07, subspace = 6, density = 0.3, 400 Adam steps at lr 1e-4) and the row-wise proxy
follow the authors' code as packaged in fusion-bench 0.2.33 (``doge_ta``); two differences, both documented in the
parity test: the trim threshold is taken per tensor (fusion-bench takes it over all matrices of the model at once,
which a streaming merge cannot), and tensors that are not 2-D matrices are merged as the average of the task
vectors (fusion-bench leaves them at theta_0). Float32, closed-form gradient, fixed operation order, one intra-op
thread (``_adam.one_thread``): same inputs, same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _spectral as sp, _task_vectors as tv
from mergesmith.methods._adam import Adam, one_thread
from mergesmith.methods._protocol import Rng, check_shapes
from mergesmith.methods._spec import MAX_STEPS, MethodSpec, at_least, between, param

NAME = "doge_ta"


@dataclass(frozen=True)
class Params:
    lambda_: float = param(0.07, alias="lambda", doc="eta in lambda_i = eta / ||tau_i||_F")
    subspace: int = param(6, within=at_least(1), doc="the shared subspace keeps min(out, in) // subspace directions")
    density: float = param(
        0.3, within=between(0, 1, open_low=True), doc="fraction of each task vector's largest-magnitude entries kept"
    )
    steps: int = param(400, within=between(0, MAX_STEPS), doc="Adam steps per 2-D matrix")
    lr: float = param(1e-4, doc="Adam learning rate")


def adaptive_lambdas(taus: Sequence[Tensor], eta: float) -> list[Tensor]:
    """lambda_i = eta / ||tau_i||_F (step 1); 0 for a zero task vector."""
    out = []
    for t in taus:
        norm = torch.linalg.vector_norm(t)
        out.append(eta / norm if float(norm) > 0 else torch.zeros((), dtype=t.dtype))
    return out


def shared_basis(taus: Sequence[Tensor], subspace: int) -> Tensor:
    """S [out, s]: the subspace shared by the tasks (step 3)."""
    rows, cols = taus[0].shape
    k = min(rows, cols)
    r = k // len(taus)
    stacked = taus[0].new_zeros(rows, k)
    for i, t in enumerate(taus):
        u, _, _ = torch.linalg.svd(t, full_matrices=False)
        stacked[:, i * r : (i + 1) * r] = u[:, :r]  # each task's top-r left singular vectors
    u_shared, _, _ = torch.linalg.svd(stacked, full_matrices=False)
    return u_shared[:, : k // subspace].contiguous()


def doge_loss(delta: Tensor, taus: Sequence[Tensor], lambdas: Sequence[Tensor]) -> float:
    """L(delta) of step 2, in fp64 (for reports and tests)."""
    tau_ta = sum(float(lam) * t.double() for t, lam in zip(taus, lambdas))
    big_lambda = sum(float(lam) for lam in lambdas)
    merged = tau_ta + big_lambda * delta.double()
    return float(sum(((t.double() * (t.double() - merged)).sum(dim=1)).square().sum() for t in taus))


def optimise_delta(taus: Sequence[Tensor], lambdas: Sequence[Tensor], basis: Tensor, steps: int, lr: float) -> Tensor:
    """delta by projective gradient descent with Adam (steps 2 and 3), from delta = 0."""
    tau_ta = tv.sum_in_order(lam * t for t, lam in zip(taus, lambdas))
    big_lambda = tv.sum_in_order(list(lambdas))
    stacked = torch.stack(list(taus))  # [T, out, in]
    own = (stacked * stacked).sum(dim=2)  # <tau_j[r], tau_j[r]>, [T, out]
    delta = torch.zeros_like(taus[0])
    optimizer = Adam(delta, lr=lr)
    for _ in range(steps):
        merged = tau_ta + big_lambda * delta
        # s_j[r] = <tau_j[r], tau_j[r] - merged[r]>; dL/ddelta = -2 Lambda sum_j s_j[r] tau_j[r]
        s = own - torch.einsum("tri,ri->tr", stacked, merged)
        grad = torch.einsum("tr,tri->ri", s, stacked).mul_(-2.0 * big_lambda)
        grad.sub_(basis @ (basis.T @ grad))  # project out the shared subspace: g - S S^T g
        optimizer.step(grad)
    return delta


def top_magnitude_mask(tau: Tensor, density: float) -> Tensor:
    """Keep |tau| >= its (numel - int(density * numel))-th smallest value, as the authors' code (fusion-bench's
    ``topk_values_mask``): int(density * numel) + 1 entries without ties; density 1 keeps everything."""
    numel = tau.numel()
    keep = int(numel * density)
    if keep >= numel:
        return torch.ones_like(tau, dtype=torch.bool)
    magnitude = tau.abs().reshape(-1)
    threshold = magnitude.kthvalue(numel - keep).values  # the (numel - keep)-th smallest, as fusion-bench
    return tau.abs() >= threshold


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    base = tv.require_base(NAME, base)
    check_shapes(NAME, base, experts)
    if not experts:
        return base.clone()
    if base.dim() != 2:
        stacked = tv.stacked_task_vectors(base, experts)
        return (base + tv.sum_in_order(stacked) / len(experts)).to(base.dtype)
    taus = [e.float() - base.float() for e in experts]
    if not sp.all_finite(taus):
        return sp.undefined_like(base)  # the shared subspace is an SVD of the task vectors
    if not any(bool((t != 0).any()) for t in taus):
        return base.clone()  # every task vector is zero (e.g. frozen embeddings): nothing to merge or optimise
    lambdas = adaptive_lambdas(taus, params.lambda_)
    with one_thread():
        basis = shared_basis(taus, params.subspace)
        delta = optimise_delta(taus, lambdas, basis, params.steps, params.lr)
    # step 4: theta_0 + sum_i lambda_i * mask_i * (tau_i + delta)
    merged = tv.sum_in_order(
        lam * ((t + delta) * top_magnitude_mask(t, params.density).to(t.dtype)) for t, lam in zip(taus, lambdas)
    )
    return (base + merged.to(base.dtype)).to(base.dtype)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    whole_tensor=merge,
    paper="Wei et al. 2025, Modeling Multi-Task Model Merging as Adaptive Projective Gradient Descent, "
    "arXiv:2501.01230",
    base="required",
    description="adaptive lambda_i = eta/||tau_i||, Adam on a data-free surrogate with gradients projected out of "
    "the tasks' shared subspace, then trimmed task arithmetic",
    non_matrix="merged as the average of the task vectors (the objective is defined on matrices; fusion-bench "
    "leaves them at the base)",
)

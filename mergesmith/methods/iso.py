"""Iso-C and Iso-CTS: isotropic merging, the merged task matrix with a flat spectrum.

Marczak, Magistri, Cygert, Twardowski, Bagdanov, van de Weijer 2025, "No Task Left Behind: Isotropic Model Merging
with Common and Task-Specific Subspaces", ICML 2025, arXiv:2502.04959.

Iso-C (Sec. 4.1), per 2-D weight:
1. task arithmetic: Delta = sum_t tau_t, tau_t = theta_t - theta_base;
2. SVD: Delta = U S V^T;
3. isotropic scaling: every singular value becomes their mean, sigma_bar = (1/r) sum_i sigma_i, so no task's
   directions are dominated by another's: Delta_iso = sigma_bar U V^T;
4. theta = theta_base + alpha * Delta_iso.

Iso-CTS (Sec. 4.2, Alg. 1) adds task-specific directions that the common subspace misses:
1. common subspace: the top k singular vectors of Delta, k = int(r * ``common_space_fraction``), then adjusted so
   that the r - k remaining directions split evenly over the T tasks (r - k = round((r - k) / T) * T, as the
   authors' code);
2. task-specific subspaces: project each task matrix out of the common subspace, tau_t' = tau_t - U_k U_k^T tau_t,
   and keep its top s = (r - k) / T singular triplets;
3. stack [U_k, U'_1,s ... U'_T,s] (and the same for V) and orthogonalise each stack by orthogonal Procrustes,
   U_perp = P Q^T from its SVD P Sigma Q^T;
4. isotropic scaling over the combined spectrum: sigma_bar = mean of the k common and T * s task singular values;
   Delta_iso = sigma_bar U_perp V_perp^T, theta = theta_base + alpha * Delta_iso.

Tensors that are not 2-D matrices are merged by the mean of their task vectors (the paper's code and FusionBench);
the plan says so once per merge.

A rank-deficient Delta (frozen or untouched rows) has singular vectors for its zero singular values that are not
unique; the flattened spectrum covers only the numerically nonzero ones (``_spectral``), so the result does not
depend on LAPACK's choice of null-space basis. With full-rank task matrices this is the paper's definition exactly.

Parameters:
- ``alpha`` (default 1.0): scale of Delta_iso (the paper tunes it on validation data; around 1-1.5 for ViT-B/32).
- ``common_space_fraction`` (Iso-CTS, default 0.8, in [0, 1]): fraction of the rank given to the common subspace
  (0.8 in the paper). 1 gives Iso-C.

Whole-tensor; deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _spectral as sp, _task_vectors as tv
from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, between, param

C_NAME = "iso_c"
CTS_NAME = "iso_cts"
PAPER = (
    "Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces, "
    "arXiv:2502.04959"
)


@dataclass(frozen=True)
class CParams:
    alpha: float = param(1.0, doc="scale of the isotropic merged task matrix")


@dataclass(frozen=True)
class CTSParams:
    alpha: float = param(1.0, doc="scale of the isotropic merged task matrix")
    common_space_fraction: float = param(
        0.8, within=between(0, 1), doc="fraction of the rank kept for the common subspace"
    )


def isotropic(u: Tensor, s: Tensor, vh: Tensor, tol: float) -> Tensor:
    """sigma_bar U V^T over the singular values above ``tol`` (Iso-C step 3); zero if there are none."""
    rank = int((s > tol).sum())
    if rank == 0:
        return u.new_zeros((u.shape[0], vh.shape[1]))
    return s[:rank].mean() * (u[:, :rank] @ vh[:rank])


def iso_c_matrix(taus: Sequence[Tensor]) -> Tensor:
    tol = sp.tolerance(sp.problem_scale(taus), taus[0].shape, taus[0].dtype)
    # step 1: Delta = sum_t tau_t;  step 2: its SVD;  step 3: flatten the spectrum
    return isotropic(*sp.svd(tv.sum_in_order(taus)), tol)


def subspace_sizes(rank: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(k, s): k common directions and s per task, with k + T * s = r (Iso-CTS step 1, as the authors' code)."""
    common = int(rank * common_space_fraction)
    task_total = min(rank, round((rank - common) / n_tasks) * n_tasks)
    return rank - task_total, task_total // n_tasks


def iso_cts_matrix(taus: Sequence[Tensor], common_space_fraction: float) -> Tensor:
    tol = sp.tolerance(sp.problem_scale(taus), taus[0].shape, taus[0].dtype)
    delta = tv.sum_in_order(taus)
    k, per_task = subspace_sizes(min(delta.shape), len(taus), common_space_fraction)
    # step 1: the common subspace, the top k singular triplets of Delta
    common_u, common_s, common_vh = sp.truncated_svd(delta, k, tol)
    u_parts, s_parts, vh_parts = [common_u], [common_s], [common_vh]
    if per_task > 0:
        for tau in taus:
            # step 2: what the common subspace misses of this task, tau' = tau - U_k U_k^T tau, and its top s triplets
            u_t, s_t, vh_t = sp.truncated_svd(tau - common_u @ (common_u.T @ tau), per_task, tol)
            u_parts.append(u_t)
            s_parts.append(s_t)
            vh_parts.append(vh_t)
    spectrum = torch.cat(s_parts)
    if spectrum.numel() == 0:
        return torch.zeros_like(delta)
    # step 3: stack the subspaces and orthogonalise each stack (orthogonal Procrustes)
    u_perp = sp.orthogonal_factor(torch.cat(u_parts, dim=1))
    vh_perp = sp.orthogonal_factor(torch.cat(vh_parts, dim=0))
    # step 4: one singular value for every direction, the mean of the combined spectrum
    return spectrum.mean() * (u_perp @ vh_perp)


def merge_c(base: Tensor | None, experts: Sequence[Tensor], params: CParams, rng: Rng | None = None) -> Tensor:
    base = sp.check_inputs(C_NAME, base, experts)
    taus = sp.task_vectors(base, experts)
    if base.dim() != 2:
        merged = sp.mean_task_vector(taus)
    elif not sp.all_finite(taus):
        merged = sp.undefined_like(base)
    else:
        merged = iso_c_matrix(taus)
    return (base + params.alpha * merged).to(base.dtype)  # step 4: theta_base + alpha * Delta_iso


def merge_cts(base: Tensor | None, experts: Sequence[Tensor], params: CTSParams, rng: Rng | None = None) -> Tensor:
    base = sp.check_inputs(CTS_NAME, base, experts)
    taus = sp.task_vectors(base, experts)
    if base.dim() != 2:
        merged = sp.mean_task_vector(taus)
    elif not sp.all_finite(taus):
        merged = sp.undefined_like(base)
    else:
        merged = iso_cts_matrix(taus, params.common_space_fraction)
    return (base + params.alpha * merged).to(base.dtype)


C_SPEC = MethodSpec(
    name=C_NAME,
    params=CParams,
    paper=PAPER,
    base="required",
    whole_tensor=merge_c,
    description="per 2-D weight: the task-arithmetic sum with its singular values replaced by their mean",
    non_matrix=sp.NON_MATRIX_MEAN,
)
CTS_SPEC = MethodSpec(
    name=CTS_NAME,
    params=CTSParams,
    paper=PAPER,
    base="required",
    whole_tensor=merge_cts,
    description="Iso-C on a common subspace plus each task's own directions, orthogonalised, flat spectrum",
    non_matrix=sp.NON_MATRIX_MEAN,
)
SPECS = (C_SPEC, CTS_SPEC)

"""TSV-M: merge the task singular vectors of each layer after decorrelating them.

Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri, Rodola 2025, "Task Singular Vectors: Reducing Task
Interference in Model Merging", CVPR 2025, arXiv:2412.00081. Sec. 4 (TSV-Merge), per 2-D weight of a layer:

1. task matrices Delta_t = theta_t - theta_base and their SVDs Delta_t = U_t S_t V_t^T (Sec. 3);
2. low-rank approximation: each task keeps its top k singular triplets, k = ``sv_reduction`` * min(m, n) with
   ``sv_reduction`` = 1/T by default, so the T tasks together fill the layer's rank (Sec. 4, "compression");
3. concatenation: U = [U_1,k ... U_T,k], S = blockdiag(S_1,k ... S_T,k), V = [V_1,k ... V_T,k];
4. decorrelation: the task singular vectors of different tasks interfere through U^T U and V^T V; replace U and V
   by the nearest matrices with orthonormal columns, U_perp = P_U Q_U^T from the SVD U = P_U Sigma_U Q_U^T and
   likewise V_perp (orthogonal Procrustes);
5. merged task matrix M = U_perp S V_perp^T, and theta = theta_base + alpha * M.

Tensors that are not 2-D matrices (biases, norms, scalars) have no singular vectors: the paper, its code and
FusionBench merge them by the mean of their task vectors, theta = theta_base + alpha * (1/T) sum_t tau_t; the plan
says so once per merge.

Parameters:
- ``alpha`` (default 1.0): scale of the merged task matrix (the paper's alpha; 1.0 in its experiments).
- ``sv_reduction`` (default 1/T): fraction of each task matrix's rank kept, k = max(1, int(min(m, n) *
  sv_reduction)) as in the authors' code. Beyond 1/T the T * k concatenated vectors outnumber the layer's rank and
  cannot all be orthonormal; the decorrelation then keeps the partial isometry onto their span
  (``_spectral.orthogonal_factor``). With ``sv_reduction`` 1 and one task, or T identical tasks, M = Delta exactly.

Whole-tensor (each SVD needs the whole matrix). Deterministic: no random step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _spectral as sp
from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import MethodSpec, between, param

NAME = "tsv_m"


@dataclass(frozen=True)
class Params:
    alpha: float = param(1.0, doc="scale of the merged task matrix")
    sv_reduction: float | None = param(
        None,
        within=between(0, 1, open_low=True),
        doc="fraction of each task matrix's rank kept (default 1/T: the tasks share the rank)",
    )


def rank_per_task(shape: Sequence[int], n_tasks: int, sv_reduction: float | None) -> int:
    """k = int(min(m, n) * fraction), at least 1 (the authors' code and FusionBench truncate the same way)."""
    fraction = 1 / n_tasks if sv_reduction is None else sv_reduction
    return max(1, int(min(shape) * fraction))


def merged_task_matrix(taus: Sequence[Tensor], k: int) -> Tensor:
    """Steps 1-5 on one 2-D weight: M = U_perp S V_perp^T from the top-k singular triplets of every task matrix."""
    m, n = taus[0].shape
    tol = sp.tolerance(sp.problem_scale(taus), (m, n), taus[0].dtype)
    u_cat = taus[0].new_zeros((m, len(taus) * k))
    s_cat = taus[0].new_zeros(len(taus) * k)
    vh_cat = taus[0].new_zeros((len(taus) * k, n))
    for t, tau in enumerate(taus):
        # step 1: Delta_t = U_t S_t V_t^T;  step 2: keep its top k triplets (fewer if its rank is lower: zero columns)
        u, s, vh = sp.truncated_svd(tau, k, tol)
        cols = slice(t * k, t * k + s.numel())
        # step 3: concatenate U, S and V task after task
        u_cat[:, cols] = u
        s_cat[cols] = s
        vh_cat[cols] = vh
    # step 4: decorrelate, U_perp = P_U Q_U^T and V_perp = P_V Q_V^T (orthogonal Procrustes)
    u_perp = sp.orthogonal_factor(u_cat)
    vh_perp = sp.orthogonal_factor(vh_cat)
    # step 5: M = U_perp S V_perp^T
    return (u_perp * s_cat) @ vh_perp


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None) -> Tensor:
    base = sp.check_inputs(NAME, base, experts)
    taus = sp.task_vectors(base, experts)
    if base.dim() != 2:
        # not a matrix: the mean of the task vectors, as the paper's code does
        merged = sp.mean_task_vector(taus)
    elif not sp.all_finite(taus):
        merged = sp.undefined_like(base)
    else:
        merged = merged_task_matrix(taus, rank_per_task(base.shape, len(taus), params.sv_reduction))
    return (base + params.alpha * merged).to(base.dtype)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference in Model Merging, arXiv:2412.00081",
    base="required",
    whole_tensor=merge,
    description="per 2-D weight: top-k singular vectors of each task vector, decorrelated (Procrustes), summed",
    non_matrix=sp.NON_MATRIX_MEAN,
)

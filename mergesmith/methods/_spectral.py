"""Shared steps of the spectral data-free methods (TSV-M, Iso-C, Iso-CTS, CART): task matrices, truncated SVDs,
orthogonalisation, and the task-arithmetic mean these papers use for tensors that are not 2-D matrices.

Notation: tau_t = theta_t - theta_base (Ilharco et al. 2023). For a 2-D weight, A = U diag(s) V^T is its thin SVD
(``torch.linalg.svd(..., full_matrices=False)``, s in descending order).

Rank: singular values at or below a tolerance (numpy's ``matrix_rank`` rule, s_max * max(m, n) * eps, with s_max
the largest task matrix's norm: ``problem_scale``) are treated as zero. Their singular vectors are not unique (LAPACK
returns an arbitrary basis of the null space), so no step lets them shape the result: a task matrix of low rank
contributes only its nonzero singular triplets, the orthogonal factor of a rank-deficient matrix is the partial
isometry on its range (``orthogonal_factor``), and a flattened spectrum covers the nonzero singular values only.
For task matrices of full numerical rank (every real fine-tune) this is exactly the papers' definition; FusionBench
and the authors' code instead carry the arbitrary null-space vectors along (e.g. a frozen, all-zero task matrix
still bends the other tasks' directions in TSV-M's orthogonalisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import check_shapes

NON_MATRIX_MEAN = "they are merged by the mean of the task vectors (task arithmetic with lambda 1/T), as the paper does"


def check_inputs(method: str, base: Tensor | None, experts: Sequence[Tensor]) -> Tensor:
    """The base tensor, checked: a base is given, at least one expert, every expert shaped like the base."""
    base = tv.require_base(method, base)
    if not experts:
        raise ValueError(f"{method} needs at least one fine-tuned model besides the base")
    check_shapes(method, base, experts)
    return base


def all_finite(tensors: Sequence[Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def undefined_like(tensor: Tensor) -> Tensor:
    """The result of a spectral step on a matrix with NaN/Inf: the SVD of such a matrix is undefined (LAPACK refuses
    it), so every entry of the result is NaN, as any arithmetic on a NaN gives NaN. The engine has already reported
    the input (a warning, or a refusal with --strict)."""
    return torch.full_like(tensor, math.nan)


def task_vectors(base: Tensor, experts: Sequence[Tensor]) -> list[Tensor]:
    """tau_t = theta_t - theta_base for every expert (Ilharco et al. 2023, Sec. 2)."""
    return [expert - base for expert in experts]


def mean_task_vector(taus: Sequence[Tensor]) -> Tensor:
    """(1/T) sum_t tau_t, summed expert by expert in order."""
    return tv.sum_in_order(taus) / len(taus)


def tolerance(scale: float, shape: Sequence[int], dtype: torch.dtype) -> float:
    """Singular values at or below this are numerically zero, for matrices whose norm is at most ``scale`` (numpy
    ``matrix_rank``'s rule, s_max * max(m, n) * eps, with the problem's scale in place of s_max)."""
    return scale * max(shape) * torch.finfo(dtype).eps


def problem_scale(taus: Sequence[Tensor]) -> float:
    """An upper bound of every task matrix's largest singular value (their largest Frobenius norm): one tolerance for
    all the SVDs of a merge, so a part that is zero up to rounding (a projection that removed everything, a sum of
    cancelling tasks) is treated as zero rather than as directions of its own."""
    return max(float(torch.linalg.matrix_norm(tau)) for tau in taus)


def svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD: U [m, r], s [r] (descending), Vh [r, n] with r = min(m, n).

    Much taller than wide (an embedding matrix), the SVD of the triangular factor of a QR decomposition is several
    times faster (A = QR, R = U_R S V^T, U = Q U_R); much wider, the same on the transpose. A zero matrix returns zero
    factors: its singular vectors are arbitrary and every caller ignores them.
    """
    m, n = matrix.shape
    if not bool(matrix.any()):
        r = min(m, n)
        return matrix.new_zeros((m, r)), matrix.new_zeros(r), matrix.new_zeros((r, n))
    if n > 2 * m:
        v, s, uh = svd(matrix.T)
        return uh.T, s, v.T
    if m > 2 * n:
        q, r = torch.linalg.qr(matrix)
        u_r, s, vh = _lapack_svd(r)
        return q @ u_r, s, vh
    return _lapack_svd(matrix)


def _lapack_svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torch.linalg.svd, retried in float64 when LAPACK's divide-and-conquer fails to converge.

    gesdd can fail on matrices whose singular values cluster, e.g. TSV-M's concatenation of orthonormal bases (all
    near 1); float64 separates them enough. The result is cast back to the input dtype.
    """
    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        if matrix.dtype == torch.float64:
            raise
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        return u.to(matrix.dtype), s.to(matrix.dtype), vh.to(matrix.dtype)


def truncated_svd(matrix: Tensor, k: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """The top singular triplets, at most k of them, without those whose singular value is at or below ``tol``."""
    u, s, vh = svd(matrix)
    kept = min(k, int((s > tol).sum()))
    return u[:, :kept], s[:kept], vh[:kept]


def numerical_rank(s: Tensor, shape: Sequence[int]) -> int:
    """Rank from singular values ``s`` of a matrix of ``shape``, relative to its own largest singular value."""
    if s.numel() == 0:
        return 0
    return int((s > tolerance(float(s.max()), shape, s.dtype)).sum())


def orthogonal_factor(matrix: Tensor) -> Tensor:
    """The orthogonal factor of the polar decomposition, U V^T from the SVD ``matrix`` = U S V^T.

    It is the matrix with orthonormal columns (rows, if wider than tall) nearest to ``matrix`` in Frobenius norm
    (orthogonal Procrustes), the decorrelation step of TSV-M (Gargiulo et al. 2025, Sec. 4) and Iso-CTS
    (Marczak et al. 2025, Alg. 1). For a rank-deficient matrix (zero columns left by a task of lower rank, duplicated
    directions from identical tasks) only the singular vectors of its nonzero singular values are used, the partial
    isometry onto its range, so the result does not depend on LAPACK's choice of null-space basis; a zero matrix
    gives zeros.
    """
    u, s, vh = svd(matrix)
    rank = numerical_rank(s, matrix.shape)
    return u[:, :rank] @ vh[:rank]


def low_rank(matrix: Tensor, k: int) -> Tensor:
    """The best rank-k approximation U_k diag(s_k) V_k^T (Eckart-Young), from the top k singular triplets."""
    u, s, vh = svd(matrix)
    k = min(k, s.numel())
    return (u[:, :k] * s[:k]) @ vh[:k]

"""Shared steps of the spectral data-free methods (TSV-M, Iso-C, Iso-CTS, CART): task matrices, truncated SVDs,
orthogonalisation, and the task-arithmetic mean these papers use for tensors that are not 2-D matrices.

Notation: tau_t = theta_t - theta_base (Ilharco et al. 2023). For a 2-D weight, A = U diag(s) V^T is its thin SVD
(``torch.linalg.svd(..., full_matrices=False)``, s in descending order).

Rank: singular values at or below ``rank_tolerance`` (numpy's ``matrix_rank`` rule: s_max * max(m, n) * eps) are
treated as zero. Their singular vectors are not unique (LAPACK returns an arbitrary basis of the null space), so
no step below lets them shape the result: the orthogonal factor of a rank-deficient matrix is the partial isometry
on its range (``orthogonal_factor``), and a flattened spectrum covers the nonzero singular values only. For
matrices of full numerical rank (every real fine-tune) this is exactly the papers' definition.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mergesmith.methods import _task_vectors as tv

NON_MATRIX_MEAN = "they are merged by the mean of the task vectors (task arithmetic with lambda 1/T), as the paper does"


def check_inputs(method: str, base: Tensor | None, experts: Sequence[Tensor]) -> Tensor:
    """The base tensor, checked: a base is given, at least one expert, every expert shaped like the base."""
    base = tv.require_base(method, base)
    if not experts:
        raise ValueError(f"{method} needs at least one fine-tuned model besides the base")
    tv.check_shapes(method, base, experts)
    return base


def task_vectors(base: Tensor, experts: Sequence[Tensor]) -> list[Tensor]:
    """tau_t = theta_t - theta_base for every expert (Ilharco et al. 2023, Sec. 2)."""
    return [expert - base for expert in experts]


def mean_task_vector(taus: Sequence[Tensor]) -> Tensor:
    """(1/T) sum_t tau_t, summed expert by expert in order."""
    return tv.sum_in_order(taus) / len(taus)


def rank_tolerance(s: Tensor, shape: Sequence[int]) -> float:
    """Singular values at or below this are numerically zero (numpy ``matrix_rank``'s default rule)."""
    if s.numel() == 0:
        return 0.0
    return float(s.max()) * max(shape) * torch.finfo(s.dtype).eps


def svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD: U [m, r], s [r] (descending), Vh [r, n] with r = min(m, n)."""
    return torch.linalg.svd(matrix, full_matrices=False)


def numerical_rank(s: Tensor, shape: Sequence[int]) -> int:
    return int((s > rank_tolerance(s, shape)).sum())


def orthogonal_factor(matrix: Tensor) -> Tensor:
    """The orthogonal factor of the polar decomposition, U V^T from the SVD ``matrix`` = U S V^T.

    It is the matrix with orthonormal columns (rows, if wider than tall) nearest to ``matrix`` in Frobenius norm
    (orthogonal Procrustes), the decorrelation step of TSV-M (Gargiulo et al. 2025, Sec. 4, Eq. 6) and Iso-CTS
    (Marczak et al. 2025, Alg. 1). For a rank-deficient matrix only the singular vectors of its nonzero singular values
    are used (the partial isometry onto its range), so the result does not depend on LAPACK's choice of null-space
    basis; a zero matrix gives zeros.
    """
    u, s, vh = svd(matrix)
    rank = numerical_rank(s, matrix.shape)
    if rank == 0:
        return torch.zeros_like(matrix)
    return u[:, :rank] @ vh[:rank]


def low_rank(matrix: Tensor, k: int) -> Tensor:
    """The best rank-k approximation U_k diag(s_k) V_k^T (Eckart-Young), from the top k singular triplets."""
    u, s, vh = svd(matrix)
    k = min(k, s.numel())
    return (u[:, :k] * s[:k]) @ vh[:k]


def check_fraction(method: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value <= 1.0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{method}: parameter {name!r} must be in {interval}, got {value}")

"""Pure statistics of task vectors (tau_i = expert_i - base), one tensor at a time.

Everything is a sum over tensors, so a whole model's numbers come from per-tensor partial sums (dot products,
squared norms, counts) without ever holding more than one tensor per expert.
"""

from __future__ import annotations

import math

import torch


def gram(taus: torch.Tensor) -> torch.Tensor:
    """[n, n] dot products <tau_i, tau_j> of the rows of ``taus`` ([n, numel]), in float64 for exact accumulation."""
    t = taus.to(torch.float64)
    return t @ t.T


def cosine_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Cosine similarity cos(tau_i, tau_j) = <tau_i, tau_j> / (|tau_i| |tau_j|); 0 where a vector is zero."""
    norms = torch.sqrt(torch.clamp(torch.diagonal(g), min=0))
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, g / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(g))


def sign_conflict_counts(taus: torch.Tensor) -> tuple[int, int]:
    """(entries where the nonzero task-vector signs disagree, entries where at least two task vectors are nonzero).

    TIES-Merging (Yadav et al. 2023, Sec. 3) calls an entry a sign conflict when the experts that change it push in
    opposite directions; entries changed by fewer than two experts cannot conflict and are not counted.
    """
    positive = (taus > 0).sum(0)
    negative = (taus < 0).sum(0)
    conflicts = int(((positive > 0) & (negative > 0)).sum())
    eligible = int(((positive + negative) >= 2).sum())
    return conflicts, eligible


def pairwise_conflict_counts(taus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, n] counts: entries where tau_i and tau_j are both nonzero with opposite signs, and where both are nonzero."""
    s = torch.sign(taus).to(torch.float64)
    nonzero = (taus != 0).to(torch.float64)
    both = nonzero @ nonzero.T
    agree = (s @ s.T + both) / 2  # +1 per agreeing pair, -1 per disagreeing pair, summed; both = agree + disagree
    return both - agree, both


def random_sign_conflict_rate(n: int) -> float:
    """The conflict rate of n task vectors with independent random signs (all entries nonzero): 1 - 2^(1-n)."""
    return 1.0 - 2.0 ** (1 - n) if n >= 2 else 0.0


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalized singular values p_i = s_i / sum_k s_k (Roy & Vetterli 2007, Eq. 3-4).

    1 for a rank-1 matrix, min(m, n) for a flat spectrum; 0 for a zero matrix.
    """
    s = singular_values.to(torch.float64).clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))

"""The MergeLock transforms: random invertible per-head matrices and their action on attention weights.

Wang et al. 2025, "Model Unmerging: Making Your Models Unmergeable for Secure Model Sharing" (MergeLock).
Self-attention per head h computes softmax(q_h k_h^T / sqrt(d)) v_h and the output projection sums o_h W_O,h.
With row vectors (q_h = x W_Q,h^T in nn.Linear's y = x W^T convention):
  q_h A (A^-T applied to k_h):  (q_h A)(k_h A^-T)^T = q_h A A^-1 k_h^T = q_h k_h^T           (QK symmetry)
  v_h B, and B^-1 before the output projection: (P v_h B) B^-1 W_O,h^T = P v_h W_O,h^T       (VO symmetry)
so the network computes exactly the same function, while its weights leave the basin that the other fine-tunes
of the same base share: averaging them with unprotected weights mixes incompatible coordinate systems.

All functions here are pure, work in float64 and take weights in nn.Linear layout ([out, in]); a GPT-2 Conv1D
weight ([in, out]) is transposed by the caller.
"""

from __future__ import annotations

import math

import torch


def random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-distributed orthogonal d x d matrix: QR of a gaussian matrix with the signs of R's diagonal fixed."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)


def log_uniform_scales(n: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    """n scales drawn log-uniformly in [1/strength, strength]: the matrices' condition number is at most strength^2."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.exp((2 * u - 1) * math.log(strength))


def dense_invertible(d: int, strength: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random invertible M = Q diag(s) and its exact inverse diag(1/s) Q^T (well conditioned by construction).

    The paper samples random invertible matrices; an orthogonal factor times a bounded diagonal keeps the
    float32 round-off of the protected model small (cond(M) <= strength^2) while mixing every coordinate of the head.
    """
    q = random_orthogonal(d, gen)
    s = log_uniform_scales(d, strength, gen)
    return q * s, (q / s).T


def rotary_invertible(d: int, strength: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random invertible M that commutes with every rotary position rotation, and its inverse.

    Hugging Face LLaMA rotates the pairs (i, i + d/2) together (``rotate_half``): for a row vector, each plane is
    multiplied by [[cos, sin], [-sin, cos]]. Every 2x2 block of the form s [[cos p, sin p], [-sin p, cos p]]
    (a scaled rotation, i.e. a complex number) commutes with those rotations, so with A built from such blocks
    (q R_m A)(k R_n A^-T)^T = q R_m R_n^T k^T: the relative-position attention scores are unchanged (the paper's
    requirement for rotary models).
    """
    if d % 2:
        raise ValueError(f"rotary head dimension must be even, got {d}")
    half = d // 2
    angle = torch.rand(half, generator=gen, dtype=torch.float64) * (2 * math.pi)
    scale = log_uniform_scales(half, strength, gen)
    c, s = torch.cos(angle), torch.sin(angle)
    idx = torch.arange(half)
    m = torch.zeros(d, d, dtype=torch.float64)
    inv = torch.zeros(d, d, dtype=torch.float64)
    m[idx, idx], m[idx, idx + half], m[idx + half, idx], m[idx + half, idx + half] = (
        scale * c,
        scale * s,
        -scale * s,
        scale * c,
    )
    # inverse of a scaled rotation: the rotation by -p divided by the scale
    inv[idx, idx], inv[idx, idx + half], inv[idx + half, idx], inv[idx + half, idx + half] = (
        c / scale,
        -s / scale,
        s / scale,
        c / scale,
    )
    return m, inv


def transform_rows(weight: torch.Tensor, head_dim: int, mats: list[torch.Tensor]) -> torch.Tensor:
    """Per head h (rows h*d .. (h+1)*d of an [H*d, in] weight or an [H*d] bias): rows <- M_h^T rows.

    With y = x W^T + b, new head output x W_h^T M_h + b_h M_h = (M_h^T W_h) and (M_h^T b_h) as columns.
    """
    blocks = weight.reshape(len(mats), head_dim, -1)
    out = torch.stack([m.T @ block for m, block in zip(mats, blocks)])
    return out.reshape(weight.shape)


def transform_columns(weight: torch.Tensor, head_dim: int, mats: list[torch.Tensor]) -> torch.Tensor:
    """Per head h (columns h*d .. (h+1)*d of an [out, H*d] weight): columns <- columns M_h."""
    out_dim = weight.shape[0]
    blocks = weight.reshape(out_dim, len(mats), head_dim)
    return torch.stack([blocks[:, h, :] @ m for h, m in enumerate(mats)], dim=1).reshape(weight.shape)


def lock_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    q_bias: torch.Tensor | None,
    k_bias: torch.Tensor | None,
    v_bias: torch.Tensor | None,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rotary: bool,
    strength: float,
    gen: torch.Generator,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
]:
    """MergeLock on one attention block (nn.Linear layout, float64). Returns (q, k, v, o, q_bias, k_bias, v_bias).

    Grouped-query attention: query heads g*r .. (g+1)*r - 1 (r = num_heads / num_kv_heads, the order of
    ``repeat_kv``) read key/value head g, so they share its A_g; V's B_g is undone in the output-projection columns
    of every query head of the group.
    """
    group = num_heads // num_kv_heads
    make = rotary_invertible if rotary else dense_invertible
    a_mats, a_invs, b_mats, b_invs = [], [], [], []
    for _ in range(num_kv_heads):
        a, a_inv = make(head_dim, strength, gen)
        b, b_inv = dense_invertible(head_dim, strength, gen)  # V/O carry no position rotation: any invertible B
        a_mats.append(a)
        a_invs.append(a_inv)
        b_mats.append(b)
        b_invs.append(b_inv)
    q_mats = [a_mats[h // group] for h in range(num_heads)]
    # W_Q <- W_Q A: rows transform by A^T
    new_q = transform_rows(q, head_dim, q_mats)
    # W_K <- W_K A^-T: rows transform by (A^-T)^T = A^-1
    k_mats = [inv.T for inv in a_invs]
    new_k = transform_rows(k, head_dim, k_mats)
    # W_V <- W_V B: rows transform by B^T
    new_v = transform_rows(v, head_dim, b_mats)
    # W_O columns of query head h <- columns B_g^-T, the inverse of what reached them through V
    new_o = transform_columns(o, head_dim, [b_invs[h // group].T for h in range(num_heads)])
    biases = (
        transform_rows(q_bias, head_dim, q_mats) if q_bias is not None else None,
        transform_rows(k_bias, head_dim, k_mats) if k_bias is not None else None,
        transform_rows(v_bias, head_dim, b_mats) if v_bias is not None else None,
    )
    return (new_q, new_k, new_v, new_o, *biases)

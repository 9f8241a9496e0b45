"""Pooling token states into one vector per input, shared by the bench's text features and the models adapt saves
(Twin-Merging's router, Surgery's corrected representation), so both pool the same way."""

from __future__ import annotations

from torch import Tensor


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the token states over real tokens (how all-MiniLM-L6-v2 makes sentence embeddings)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

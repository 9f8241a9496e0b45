"""Per-task parts: what EMR-Merging and TALL masks keep beside the model instead of one merged tensor.

Both methods keep one dense task vector tau (EMR: the unified vector tau_uni; TALL masks: the multi-task vector
tau_MTL), one boolean mask per task and one scalar rescaler per task; task t's model is

    theta_t = theta_base + lambda_t * (M_t * tau)

(EMR, Huang et al. 2024, Sec. 3.2, "modulating the unified task vector"; TALL masks, Wang et al. 2024, Sec. 4,
theta_t = theta_0 + m_t * tau_MTL with lambda_t = 1).

A method with per-task parts (``MethodSpec.side_outputs`` set) returns ``(theta_base, PerTaskParts)`` for each tensor:
the engine writes theta_base as the model and the parts beside it (``mergesmith.engine.side_outputs``); rescalers
that the paper defines over the whole model are summed over tensors first (``scale_terms``), then divided once.

Pure functions only; the file format lives in ``engine/side_outputs.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PerTaskParts:
    task_vector: Tensor  # tau, in the compute dtype, shape of the tensor
    masks: list[Tensor]  # one bool tensor per expert (task), same shape
    # Per task: (numerator, denominator) of the model-level rescaler, summed over tensors in plan order (EMR);
    # None when every rescaler is 1 (TALL masks).
    scale_terms: list[tuple[float, float]] | None = None


def task_model(base: Tensor, task_vector: Tensor, mask: Tensor, rescaler: float) -> Tensor:
    """theta_t = theta_base + lambda_t * (M_t * tau), computed in fp32 (fp64 stays fp64), returned in base's dtype.

    One formula shared by the loader, the in-memory API and the tests, so all of them give the same bytes.
    """
    compute = torch.float64 if base.dtype == torch.float64 else torch.float32
    delta = task_vector.to(compute) * mask.to(compute)
    if rescaler != 1.0:
        delta = delta * torch.tensor(rescaler, dtype=compute)
    return (base.to(compute) + delta).to(base.dtype)


def rescalers(terms: Sequence[Sequence[tuple[float, float]]]) -> list[float]:
    """lambda_t = sum numerator_t / sum denominator_t over the tensors (EMR Sec. 3.2, "Rescale"); ``terms[t]`` lists
    task t's (numerator, denominator) per tensor. Sums are exactly rounded (``math.fsum``), so they do not depend
    on the order tensors are merged in. 1.0 where the masked vector is empty."""
    out = []
    for pairs in terms:
        num = math.fsum(n for n, _ in pairs)
        den = math.fsum(d for _, d in pairs)
        out.append(num / den if den > 0 else 1.0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Bit-packed masks: 8 entries a byte, most significant bit first (numpy.packbits' default order)

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_mask(mask: Tensor) -> Tensor:
    """A bool tensor as uint8 [ceil(numel / 8)], flattened in row-major order, padded with zero bits."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """The inverse of ``pack_mask``: a bool tensor of ``shape``."""
    numel = 1
    for d in shape:
        numel *= d
    bits = (packed.reshape(-1, 1) & _BIT_WEIGHTS) != 0
    return bits.reshape(-1)[:numel].reshape(tuple(shape))


def packed_length(shape: Sequence[int]) -> int:
    numel = 1
    for d in shape:
        numel *= d
    return (numel + 7) // 8


def single_tensor_task_model(tensor: Tensor, parts: PerTaskParts, index: int) -> Tensor:
    """Task ``index``'s model for one tensor merged on its own (rescaler from this tensor's terms alone)."""
    scale = rescalers([[pair] for pair in parts.scale_terms])[index] if parts.scale_terms is not None else 1.0
    return task_model(tensor, parts.task_vector, parts.masks[index], scale)

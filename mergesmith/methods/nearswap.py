"""NearSwap: take the other model's value where it is already close to the base's, keep the base's elsewhere.

alchemonaut 2024, NearSwap (model card of alchemonaut/QuartetAnemoi-70B-t0.0001 on the Hugging Face Hub; no paper,
no arXiv), as mergekit's ``nearswap``.

Elementwise, with a the base and b the other model:

    w = clamp(t / max(|a - b|, 1e-6), 0, 1)
    out = w b + (1 - w) a

Where |a - b| <= t the element is swapped to b outright; farther apart, the pull toward b falls off as t / |a - b|.
t = 0 gives the base; t at least the largest |a - b| gives the other model. Negative t acts as 0 (mergekit accepts it).
Each output element depends only on the inputs at that position, so the method streams block by block.

Parameters:
    t (required, float): the distance under which elements are swapped; any finite number, meaningful >= 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods._protocol import Rng, Streaming
from mergesmith.methods._spec import MethodSpec, param

MIN_DISTANCE = 1e-6  # floor on |a - b| before dividing (mergekit's): identical elements get w = 1 for any t > 0


@dataclass(frozen=True)
class Params:
    t: float = param(doc="distance under which the other model's element is taken; finite, >= 0 useful (required)")


def _check(base: Tensor | None, experts: Sequence[Tensor]) -> Tensor:
    if base is None:
        raise ValueError("nearswap needs a base model: set base_model (the other model is swapped in near it)")
    if len(experts) != 1:
        raise ValueError(f"nearswap combines the base with exactly one other model; got {len(experts)}")
    if experts[0].shape != base.shape:
        raise ValueError(f"nearswap: shape mismatch, base {tuple(base.shape)} vs model {tuple(experts[0].shape)}")
    return base


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    base = _check(base, experts)
    other = experts[0]
    # w = clamp(t / max(|a - b|, eps), 0, 1): full swap within distance t, fading as t/|a - b| beyond it
    weight = (params.t / (base - other).abs_().clamp_(min=MIN_DISTANCE)).clamp_(0, 1)
    # out = w b + (1 - w) a, in this form so that w = 1 gives b and w = 0 gives a exactly
    result = other * weight
    return result.add_(weight.neg_().add_(1).mul_(base))


SPEC = MethodSpec(
    name="nearswap",
    params=Params,
    paper="alchemonaut 2024, NearSwap, Hugging Face model card alchemonaut/QuartetAnemoi-70B-t0.0001 (no arXiv); "
    "as in mergekit, Goddard et al. 2024, arXiv:2403.13257",
    base="required",
    min_models=1,
    max_models=1,
    streaming=Streaming(merge_block),
    description="elementwise: swap in the other model's value where it lies within t of the base's",
)

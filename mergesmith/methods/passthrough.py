"""Passthrough: the single input tensor, unchanged (optionally scaled).

Goddard et al. 2024, "Arcee's MergeKit: A Toolkit for Merging Large Language Models", arXiv:2403.13257 (mergekit's
``passthrough``; no method paper). It is what layer-stacking ("frankenmerge") configs use: the stacking of
``slices`` is done by the config and the engine, which route each output tensor to the one input it comes from;
this function only copies that tensor through.

Parameters:
    scale (per model, default None): multiply the tensor by this number; None leaves it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods._protocol import Rng, Streaming
from mergesmith.methods._spec import MethodSpec, per_model


@dataclass(frozen=True)
class Params:
    scale: tuple[float | None, ...] = per_model(
        None, doc="multiply the tensor by this; None = unchanged (default None)"
    )


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    if len(experts) != 1:
        raise ValueError(
            f"passthrough takes exactly one model per tensor; got {len(experts)} (to stack layers from several "
            "models, use slices, each with one source)"
        )
    (scale,) = params.scale
    return experts[0] if scale is None else experts[0] * scale


SPEC = MethodSpec(
    name="passthrough",
    params=Params,
    paper='Goddard et al. 2024, "Arcee\'s MergeKit: A Toolkit for Merging Large Language Models", arXiv:2403.13257',
    base="unused",
    min_models=1,
    max_models=1,
    streaming=Streaming(merge_block),
    description="the one input tensor, unchanged or scaled (layer stacking is done by slices)",
)

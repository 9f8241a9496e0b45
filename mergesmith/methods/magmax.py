"""MagMax: per entry, keep the task-vector value of largest magnitude across the experts.

Marczak, Twardowski, Trzcinski, Cygert 2024, "MagMax: Leveraging Model Merging for Seamless Continual Learning",
ECCV 2024, arXiv:2407.06322. Sec. 3 (maximum magnitude selection): tau_MagMax[i] = tau_{t*}[i] with
t* = argmax_t |tau_t[i]|; theta = theta_base + lambda * tau_MagMax. (The paper obtains the experts by sequential
fine-tuning; the merge itself is this selection.) Not in mergekit.

Parameters:
- ``lambda`` (default 1.0): scale of the selected task vector.

Entries whose largest magnitude is shared by several experts take the first of them. Elementwise: streams in row
blocks with no per-tensor context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Rng, Streaming
from mergesmith.methods._spec import MethodSpec, param

NAME = "magmax"


@dataclass(frozen=True)
class Params:
    lambda_: float = param(1.0, alias="lambda", doc="scale of the selected task vector")


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    base = tv.require_base(NAME, base)
    if not experts:
        return base.clone()
    # maximum magnitude selection, one expert at a time: tau_m = tau_t where |tau_t| beats every earlier expert
    selected = experts[0] - base
    for expert in experts[1:]:
        tau = expert - base
        torch.where(tau.abs() > selected.abs(), tau, selected, out=selected)
    if params.lambda_ != 1:
        selected *= params.lambda_
    return base + selected


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Marczak et al. 2024, MagMax: Leveraging Model Merging for Seamless Continual Learning, arXiv:2407.06322",
    base="required",
    streaming=Streaming(merge_block),
    description="per entry, the task-vector value of largest magnitude across experts",
)

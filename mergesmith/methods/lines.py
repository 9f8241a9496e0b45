"""LiNeS: layer-increasing network scaling of the merged task vector.

Wang, Dimitriadis, Favero, Ortiz-Jimenez, Fleuret, Frossard 2025, "LiNeS: Post-training Layer Scaling Prevents
Forgetting and Enhances Model Merging", ICLR 2025, arXiv:2410.17146.

Shallow layers hold general features that fine-tuning should barely move; deep layers hold the task-specific ones.
LiNeS scales a task vector by depth (Sec. 3), lambda(l) = alpha + beta * (l - 1) / (L - 1) for layer l of L,
and for multi-task merging applies it to the merged multi-task vector (Sec. 5):

1. task vectors tau_t = theta_t - theta_base and the task-arithmetic multi-task vector tau_MTL = sum_t tau_t;
2. alpha, the scale of the shallowest layer: the paper's multi-task rule is
   alpha = (||sum_t tau_t||_1 / ||tau_MTL||_1) / T, which is 1/T for task arithmetic (the default here);
3. depth: lambda = alpha + beta * depth, depth in [0, 1] being l / (L - 1) for layer l (counted from 0) of a stack of
   L layers, 0 for embeddings and other tensors before the stack, 1 for the final norm, pooler and heads after it
   (the engine fills it in from the tensor's name: ``engine.layers.relative_depth``);
4. theta = theta_base + lambda(depth) * tau_MTL.

The authors' code scales every tensor outside the transformer blocks by alpha, the tensors after the stack too; here
those get the deepest scale alpha + beta, by the paper's premise that the layers nearest the output are the most
task-specific. beta is tuned on validation data (the paper's grid: 0.1 ... 1.0). With beta = 0, LiNeS is task
arithmetic with lambda = alpha.

Parameters:
- ``alpha`` (default 1/T): scale of the shallowest layer.
- ``beta`` (default 0.5): extra scale of the deepest layer over the shallowest.

Elementwise: streams in row blocks with no per-tensor context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Rng, Streaming
from mergesmith.methods._spec import MethodSpec, param, tensor_fact

NAME = "lines"


@dataclass(frozen=True)
class Params:
    alpha: float | None = param(None, doc="scale of the shallowest layer (default 1/T, the paper's multi-task rule)")
    beta: float = param(0.5, doc="extra scale of the deepest layer: lambda = alpha + beta * depth")
    depth: float | None = tensor_fact("depth", doc="the tensor's relative depth in [0, 1], filled in by the engine")


def layer_scale(params: Params, n_tasks: int) -> float:
    """lambda(depth) = alpha + beta * depth (steps 2-3)."""
    if params.depth is None:
        raise ValueError(
            f"{NAME} scales each tensor by its depth and was called without one: merge through mergesmith.api "
            "(merge or merge_state_dicts), or build the parameters with SPEC.make_params(..., facts={'depth': d})"
        )
    if not 0.0 <= params.depth <= 1.0:
        raise ValueError(f"{NAME}: depth must be in [0, 1], got {params.depth}")
    alpha = 1.0 / n_tasks if params.alpha is None else params.alpha
    return alpha + params.beta * params.depth


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    base = tv.require_base(NAME, base)
    scale = layer_scale(params, len(experts))
    # step 1: tau_MTL = sum_t tau_t;  step 4: theta_base + lambda(depth) * tau_MTL
    multi_task = tv.sum_in_order(expert - base for expert in experts)
    return (base + scale * multi_task).to(base.dtype)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Wang et al. 2025, LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging, "
    "arXiv:2410.17146",
    base="required",
    streaming=Streaming(merge_block),
    description="task arithmetic with a scale growing linearly with depth, alpha + beta * depth",
)

"""Task arithmetic: add the weighted sum of task vectors to the base model.

Ilharco, Ribeiro, Wortsman, Gururangan, Schmidt, Hajishirzi, Farhadi 2023, "Editing Models with Task Arithmetic",
ICLR 2023, arXiv:2212.04089. Sec. 2: tau_t = theta_t - theta_pre; theta_new = theta_pre + lambda * sum_t tau_t.

Here, as in mergekit's ``task_arithmetic``: theta = theta_base + lambda * sum_t w_t tau_t, optionally divided by
sum_t w_t.

Parameters (mergekit names and defaults):
- ``weight`` (per model, required): w_t, the coefficient of expert t's task vector.
- ``normalize`` (default false): divide the weighted sum by sum_t w_t (a sum below 1e-8 divides by 1).
- ``lambda`` (default 1.0): the scaling coefficient applied to the combined task vector.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect (no mask here).

Elementwise: streams in row blocks with no per-tensor context, one expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._spec import MethodSpec, param, per_model

NAME = "task_arithmetic"


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    normalize: bool = param(False, doc="divide the weighted sum of task vectors by the sum of the weights")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the combined task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def context(blocks, params: Params, rng) -> None:
    values = tv.checked_values(NAME, params)
    return None


def merge_block(base: Tensor, experts: Sequence[Tensor], params: Params, ctx, rng, block: int) -> Tensor:
    values = tv.block_values(NAME, params, experts)
    base = tv.require_base(NAME, base)
    # sum_t w_t tau_t, one expert at a time (the engine may read each only when the sum reaches it)
    mixed = tv.sum_in_order(tv.weighted_task_vectors(base, experts, values["weight"]))
    return tv.finish(base, mixed, tv.weight_sum(values["weight"], mixed.dtype), normalize=params.normalize, lam=params.lambda_)


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng=None) -> Tensor:
    return tv.merge_in_blocks(context, merge_block, base, experts, params, rng, NAME)


SPEC = MethodSpec(
    name=NAME,
    merge=merge,
    params=Params,
    paper="Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv:2212.04089",
    base="required",
    context=context,
    merge_block=merge_block,
    one_expert_at_a_time=True,
    description="base + lambda * sum of weighted task vectors",
)

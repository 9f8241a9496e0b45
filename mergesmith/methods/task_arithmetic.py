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

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Rng, Streaming
from mergesmith.methods._spec import MethodSpec, param, per_model

NAME = "task_arithmetic"


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    normalize: bool = param(False, doc="divide the weighted sum of task vectors by the sum of the weights")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the combined task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def merge_block(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    base = tv.require_base(NAME, base)
    # sum_t w_t tau_t, one expert at a time (the engine may read each only when the sum reaches it)
    mixed = tv.sum_in_order(tv.weighted_task_vectors(base, experts, params.weight))
    return tv.finish(
        base, mixed, tv.weight_sum(params.weight, mixed.dtype), normalize=params.normalize, lam=params.lambda_
    )


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv:2212.04089",
    base="required",
    streaming=Streaming(merge_block, one_expert_at_a_time=True),
    description="base + lambda * sum of weighted task vectors",
)

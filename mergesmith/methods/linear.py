"""Linear merge: the weighted average of the models (model soups).

Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", arXiv:2203.05482. Eq.: theta = sum_i w_i theta_i / sum_i w_i (with ``normalize``),
else sum_i w_i theta_i.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods._protocol import Rng, Streaming
from mergesmith.methods._spec import MethodSpec, param, per_model


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="the model's weight in the average")
    normalize: bool = param(True, doc="divide by the sum of the weights")


def merge_block(
    base: Tensor | None, experts: Iterable[Tensor], params: Params, ctx: None, rng: Rng | None, block: int
) -> Tensor:
    # One expert at a time (the engine may read each only when the loop reaches it).
    result: Tensor | None = None
    for tensor, weight in zip(experts, params.weight):
        if result is None:
            result = torch.zeros_like(tensor)
        result.addcmul_(tensor, torch.tensor(weight, dtype=tensor.dtype))
    assert result is not None, "linear needs at least one model"
    if params.normalize:
        result.div_(torch.tensor(params.weight, dtype=result.dtype).sum())
    return result


SPEC = MethodSpec(
    name="linear",
    params=Params,
    paper="Wortsman et al. 2022, Model soups, arXiv:2203.05482",
    base="unused",
    streaming=Streaming(merge_block, one_expert_at_a_time=True),
    description="weighted average of all models",
)

"""Linear merge: the weighted average of the models (model soups).

Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", arXiv:2203.05482. Eq.: theta = sum_i w_i theta_i / sum_i w_i (with ``normalize``),
else sum_i w_i theta_i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from mergesmith.methods._spec import MethodSpec, param, per_model


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="the model's weight in the average")
    normalize: bool = param(True, doc="divide by the sum of the weights")


def context(blocks, params: Params, rng) -> None:
    return None


def merge_block(base: Tensor | None, experts: Sequence[Tensor], params: Params, ctx, rng, block: int) -> Tensor:
    weights = torch.tensor(params.weight, dtype=experts[0].dtype)
    result = torch.zeros_like(experts[0])
    for tensor, coefficient in zip(experts, weights.unbind(0)):
        result.addcmul_(tensor, coefficient)
    if params.normalize:
        result.div_(weights.sum())
    return result


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng=None) -> Tensor:
    return merge_block(base, experts, params, None, rng, 0)


SPEC = MethodSpec(
    name="linear",
    merge=merge,
    params=Params,
    paper="Wortsman et al. 2022, Model soups, arXiv:2203.05482",
    base="unused",
    context=context,
    merge_block=merge_block,
    description="weighted average of all models",
)

"""The contract of a continual-merging method: one pure step per tensor, plus how a sequence starts."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel
from torch import Tensor

# Embedding tables are 2-D but not linear maps: the papers project / optimise nn.Linear weights only.
_EMBEDDING = re.compile(r"(embed|(^|\.)(wte|wpe|shared)\.weight$)")

P = TypeVar("P", bound=BaseModel)


def is_linear_weight(name: str, tensor: Tensor) -> bool:
    """A 2-D weight of a linear layer (or GPT-2 Conv1D), not an embedding table, bias or norm."""
    return tensor.dim() == 2 and name.endswith("weight") and not _EMBEDDING.search(name)


@dataclass(frozen=True)
class StepContext:
    """What one tensor's step may know besides the three tensors."""

    name: str
    is_matrix: bool
    count: int  # experts in the previous merge (n); the new one is number n + 1
    scale: float  # OPCM's lambda_{t-1}; 1.0 for the other methods


@dataclass(frozen=True)
class ContinualMethod(Generic[P]):
    name: str
    paper: str
    summary: str
    params: type[P]
    # step(base, previous merge, new expert, params, ctx) -> next merge of this tensor (for OPCM: before the
    # global rescale by 1 / lambda_t, see ``rescales``)
    step: Callable[[Tensor, Tensor, Tensor, P, StepContext], Tensor]
    # start(base, first expert, params) -> the "merge" of one expert that a sequence starts from
    start: Callable[[Tensor, Tensor, P], Tensor]
    rescales: bool = False  # OPCM: the task vector is rescaled by a whole-model norm after the step
    # what happens to tensors that are not linear weights, for the one note per step (empty: nothing special)
    non_matrix: str = ""

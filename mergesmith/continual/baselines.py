"""Continual baselines: running average, task arithmetic and TIES, one expert at a time.

The first two equal their one-shot counterparts exactly, whatever the order: the running mean
theta_n = theta_{n-1} + (theta_n' - theta_{n-1}) / n is the average of the n experts (model soups, Wortsman et al.
2022), and task arithmetic theta_n = theta_{n-1} + lambda tau_n is theta_0 + lambda sum tau_i (Ilharco et al. 2023).
TIES (Yadav et al. 2023) is not associative: the continual variant TIES-merges the previous merged task vector,
weighted by the n experts it stands for, with the new one (trim, elect sign, disjoint weighted mean; Algorithm 1),
so its result depends on the order, which is what a continual benchmark measures.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mergesmith.continual._spec import StepContext


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskArithmeticParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    lambda_: float = Field(0.3, alias="lambda", gt=0, le=10, description="scale of every task vector")


class TiesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    lambda_: float = Field(1.0, alias="lambda", gt=0, le=10, description="scale of the merged task vector")
    density: float = Field(0.2, gt=0, le=1, description="fraction of largest-magnitude entries kept by the trim")


def average_start(base: Tensor, expert: Tensor, params: NoParams) -> Tensor:
    return expert


def average_step(base: Tensor, previous: Tensor, new: Tensor, params: NoParams, ctx: StepContext) -> Tensor:
    """theta_{n+1} = theta_n + (theta' - theta_n) / (n + 1): the mean of all n + 1 experts."""
    return previous + (new - previous) / (ctx.count + 1)


def task_arithmetic_start(base: Tensor, expert: Tensor, params: TaskArithmeticParams) -> Tensor:
    return base + params.lambda_ * (expert - base)


def task_arithmetic_step(
    base: Tensor, previous: Tensor, new: Tensor, params: TaskArithmeticParams, ctx: StepContext
) -> Tensor:
    """theta_{n+1} = theta_n + lambda (theta' - theta_0)."""
    return previous + params.lambda_ * (new - base)


def ties_start(base: Tensor, expert: Tensor, params: TiesParams) -> Tensor:
    return base + params.lambda_ * (expert - base)


def ties_step(base: Tensor, previous: Tensor, new: Tensor, params: TiesParams, ctx: StepContext) -> Tensor:
    """theta_0 + lambda TIES(w=(n, 1); tau_prev, tau_new) with tau_prev = (theta_n - theta_0) / lambda."""
    from mergesmith.methods import ties

    previous_tv = (previous - base) / params.lambda_
    tie_params = ties.Params(
        weight=(float(ctx.count), 1.0), density=(params.density, params.density), lambda_=params.lambda_
    )
    merged = ties.SPEC.merge(base, [base + previous_tv, new], tie_params)
    assert isinstance(merged, Tensor)  # only methods with per-task parts (EMR, TALL masks) return a pair
    return merged

"""One continual step's arithmetic, tensor by tensor: the method's step, the whole-model sums it gathers, OPCM's
rescale, and the checks those sums allow (an expert of another base). No file is read here (``continual.add``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from mergesmith.continual import opcm
from mergesmith.continual._spec import ContinualMethod, StepContext, is_linear_weight
from mergesmith.continual.catalogue import CONTINUAL_METHODS
from mergesmith.errors import ConfigError, MergesmithError

# A fine-tune keeps its base's direction: over the linear weights, cos(theta, theta_0) is near 1 (0.999 for real
# fine-tunes, 0.6 for the tests' deliberately noisy tiny ones); two independent initialisations give about 0.
MIN_COSINE_TO_BASE = 0.3


@dataclass
class Totals:
    """Whole-model sums of squares gathered while stepping."""

    first: float = 0.0  # ||tau_1||^2, when the previous model is a single expert
    new: float = 0.0  # ||tau_new||^2
    unscaled: float = 0.0  # OPCM: ||lambda_{t-1} tau^m + P'(tau_t)||^2
    # over the linear weights only (norm scales, all near 1, would hide a foreign model): ||theta||^2 and
    # <theta, theta_0> of the base, the new expert and the first expert
    base_sq: float = 0.0
    new_sq: float = 0.0
    new_dot: float = 0.0
    first_sq: float = 0.0
    first_dot: float = 0.0
    non_matrix: int = 0  # floating tensors that are not linear weights


@dataclass
class StepPlan:
    """Everything a step needs besides the tensors: the method, its parameters and the carried numbers."""

    method: ContinualMethod
    params: BaseModel
    count: int  # experts in the previous merge
    scale: float  # lambda_{t-1}
    norm_sum: float  # sum of the previous experts' task-vector norms (known after pass 1 on a first step)
    first: bool  # the previous model is one expert, not yet a merge
    totals: Totals = field(default_factory=Totals)


def non_matrix_note(plan: StepPlan) -> list[str]:
    """The one note per step on tensors outside the method's matrix rule (biases, norms, embeddings)."""
    if not plan.method.non_matrix or not plan.totals.non_matrix:
        return []
    return [
        f"{plan.method.name}: {plan.totals.non_matrix} tensors are not linear weights (biases, norms, "
        f"embeddings); they are {plan.method.non_matrix}"
    ]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sq(t: Tensor) -> float:
    return float(t.double().square().sum())


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a.double() * b.double()).sum())


def step_tensor(plan: StepPlan, name: str, base: Tensor, previous: Tensor, new: Tensor) -> Tensor:
    """The next merge of one floating tensor, in the compute dtype (OPCM: before the rescale)."""
    dtype = compute_dtype(previous.dtype)
    b, p, n = base.to(dtype), previous.to(dtype), new.to(dtype)
    t = plan.totals
    is_matrix = is_linear_weight(name, b)
    new_sq = _sq(n - b)
    t.new += new_sq
    t.non_matrix += not is_matrix
    if is_matrix:
        t.base_sq += _sq(b)
        t.new_sq += _sq(n)
        t.new_dot += _dot(n, b)
    if plan.first:
        t.first += _sq(p - b)
        if is_matrix:
            t.first_sq += _sq(p)
            t.first_dot += _dot(p, b)
        p = plan.method.start(b, p, plan.params)
    ctx = StepContext(name=name, is_matrix=is_matrix, count=plan.count, scale=plan.scale)
    out = plan.method.step(b, p, n, plan.params, ctx)
    if plan.method.rescales:
        t.unscaled += _sq(out - b)
    return out


def finish_numbers(plan: StepPlan) -> tuple[float, float]:
    """(lambda_t, sum of task-vector norms) after the step."""
    t = plan.totals
    if not all(math.isfinite(v) for v in (t.first, t.new, t.unscaled)):
        # NaN would flow into every tensor while next_lambda reads NaN as "no norm" and records lambda 1.0.
        raise MergesmithError(
            "the models of this continual step hold NaN or Inf values (their task-vector norms are "
            "not finite); fix or drop the model that holds them"
        )
    norm_sum = (math.sqrt(t.first) if plan.first else plan.norm_sum) + math.sqrt(t.new)
    if not plan.method.rescales:
        return 1.0, norm_sum
    return opcm.next_lambda(math.sqrt(t.unscaled), norm_sum / (plan.count + 1)), norm_sum


def rescale_tensor(base: Tensor, unscaled: Tensor, lam: float) -> Tensor:
    """OPCM step 3: theta_0 + (lambda_{t-1} tau^m + P'(tau_t)) / lambda_t."""
    b = base.to(unscaled.dtype)
    return b + (unscaled - b) / lam


def check_related(plan: StepPlan, new_label: str, previous_label: str, base_label: str) -> None:
    """Refuse an expert (or first model) that is not a fine-tune of the base: over the linear weights, its cosine
    to the base is below ``MIN_COSINE_TO_BASE``."""
    t = plan.totals
    checks = [(new_label, t.new_sq, t.new_dot)] + ([(previous_label, t.first_sq, t.first_dot)] if plan.first else [])
    for label, sq, dot in checks:
        if t.base_sq <= 0 or sq <= 0:
            continue
        cosine = dot / math.sqrt(sq * t.base_sq)
        if cosine < MIN_COSINE_TO_BASE:
            raise MergesmithError(
                f"{label} is not a fine-tune of base {base_label}: the cosine of their linear weights is "
                f"{cosine:.2f}; add experts fine-tuned from the same base (or pass the right --base)"
            )


def resolve_params(
    method: ContinualMethod, given: Mapping[str, Any] | None, recorded: Mapping[str, Any] | None
) -> BaseModel:
    """The method's parameters: those recorded by the sequence, which given values may repeat but not change."""
    given = dict(given or {})
    if recorded is not None:
        changed = sorted(k for k, v in given.items() if k in recorded and recorded[k] != v or k not in recorded)
        if changed:
            k = changed[0]
            raise ConfigError(
                f"parameter {k}={given[k]!r} differs from the {recorded.get(k)!r} this sequence was "
                f"started with; keep the parameters of a sequence, or start a new one from an expert"
            )
        given = dict(recorded)
    try:
        return method.params.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "parameters"
        known = ", ".join(f.alias or n for n, f in method.params.model_fields.items()) or "none"
        raise ConfigError(f"{method.name}: parameter {where}: {err['msg']} (parameters: {known})") from None


def get_method(name: str) -> ContinualMethod:
    try:
        return CONTINUAL_METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown continual method {name!r}; choose one of {', '.join(CONTINUAL_METHODS)}") from None


def params_record(params: BaseModel) -> dict[str, Any]:
    return params.model_dump(mode="json", by_alias=True)

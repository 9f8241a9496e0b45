"""EMR-Merging: Elect, Mask & Rescale. One unified task vector plus a mask and a rescaler per task.

Huang, Ye, Wang, Zhu, Ouyang, Li 2024, "EMR-Merging: Tuning-Free High-Performance Model Merging", NeurIPS 2024,
arXiv:2405.17461, Sec. 3.2 (the three steps, with tau_t = theta_t - theta_pre):

1. Elect: gamma_uni = sgn(sum_t tau_t); epsilon_uni = max_t |tau_t| over the tasks whose sign agrees with gamma_uni;
   tau_uni = gamma_uni * epsilon_uni.
2. Mask: M_t = (tau_t * tau_uni > 0), one bool mask per task.
3. Rescale: lambda_t = sum |tau_t| / sum |M_t * tau_uni|, over the whole model (one scalar per task).

Task t's model is theta_pre + lambda_t * (M_t * tau_uni); there is no single merged model. The engine writes
theta_pre as the model and tau_uni, the masks and the rescalers beside it (``engine/side_outputs.py``);
``mergesmith.load_merged(out, task=...)`` materialises one task's model.

Parameters:
- ``rescale_by`` (default "sum"): "sum" is the paper's lambda_t (sums over every entry of the model); "tensor_means"
  sums each tensor's mean |.| instead, as the authors' code and fusion-bench 0.2.33 do (it weighs small tensors
  such as biases as much as large matrices).

Where sum_t tau_t is exactly 0 the elected sign is negative, as in the authors' code (only matters when tasks
cancel exactly). Every floating tensor is merged this way, 1-D ones included (the paper's method is elementwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._per_task import PerTaskParts
from mergesmith.methods._protocol import Rng, check_shapes
from mergesmith.methods._spec import MethodSpec, param

NAME = "emr"


@dataclass(frozen=True)
class Params:
    rescale_by: str = param(
        "sum",
        choices=("sum", "tensor_means"),
        doc='"sum": the paper\'s model-level sums; "tensor_means": sum of per-tensor means (authors\' code)',
    )


def elect_mask(taus: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 1 and 2 on stacked task vectors [T, ...]: (tau_uni, masks [T, ...] bool)."""
    positive = tv.sum_in_order(taus) > 0  # gamma_uni = sgn(sum_t tau_t); an exact 0 counts as negative
    agree = torch.where(positive, taus > 0, taus < 0)  # tau_t agrees with gamma_uni (zeros never do)
    # epsilon_uni = max_t |tau_t| among agreeing tasks; 0 where none agrees
    magnitude = (taus.abs() * agree.to(taus.dtype)).amax(dim=0)
    tau_uni = torch.where(positive, magnitude, -magnitude)
    # M_t = (tau_t * tau_uni > 0): exactly the agreeing entries (|tau_uni| >= |tau_t| > 0 there, same sign)
    return tau_uni, agree


def scale_terms(taus: Tensor, tau_uni: Tensor, masks: Tensor, rescale_by: str) -> list[tuple[float, float]]:
    """Step 3's numerator sum|tau_t| and denominator sum|M_t * tau_uni| for this tensor (fp64, fixed order)."""
    zero = torch.zeros((), dtype=torch.float64)
    terms = []
    for t in range(taus.shape[0]):
        num = tv.add_in_row_order(zero, taus[t].abs())
        den = tv.add_in_row_order(zero, (tau_uni * masks[t].to(tau_uni.dtype)).abs())
        if rescale_by == "tensor_means":
            count = max(1, taus[t].numel())
            num, den = num / count, den / count
        terms.append((float(num), float(den)))
    return terms


def merge(
    base: Tensor | None, experts: Sequence[Tensor], params: Params, rng: Rng | None = None
) -> tuple[Tensor, PerTaskParts]:
    base = tv.require_base(NAME, base)
    check_shapes(NAME, base, experts)
    taus = tv.stacked_task_vectors(base, experts)
    tau_uni, masks = elect_mask(taus)
    terms = scale_terms(taus, tau_uni, masks, params.rescale_by)
    return base, PerTaskParts(task_vector=tau_uni, masks=list(masks.unbind(0)), scale_terms=terms)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    whole_tensor=merge,
    paper="Huang et al. 2024, EMR-Merging: Tuning-Free High-Performance Model Merging, arXiv:2405.17461",
    base="required",
    description="unified task vector (elected signs, max magnitudes) + per-task masks and rescalers; one model per task",
    side_outputs="emr",
)

"""The continual-merging methods: a plain dict from name to ``ContinualMethod``."""

from __future__ import annotations

from typing import Any

from mergesmith.continual import baselines, dop, opcm
from mergesmith.continual._spec import ContinualMethod

CONTINUAL_METHODS: dict[str, ContinualMethod[Any]] = {
    "opcm": ContinualMethod(
        name="opcm",
        paper=opcm.PAPER,
        params=opcm.OpcmParams,
        step=opcm.step,
        start=opcm.start,
        rescales=True,
        non_matrix="added without projection, as the paper does (no singular subspace)",
        summary="project the new task vector off the merge's singular subspace; keep the average task-vector norm",
    ),
    "dop": ContinualMethod(
        name="dop",
        paper=dop.PAPER,
        params=dop.DopParams,
        step=dop.step,
        start=dop.start,
        non_matrix="averaged with the previous merge, as the authors' code does (no subspace to project on)",
        summary="per linear weight, MGDA-balanced Adam on dual (input/output) subspace-projection losses",
    ),
    "averaging": ContinualMethod(
        name="averaging",
        paper="running weight average (model soups, Wortsman et al. 2022)",
        params=baselines.NoParams,
        step=baselines.average_step,
        start=baselines.average_start,
        summary="running mean of the experts (equals the one-shot average)",
    ),
    "task_arithmetic": ContinualMethod(
        name="task_arithmetic",
        paper="Ilharco et al. 2023, task arithmetic",
        params=baselines.TaskArithmeticParams,
        step=baselines.task_arithmetic_step,
        start=baselines.task_arithmetic_start,
        summary="add lambda x each new task vector (equals one-shot task arithmetic)",
    ),
    "ties": ContinualMethod(
        name="ties",
        paper="Yadav et al. 2023, TIES-Merging, applied pairwise",
        params=baselines.TiesParams,
        step=baselines.ties_step,
        start=baselines.ties_start,
        summary="TIES of the previous merged task vector (weight n) and the new one",
    ),
}

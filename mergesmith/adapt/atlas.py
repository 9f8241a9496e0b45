"""aTLAS: task vectors composed with learned anisotropic scaling, one coefficient per parameter block per task vector.

Zhang, Albert, Rodriguez-Opazo, van den Hengel, Abbasnejad 2024, "Knowledge Composition using Task Vectors with
Learned Anisotropic Scaling", NeurIPS 2024, arXiv:2407.18242. Steps:

1. task vectors tau_i = theta_i - theta_0, split into their parameter blocks tau_i^(j) (one block = one parameter
   tensor; Sec. 3 of the paper);
2. anisotropic scaling: theta = theta_0 + sum_i Lambda_i tau_i with Lambda_i = blockdiag(lambda_i^(1) I, ...,
   lambda_i^(m) I), i.e. theta^(j) = theta_0^(j) + sum_i lambda_i^(j) tau_i^(j) (the paper's composition equation,
   Sec. 3); the coefficients start at zero (the composed model starts as the pretrained model, as in the authors'
   release) and are unconstrained;
3. objective (task addition, Sec. 4): cross-entropy of each task's head on a few LABELED validation examples of the
   task, summed over tasks (``objective: supervised``, the default); or the unsupervised variant the paper uses for
   test-time adaptation (Sec. 5): the Shannon entropy of the predictions on unlabeled test inputs
   (``objective: entropy``).

The learned coefficients are written as ``atlas.yaml`` (a ``task_arithmetic`` config with one ``{filter, value}`` per
tensor per model) that ``mergesmith merge`` turns into the same weights, plus ``atlas_coefficients.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.adamerging import coefficient_table, engine_config
from mergesmith.adapt.coefficients import learn_coefficients, loss_summary
from mergesmith.adapt.functional import coefficient_groups, combine, learnable_names
from mergesmith.adapt.problem import AdaptProblem, check_needs
from mergesmith.adapt.result import AdaptResult, weights_result

NAME = "atlas"
PAPER = (
    "Zhang et al. 2024, Knowledge Composition using Task Vectors with Learned Anisotropic Scaling, NeurIPS 2024, "
    "arXiv:2407.18242"
)
CONFIG_FILE = "atlas.yaml"
COEFFICIENTS_FILE = "atlas_coefficients.json"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    objective: Literal["supervised", "entropy"] = Field(
        "supervised", description="cross-entropy on labeled validation examples, or entropy on unlabeled test inputs"
    )
    shots: int = Field(0, ge=0, description="labeled validation examples per task (0: the whole validation split)")
    steps: int = Field(30, ge=1, description="Adam steps, one batch per task per step (CPU budget; see adamerging)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate (our choice for short CPU schedules)")
    batch_size: int = Field(8, ge=1, description="examples per task per step")
    init: float = Field(0.0, description="initial coefficient (0: start from the pretrained model, as the authors do)")
    grouping: Literal["tensor", "layer"] = Field(
        "tensor", description="one coefficient per parameter tensor (the paper's block) or per transformer block"
    )
    progress: bool = Field(True, description="show a progress bar")


def few_shot(problem: AdaptProblem, shots: int, seed: int) -> AdaptProblem:
    """The problem with each task's validation split cut to ``shots`` seeded examples (the same base and vectors)."""
    from dataclasses import replace

    tasks = []
    for i, task in enumerate(problem.tasks):
        n = len(task.validation)
        if shots >= n:
            tasks.append(task)
            continue
        rows = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 31 * i))[:shots].sort().values
        )
        tasks.append(replace(task, validation=problem.featurizer.select(task.validation, rows)))
    return replace(problem, tasks=tasks)


def run(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    check_needs(problem, NAME, frozenset({"validation" if params.objective == "supervised" else "unlabeled"}))
    base = problem.base_state()
    vectors_by_task = problem.task_vectors()
    vectors = [vectors_by_task[t] for t in problem.task_names]  # tau_i (step 1)
    learnable = learnable_names(base, vectors)
    index, labels = coefficient_groups(learnable, params.grouping)  # parameter blocks (step 1)
    groups = {n: index.get(n) for n in base}
    data = few_shot(problem, params.shots, seed) if params.objective == "supervised" and params.shots else problem
    learned = learn_coefficients(
        data,
        vectors,
        groups,
        len(labels),
        objective=params.objective,
        init=params.init,
        steps=params.steps,
        lr=params.lr,
        batch_size=params.batch_size,
        seed=seed,
        clamp=None,
        label=NAME,
        progress=params.progress,
    )  # steps 2-3
    lam = learned.coefficients
    with torch.no_grad():
        merged = {k: v.detach().clone() for k, v in combine(base, vectors, lam, groups).items()}

    table = coefficient_table(problem, lam, labels, params.grouping)
    workdir = tempfile.TemporaryDirectory(prefix="mergesmith-atlas-")
    files = {COEFFICIENTS_FILE: Path(workdir.name) / COEFFICIENTS_FILE, CONFIG_FILE: Path(workdir.name) / CONFIG_FILE}
    files[COEFFICIENTS_FILE].write_text(
        json.dumps({"method": NAME, "grouping": params.grouping, "groups": labels, "coefficients": table}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    files[CONFIG_FILE].write_text(
        yaml.safe_dump(engine_config(problem, lam, groups, params.grouping), sort_keys=False), encoding="utf-8"
    )
    spec = {
        "method": NAME,
        "paper": PAPER,
        "params": params_dict(params),
        "seed": seed,
        "grouping": params.grouping,
        "groups": labels,
    }
    info = {
        "coefficients": table,
        "groups": len(labels),
        "learnable_tensors": len(learnable),
        "objective": params.objective,
        "labeled_examples": sum(len(t.validation) for t in data.tasks) if params.objective == "supervised" else 0,
        "steps": params.steps,
        **loss_summary(learned.losses),
        "losses": [round(x, 6) for x in learned.losses],
        "added_parameters": 0,
    }
    result = weights_result(problem, merged, spec=spec, info=info, files=files, workdir=workdir)
    result.extras = {"atlas.coefficients": lam.clone()}
    return result


SPEC = AdaptSpec(
    name=NAME,
    run=run,
    params=Params,
    paper=PAPER,
    needs=frozenset({"validation"}),
    description="one learned coefficient per parameter block per task vector (supervised on validation, or entropy)",
)

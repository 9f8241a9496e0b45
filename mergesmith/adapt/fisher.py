"""Fisher merging (Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging", arXiv:2111.09832).

Per task: the diagonal empirical Fisher of the expert (encoder + the task's head) from ``num_examples`` inputs,
section 3, eq. (5): F_j = 1/N sum_n E_{y ~ p(y|x_n)} (d log p(y|x_n) / d theta_j)^2, with y drawn from the expert's
own predictive distribution ("sample", the paper's estimator), its argmax, or the exact expectation over the labels
("expected"). Each Fisher is saved as ``statistics/<task>.safetensors`` and the merge, eq. (3)
theta* = sum_i lambda_i F_i theta_i / sum_i lambda_i F_i, runs through the engine (``fisher_combine``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.problem import AdaptProblem, check_needs
from mergesmith.adapt.result import AdaptResult, weights_result
from mergesmith.adapt.statistics import data_split, engine_merge, example_batches, portable_config, save_statistics

PAPER = "Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging, arXiv:2111.09832"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_examples: int = Field(256, ge=1, description="inputs per task the Fisher is estimated from")
    labels: Literal["sample", "argmax", "expected"] = Field(
        "sample", description="y ~ the expert's prediction (paper), its argmax, or the exact expectation over labels"
    )
    data: Literal["validation", "unlabeled"] = Field("validation", description="which inputs (labels are never read)")
    fisher_floor: float = Field(1e-6, ge=0, description="lower bound on Fisher values in the merge")
    weights: list[float] | None = Field(None, description="per-task weights lambda_i (default: all 1)")
    progress: bool = Field(True, description="show a progress bar")


def diagonal_fisher(
    problem: AdaptProblem, task, encoder, params: Params, seed: int, skip: frozenset[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Eq. (5): mean over examples of the squared per-example gradient of log p(y|x), one example at a time (a
    per-example gradient needs its own backward pass; batching would square the batch's summed gradient).
    Parameters in ``skip`` get no Fisher (no gradient is computed for them)."""
    for name, p in encoder.named_parameters():
        if name in skip:
            p.requires_grad_(False)
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    tensors = [p for _, p in named]
    generator = torch.Generator().manual_seed(seed)
    split = data_split(problem, task, params.data)
    count = 0
    for batch in example_batches(problem, split, params.num_examples, 1, seed):
        log_probs = torch.log_softmax(task.head(problem.pooled(encoder, batch)), dim=-1)[0]
        probs = log_probs.detach().exp()
        if params.labels == "expected":
            # E_y[g_y^2] = sum_y p(y|x) g_y^2, exactly (one backward pass per label)
            for y in range(log_probs.shape[0]):
                grads = torch.autograd.grad(
                    log_probs[y], tensors, retain_graph=y + 1 < log_probs.shape[0], allow_unused=True
                )
                _accumulate(fisher, named, grads, float(probs[y]))
        else:
            y = (
                int(torch.multinomial(probs, 1, generator=generator))
                if params.labels == "sample"
                else int(probs.argmax())
            )
            grads = torch.autograd.grad(log_probs[y], tensors, allow_unused=True)
            _accumulate(fisher, named, grads, 1.0)
        count += 1
    return {n: f / max(1, count) for n, f in fisher.items()}


def _accumulate(fisher, named, grads, weight: float) -> None:
    for (name, _), grad in zip(named, grads):
        if grad is not None:
            fisher[name].addcmul_(grad, grad, value=weight)


def run(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    from tqdm import tqdm

    check_needs(problem, "fisher", frozenset({params.data}))
    if params.weights is not None and len(params.weights) != len(problem.tasks):
        from mergesmith.errors import ConfigError

        raise ConfigError(
            f"fisher: weights has {len(params.weights)} values for {len(problem.tasks)} tasks; give one per task"
        )
    workdir = tempfile.TemporaryDirectory(prefix="mergesmith-fisher-")
    root = Path(workdir.name)
    statistics: dict[str, Path] = {}
    info: dict = {"fisher_sum": {}, "examples_per_task": params.num_examples}
    names = None
    # A tensor every expert left at the base value (e.g. word embeddings frozen during fine-tuning) merges to that
    # value whatever the Fishers (eq. 3 of equal thetas), so its Fisher is not computed; the engine averages it.
    skip = problem.unchanged_tensors()  # streamed: Fisher itself never needs the task vectors in memory
    info["unchanged_tensors"] = len(skip)
    for i, task in enumerate(
        tqdm(problem.tasks, desc="fisher", unit="task", leave=False, disable=None if params.progress else True)
    ):
        encoder = problem.load_encoder(problem.expert_dirs[task.name])
        fisher = diagonal_fisher(problem, task, encoder, params, seed + i, skip)
        if names is None:
            names = problem.checkpoint_names(fisher)
        statistics[task.name] = save_statistics(root / "statistics" / f"{task.name}.safetensors", fisher, names)
        info["fisher_sum"][task.name] = float(sum(float(f.sum()) for f in fisher.values()))
        del encoder, fisher
    per_model = None
    if params.weights is not None:
        per_model = {t: {"weight": float(w)} for t, w in zip(problem.task_names, params.weights)}
    floating, config_path = engine_merge(
        problem, "fisher_combine", statistics, {"fisher_floor": params.fisher_floor}, root, per_model
    )
    portable = root / "merge.portable.yaml"
    portable.write_text(portable_config(config_path, statistics), encoding="utf-8")
    files = {f"statistics/{t}.safetensors": p for t, p in statistics.items()} | {"merge.yaml": portable}
    spec = {"method": "fisher", "paper": PAPER, "params": params_dict(params), "seed": seed}
    return weights_result(problem, floating, spec=spec, info=info, files=files, workdir=workdir)


SPEC = AdaptSpec(
    name="fisher",
    run=run,
    params=Params,
    paper=PAPER,
    needs=frozenset({"validation"}),
    description="Fisher-weighted averaging with diagonal Fishers from the experts' own predictions (no labels read)",
)

"""The bench's hook for methods that give one model per task (EMR-Merging, TALL masks): task t is scored with task
t's model, on validation (grid search, in memory) and on test (from the merged directory, as ``load_merged`` would
build it). Everything else about the protocol is ``bench/run.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def has_task_models(method: str) -> bool:
    from mergesmith.methods import METHODS

    return bool(METHODS[method].side_outputs)


def _score_one(evaluator, task, model) -> float | None:
    """Task ``task``'s score alone (the evaluator's featurizer and heads, one task)."""
    return type(evaluator)([task], evaluator.splits, evaluator.heads, evaluator.features)(model)[task.name]


def validation_average(
    method: str, point: dict, base_state: dict, experts: list[dict], model: torch.nn.Module, evaluator, seed: int
) -> float:
    """The mean over tasks of task t's validation score with task t's in-memory model (``model`` is reused)."""
    from mergesmith.engine.side_outputs import merge_state_dicts_per_task

    tasks = evaluator.tasks
    per_task = merge_state_dicts_per_task(
        base_state, experts, method, tasks=[t.name for t in tasks], seed=seed, **point
    )
    scores = []
    for task in tasks:
        model.load_state_dict(per_task[task.name])
        scores.append(_score_one(evaluator, task, model))
    values = [s for s in scores if s is not None]
    return sum(values) / len(values)


def test_hits(out: Path, load: Callable[[Path], torch.nn.Module], evaluator) -> dict[str, torch.Tensor | None]:
    """Every task's per-example test hits with its own model from the merged directory ``out`` (experts in task
    order)."""
    from mergesmith.engine.side_outputs import apply_task, read_tasks

    names = read_tasks(out)["tasks"]  # the expert directories' names, in the order of the bench's tasks
    hits = {}
    for task, name in zip(evaluator.tasks, names, strict=True):
        model = apply_task(load(out), out, name)
        one = type(evaluator)([task], evaluator.splits, evaluator.heads, evaluator.features)
        hits[task.name] = one.correct(model)[task.name]
    return hits

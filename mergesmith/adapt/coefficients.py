"""The training loop shared by AdaMerging and aTLAS: learn merge coefficients lambda [K tasks, G groups] by gradient
descent through theta(lambda) = theta_0 + sum_k lambda_k[g] tau_k, one batch per task per step.

Objectives:
- "entropy": AdaMerging's surrogate (Yang et al. 2024, Sec. 3.2, the entropy-minimisation objective): the Shannon
  entropy H(f(x)) = -sum_c p_c log p_c of each task head's predictions on that task's UNLABELED test inputs, summed
  over tasks, min_lambda sum_k sum_{x in B_k} H(f_{theta(lambda)}(x)) (mean over each batch);
- "supervised": aTLAS's task-addition objective (Zhang et al. 2024, Sec. 4): cross-entropy of each task head on a few
  LABELED validation examples of that task, summed over tasks.

Memory: the base and one copy of the task vectors (held by the problem) plus, per step, the merged weights and the
activations of one batch per task. Nothing here copies a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mergesmith.adapt.featurizer import TaskHead
from mergesmith.adapt.functional import combine, entropy, fixed_head_logits, functional_pooler, pooled_with
from mergesmith.errors import MergesmithError

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem

OBJECTIVES = ("entropy", "supervised")


@dataclass
class Learned:
    coefficients: Tensor  # [K, G] the final coefficients, as applied (after clamping)
    losses: list[float] = field(default_factory=list)  # the objective at each step (before that step's update)


def _cycle(problem: AdaptProblem, split: Any, batch_size: int, seed: int) -> Iterator[Any]:
    """Endless deterministic batches of ``split``: a fresh seeded shuffle per pass."""
    epoch = 0
    while True:
        yield from problem.batches(split, batch_size, shuffle=True, seed=seed * 1_000_003 + epoch)
        epoch += 1


def _logits(head: TaskHead, features: Tensor) -> Tensor:
    # The head is the task's fixed classifier (a linear or a cosine head): its parameters are frozen, so no gradient
    # is accumulated into the shared head; a head of another dtype than the features runs in the features' dtype.
    return fixed_head_logits(head, features)


def task_loss(objective: str, head: TaskHead, features: Tensor, batch: Any) -> Tensor:
    logits = _logits(head, features)
    if objective == "entropy":
        return entropy(logits)
    return nn.functional.cross_entropy(logits, batch.labels)


def learn_coefficients(
    problem: AdaptProblem,
    vectors: Sequence[dict[str, Tensor]],
    groups: dict[str, int | None],
    n_groups: int,
    *,
    objective: str,
    init: float,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    clamp: tuple[float, float] | None,
    label: str,
    progress: bool = True,
) -> Learned:
    """Adam on lambda (init ``init``), ``steps`` steps, each on one seeded batch per task (module docstring)."""
    if objective not in OBJECTIVES:
        raise MergesmithError(f"{label}: unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    base = problem.base_state()
    tasks = problem.tasks
    if len(vectors) != len(tasks):
        raise MergesmithError(f"{label}: {len(vectors)} task vectors for {len(tasks)} tasks; give one expert per task")
    split_of = (lambda t: t.unlabeled) if objective == "entropy" else (lambda t: t.validation)
    streams = [_cycle(problem, split_of(t), batch_size, seed + 7919 * i) for i, t in enumerate(tasks)]
    encoder = problem.load_encoder(problem.base_dir).requires_grad_(False)
    pooler = functional_pooler(problem, encoder)

    raw = torch.full((len(vectors), n_groups), float(init), dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([raw], lr=lr)

    def applied(x: Tensor) -> Tensor:
        # The authors' AdaMerging release clamps lambda to [0, 1] when merging; aTLAS leaves it free.
        return x.clamp(*clamp) if clamp is not None else x

    losses: list[float] = []
    bar = _progress(steps, label, progress)
    for _ in range(steps):
        params = combine(base, vectors, applied(raw), groups)
        loss = raw.new_zeros(())
        for task, stream in zip(tasks, streams):
            batch = next(stream)
            loss = loss + task_loss(objective, task.head, pooled_with(pooler, params, batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        del params, loss
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    if bar is not None:
        bar.close()
    return Learned(applied(raw.detach()).clone(), losses)


def _progress(total: int, label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=label, unit="step", leave=False, mininterval=2.0, disable=None
    )  # None: no bar off a TTY


def loss_summary(losses: Sequence[float]) -> dict:
    """First/last losses and the means of the first and last tenth (the curve is noisy: one batch per step)."""
    if not losses:
        return {}
    n = max(1, len(losses) // 10)
    return {
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_mean_first_tenth": sum(losses[:n]) / n,
        "loss_mean_last_tenth": sum(losses[-n:]) / n,
    }


__all__ = ["OBJECTIVES", "Learned", "learn_coefficients", "loss_summary", "task_loss"]

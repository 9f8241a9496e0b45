"""AdaMerging and AdaMerging++: merge coefficients learned by entropy minimisation on unlabeled test inputs.

Yang, Wang, Shen, Liu, Guo, Wang, Tao 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
arXiv:2310.02575. Steps (Sec. 3.2 of the paper):

1. task vectors tau_k = theta_k - theta_0 (task arithmetic, Ilharco et al. 2023, the paper's Eq. 1);
   AdaMerging++ replaces them by their TIES-processed versions Phi(tau_k) (trim to the top-``density`` magnitudes,
   elect the sign by summed mass, drop the entries that disagree; Yadav et al. 2023, the paper's Eq. 2), computed
   with mergesmith's own TIES steps (``methods._task_vectors``);
2. task-wise merging: theta = theta_0 + sum_k lambda_k tau_k, one coefficient per task vector;
   layer-wise merging: theta^l = theta_0^l + sum_k lambda_k^l tau_k^l, one coefficient per task vector per layer l.
   "Layer" here is a parameter TENSOR by default, as in the authors' release (one lambda per parameter tensor);
   ``grouping: layer`` shares one coefficient per transformer block instead (``adapt.functional``);
3. objective: min_lambda sum_k sum_{x in B_k} H(f_{theta(lambda)}(x)), the Shannon entropy of task k's head on its
   own unlabeled test inputs, as the surrogate of the supervised loss (their Sec. 3.2 shows entropy and loss
   correlate); lambda initialised at 0.3 and optimised with Adam (lr 1e-3), batches of 16 per task (the paper's
   settings; the CPU defaults are 30 steps of 8 inputs at lr 1e-2, see ``_Common``).
   lambda is clamped to [0, 1] when applied, as in the authors' release.

Output: the merged weights theta(lambda) (HF layout), the learned coefficients (``info`` and ``extras``), and
``adamerging.yaml``, a ``task_arithmetic`` merge config that makes ``mergesmith merge`` write the same weights
(per-model ``weight``: one number task-wise; one ``{filter: tensor name, value}`` entry per tensor layer-wise).
AdaMerging++'s TIES step has no engine equivalent (the engine's ``ties`` elects signs on the lambda-WEIGHTED task
vectors), so it gets the coefficients file only and its saved weights are the product.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.coefficients import learn_coefficients, loss_summary
from mergesmith.adapt.functional import coefficient_groups, combine, learnable_names
from mergesmith.adapt.problem import AdaptProblem, check_needs
from mergesmith.adapt.result import AdaptResult, weights_result

PAPER = "Yang et al. 2024, AdaMerging: Adaptive Model Merging for Multi-Task Learning, ICLR 2024, arXiv:2310.02575"
CONFIG_FILE = "adamerging.yaml"
COEFFICIENTS_FILE = "adamerging_coefficients.json"


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The paper runs 500 steps of 16 inputs per task at lr 1e-3 on a GPU. A step here is a forward and backward pass of
    # one batch per task through the whole encoder (about 2 s for 6 x 8 inputs on MiniLM on 2 idle cores), so the CPU
    # default is 30 steps of 8 at lr 1e-2: lambda can move 0.3 (lr x steps), most of the paper's 0.5, for 3% of its
    # passes. Raise steps and batch_size where compute allows.
    steps: int = Field(30, ge=1, description="Adam steps, one batch per task per step (the paper: 500)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate (the paper: 1e-3 over 500 steps)")
    batch_size: int = Field(8, ge=1, description="unlabeled test inputs per task per step (the paper: 16)")
    init: float = Field(0.3, description="initial lambda (the paper: 0.3)")
    clamp: bool = Field(True, description="clamp lambda to [0, 1] when applied (the authors' release does)")
    progress: bool = Field(True, description="show a progress bar")


class TaskwiseParams(_Common):
    pass


class LayerwiseParams(_Common):
    grouping: Literal["tensor", "layer"] = Field(
        "tensor", description="one lambda per parameter tensor (the authors' release) or per transformer block"
    )


class PlusPlusParams(_Common):
    grouping: Literal["task", "tensor", "layer"] = Field("tensor", description="task-wise or layer-wise AdaMerging++")
    density: float = Field(0.2, gt=0, le=1, description="TIES trim: fraction of each task vector kept (the paper: 0.2)")


def ties_processed(
    base: dict[str, Tensor], vectors: list[dict[str, Tensor]], density: float
) -> list[dict[str, Tensor]]:
    """Phi(tau_k): each task vector trimmed to its top-``density`` magnitudes and restricted to the entries that agree
    with the elected sign (TIES steps 1-3 without the final mean), per tensor, with mergesmith's TIES functions."""
    from mergesmith.methods import _task_vectors as tv

    out: list[dict[str, Tensor]] = [{} for _ in vectors]
    for name in base:
        stacked = torch.stack([v[name] for v in vectors])
        zero = torch.zeros_like(stacked[0])

        def blocks(stacked=stacked, zero=zero):  # one block: the task vectors themselves (experts over a zero base)
            yield zero, list(stacked)

        for k, band in enumerate(tv.magnitude_bands(blocks, [density] * len(vectors), False)):
            tv.keep_band(stacked[k], band)  # trim
        stacked.mul_(tv.agreement(stacked, "sum").to(stacked.dtype))  # elect sign, keep the agreeing entries
        for k in range(len(vectors)):
            out[k][name] = stacked[k]
    return out


def engine_config(problem: AdaptProblem, coefficients: Tensor, groups: dict[str, int | None], scheme: str) -> dict:
    """A ``task_arithmetic`` config (normalize false, lambda 1) whose per-model weights are the learned lambdas, so the
    engine computes theta_0 + sum_k lambda_k[g(name)] tau_k exactly as ``combine`` does."""
    models = []
    # Filters name the tensors as the checkpoint FILES do (a checkpoint saved from a task model prefixes them, e.g.
    # ``bert.encoder...``). Longest names first: a filter matches any tensor whose name CONTAINS it, and a longer name
    # can never be contained in a shorter one, so each tensor resolves to its own entry; frozen tensors fall to the
    # catch-all 0 (their task vectors are zero, so any weight gives the base).
    on_disk = problem.checkpoint_names([n for n, g in groups.items() if g is not None])
    names = sorted(on_disk, key=lambda n: (-len(on_disk[n]), on_disk[n]))
    for k, path in enumerate(problem.expert_dirs.values()):
        if scheme == "task":
            weight: Any = float(coefficients[k, 0])
        else:
            weight = [{"filter": on_disk[n], "value": float(coefficients[k, groups[n]])} for n in names] + [
                {"value": 0.0}
            ]
        models.append({"model": str(path), "parameters": {"weight": weight}})
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(problem.base_dir),
        "models": models,
        "parameters": {"normalize": False, "lambda": 1.0},
        "dtype": "float32",
    }


def coefficient_table(problem: AdaptProblem, coefficients: Tensor, labels: list[str], scheme: str) -> dict:
    if scheme == "task":
        return {t: float(coefficients[k, 0]) for k, t in enumerate(problem.task_names)}
    return {
        t: {label: float(coefficients[k, g]) for g, label in enumerate(labels)}
        for k, t in enumerate(problem.task_names)
    }


def run_adamerging(
    problem: AdaptProblem, params: Any, seed: int, *, name: str, scheme: str, plusplus: bool
) -> AdaptResult:
    check_needs(problem, name, frozenset({"unlabeled"}))
    base = problem.base_state()
    vectors_by_task = problem.task_vectors()
    vectors = [vectors_by_task[t] for t in problem.task_names]  # tau_k (Eq. 1), held once by the problem
    if plusplus:
        vectors = ties_processed(base, vectors, params.density)  # Phi(tau_k) (Eq. 2)
    learnable = learnable_names(base, vectors)
    index, labels = coefficient_groups(learnable, scheme)
    groups: dict[str, int | None] = {n: index.get(n) for n in base}

    learned = learn_coefficients(
        problem,
        vectors,
        groups,
        len(labels),
        objective="entropy",
        init=params.init,
        steps=params.steps,
        lr=params.lr,
        batch_size=params.batch_size,
        seed=seed,
        clamp=(0.0, 1.0) if params.clamp else None,
        label=name,
        progress=params.progress,
    )
    lam = learned.coefficients
    with torch.no_grad():
        merged = combine(base, vectors, lam, groups)  # theta(lambda*) (task-wise / layer-wise merging)
        merged = {k: v.detach().clone() for k, v in merged.items()}

    table = coefficient_table(problem, lam, labels, scheme)
    workdir = tempfile.TemporaryDirectory(prefix="mergesmith-adamerging-")
    files = {COEFFICIENTS_FILE: Path(workdir.name) / COEFFICIENTS_FILE}
    files[COEFFICIENTS_FILE].write_text(
        json.dumps({"method": name, "grouping": scheme, "groups": labels, "coefficients": table}, indent=2) + "\n",
        encoding="utf-8",
    )
    if not plusplus:
        files[CONFIG_FILE] = Path(workdir.name) / CONFIG_FILE
        files[CONFIG_FILE].write_text(
            yaml.safe_dump(engine_config(problem, lam, groups, scheme), sort_keys=False), encoding="utf-8"
        )
    spec = {
        "method": name,
        "paper": PAPER,
        "params": params_dict(params),
        "seed": seed,
        "grouping": scheme,
        "groups": labels,
    }
    info = {
        "coefficients": table,
        "groups": len(labels),
        "learnable_tensors": len(learnable),
        "frozen_tensors": len(base) - len(learnable),
        "steps": params.steps,
        **loss_summary(learned.losses),
        "losses": [round(x, 6) for x in learned.losses],
        "added_parameters": 0,
    }
    if plusplus:
        info["note"] = (
            f"TIES-processed task vectors (density {params.density:g}) are held beside the problem's task vectors; "
            "the engine has no exact equivalent of AdaMerging++, so the saved weights are the product"
        )
    result = weights_result(problem, merged, spec=spec, info=info, files=files, workdir=workdir)
    result.extras = {"adamerging.coefficients": lam.clone()}
    return result


def _run_taskwise(problem: AdaptProblem, params: Any, seed: int) -> AdaptResult:
    return run_adamerging(problem, params, seed, name="adamerging_taskwise", scheme="task", plusplus=False)


def _run_layerwise(problem: AdaptProblem, params: Any, seed: int) -> AdaptResult:
    return run_adamerging(problem, params, seed, name="adamerging_layerwise", scheme=params.grouping, plusplus=False)


def _run_plusplus(problem: AdaptProblem, params: Any, seed: int) -> AdaptResult:
    return run_adamerging(problem, params, seed, name="adamerging_plusplus", scheme=params.grouping, plusplus=True)


TASKWISE = AdaptSpec(
    name="adamerging_taskwise",
    run=_run_taskwise,
    params=TaskwiseParams,
    paper=PAPER,
    needs=frozenset({"unlabeled"}),
    description="one coefficient per task vector, learned by entropy minimisation on unlabeled test inputs",
)
LAYERWISE = AdaptSpec(
    name="adamerging_layerwise",
    run=_run_layerwise,
    params=LayerwiseParams,
    paper=PAPER,
    needs=frozenset({"unlabeled"}),
    description="one coefficient per task vector per parameter tensor (or block), learned by entropy minimisation",
)
PLUSPLUS = AdaptSpec(
    name="adamerging_plusplus",
    run=_run_plusplus,
    params=PlusPlusParams,
    paper=PAPER,
    needs=frozenset({"unlabeled"}),
    description="layer-wise AdaMerging over TIES-trimmed, sign-elected task vectors",
)
SPECS = (TASKWISE, LAYERWISE, PLUSPLUS)

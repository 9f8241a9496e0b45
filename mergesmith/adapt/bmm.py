"""Bayesian Model Merging (Li, Han, Su & Ji 2026, "Bayesian Model Merging", arXiv:2605.12843).

Inner level (activation-based Bayesian regression under an anchor prior): for every linear module, with expert
weights W_i (nn.Linear layout [out, in]), input Grams G_i = X_i^T X_i and a Gaussian prior on W centred on the anchor
merge W_a (task arithmetic by default) with precision lambda, the posterior mean (MAP) is
    W^T = argmin_W sum_i ||X_i W^T - X_i W_i^T||^2 + lambda ||W - W_a||^2 = (sum_i G_i + lambda I)^-1 (sum_i G_i W_i^T + lambda W_a^T).
lambda -> inf gives the anchor, lambda = 0 gives RegMean (alpha = 1). lambda = rho * mean(diag(sum_i G_i)) so that
rho is comparable across modules of different activation scale.
Outer level: the module-specific rho's are searched by Bayesian optimisation (optuna's TPE sampler, seeded) to
maximise the average accuracy of the task heads on a small labeled validation subset.
Data-free variant: the Grams are estimated from the task vectors, G_i ~ tau_i^T tau_i (tau_i = W_i - W_base), the
alignment between activation statistics and task vectors the paper reports (as in WUDI-merging, Cheng et al. 2025,
arXiv:2503.08099, where a task vector's rows span its inputs' subspace).

Linear modules are ``nn.Linear`` and GPT-2's ``Conv1D``; a Conv1D weight is stored [in, out], so its regression (and
its data-free Gram) is computed on the [out, in] view and the solution turned back (``statistics.linear_layout``).

Our reading of the paper is from its abstract and the brief (the full text was not available offline): the regression
form above, per-module rho's grouped by module kind or layer, the anchor's values for every non-linear tensor.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.modules import is_conv1d
from mergesmith.adapt.problem import AdaptProblem, check_needs
from mergesmith.adapt.result import AdaptResult, weights_result
from mergesmith.adapt.statistics import example_batches, linear_layout, linear_modules
from mergesmith.methods.regmean_combine import solve_regression

PAPER = "Li, Han, Su & Ji 2026, Bayesian Model Merging, arXiv:2605.12843"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor_scale: float = Field(0.3, description="task arithmetic anchor: base + anchor_scale * sum of task vectors")
    rho: float = Field(1.0, gt=0, description="prior precision relative to mean diag(sum G) when not searched")
    trials: int = Field(24, ge=0, description="Bayesian-optimisation trials (0: use rho everywhere)")
    rho_range: tuple[float, float] = Field((1e-3, 1e2), description="search range of rho (log-uniform)")
    groups: Literal["kind", "layer", "module", "single"] = Field(
        "kind",
        description="which modules share a rho: same module kind (e.g. attention.self.query), layer, each module, or one",
    )
    num_examples: int = Field(256, ge=1, description="inputs per task for the Grams (data variant)")
    val_examples: int = Field(64, ge=1, description="labeled validation examples per task scored by each BO trial")
    ridge: float = Field(1e-6, gt=0, description="ridge for a singular system, relative to its mean diagonal")
    batch_size: int = Field(32, ge=1)
    progress: bool = Field(True, description="show a progress bar")


# --- the inner level: pure math ---------------------------------------------------------------------------------------


class Sufficient:
    """What the posterior mean of one module needs from the experts, whatever rho: sum_i G_i and sum_i G_i W_i^T
    (float64), accumulated one expert at a time. The Bayesian-optimisation loop re-solves every module per trial
    from these, so neither the per-task Grams nor the expert weights are held during the search."""

    def __init__(self) -> None:
        self.gram_sum: Tensor | None = None
        self.cross_sum: Tensor | None = None

    def add(self, gram: Tensor, weight: Tensor) -> None:
        g = gram.double()
        cross = g @ weight.double().T
        if self.gram_sum is None or self.cross_sum is None:
            self.gram_sum, self.cross_sum = g.clone(), cross
        else:
            self.gram_sum += g
            self.cross_sum += cross


def bmm_solve(stats: Sufficient, anchor: Tensor, rho: float, ridge: float = 1e-6) -> tuple[Tensor, bool]:
    """The posterior mean for one linear module (module docstring's equation); ``rho`` = inf returns the anchor."""
    if rho == float("inf"):
        return anchor.clone(), False
    total, cross = stats.gram_sum, stats.cross_sum
    assert total is not None and cross is not None, "bmm_solve needs the statistics of at least one expert"
    scale = float(torch.diagonal(total).mean())
    lam = rho * (scale if scale > 0 else 1.0)
    lhs = total + lam * torch.eye(total.shape[0], dtype=total.dtype)
    rhs = cross + lam * anchor.double().T
    solution, regularised = solve_regression(lhs, rhs, ridge)
    return solution.T.to(anchor.dtype), regularised


def bmm_weight(
    weights: list[Tensor], grams: list[Tensor], anchor: Tensor, rho: float, ridge: float = 1e-6
) -> tuple[Tensor, bool]:
    """``bmm_solve`` from the experts' weights ([out, in]) and Grams of one module."""
    stats = Sufficient()
    for g, w in zip(grams, weights):
        stats.add(g, w)
    return bmm_solve(stats, anchor, rho, ridge)


def datafree_gram(task_vector: Tensor) -> Tensor:
    """G_i ~ tau_i^T tau_i ([in, in]) for a linear weight's task vector tau_i ([out, in])."""
    tau = task_vector.double()
    return (tau.T @ tau).float()  # formed in float64, kept in float32


def group_of(module: str, mode: str) -> str:
    from mergesmith.engine.layers import parse_layer

    if mode == "single":
        return "all"
    if mode == "module":
        return module
    layer = parse_layer(module + ".weight")
    if layer is None:
        return module  # outside the layer stack (a pooler): its own group
    if mode == "layer":
        return f"{layer.prefix}{layer.index}"
    return layer.rest[: -len(".weight")]


# --- the outer level ---------------------------------------------------------------------------------------------------


def _validation_score(problem: AdaptProblem, encoder, params: Params, seed: int) -> float:
    scores = []
    with torch.no_grad():
        for i, task in enumerate(problem.tasks):
            right = total = 0
            for batch in example_batches(
                problem, task.validation, params.val_examples, params.batch_size, seed + 7919 * (i + 1)
            ):
                predicted = task.head(problem.pooled(encoder, batch)).argmax(-1)
                right += int((predicted == batch.labels).sum())
                total += len(batch)
            scores.append(right / max(1, total))
    return sum(scores) / len(scores)


def run_bmm(problem: AdaptProblem, params: Params, seed: int, *, datafree: bool) -> AdaptResult:
    from tqdm import tqdm

    from mergesmith.adapt.regmean import Params as RegMeanParams, task_grams

    method = "bmm_datafree" if datafree else "bmm"
    searching = params.trials > 0
    needs = ({"validation"} if searching else set()) | (set() if datafree else {"validation"})
    check_needs(problem, method, frozenset(needs))
    base = problem.base_state()
    tasks = problem.tasks
    encoder = problem.load_encoder(problem.base_dir)
    modules = linear_modules(encoder, method)
    weight_of = {m: f"{m}.weight" for m in modules}
    conv1d = {weight_of[m] for m, module in modules.items() if is_conv1d(module)}  # stored [in, out]

    # One expert at a time (memory: base, anchor, this expert, the sufficient statistics; never every task vector).
    # Anchor: task arithmetic (Ilharco et al. 2023), base + s * sum_i tau_i; its values stand for every other tensor.
    anchor = {k: b.clone() for k, b in base.items()}
    stats = {weight_of[m]: Sufficient() for m in modules}
    gram_params = RegMeanParams(num_examples=params.num_examples, data="validation", batch_size=params.batch_size)
    for i, task in enumerate(
        tqdm(tasks, desc=f"{method} statistics", unit="task", leave=False, disable=None if params.progress else True)
    ):
        expert = problem.expert_state(task.name)
        for k, b in base.items():
            anchor[k].add_(expert[k] - b, alpha=params.anchor_scale)
        if datafree:
            grams = {w: datafree_gram(linear_layout(expert[w] - base[w], w in conv1d)) for w in stats}
        else:
            found = task_grams(problem, task, encoder, modules, gram_params, seed + i, state=expert)
            grams = {weight_of[m]: g for m, g in found.items()}
            del found
        for w, g in grams.items():
            stats[w].add(g, linear_layout(expert[w], w in conv1d))
        del expert, grams
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(group_of(m, params.groups), []).append(weight_of[m])

    regularised: set[str] = set()

    def merged_state(rhos: dict[str, float]) -> dict[str, Tensor]:
        state = dict(anchor)
        for group, names in groups.items():
            for w in names:
                c = w in conv1d
                # solved in nn.Linear layout, stored layout back
                solution, singular = bmm_solve(stats[w], linear_layout(anchor[w], c), rhos[group], params.ridge)
                state[w] = linear_layout(solution, c).contiguous() if c else solution
                if singular:
                    regularised.add(w)
        return state

    trials_log: list[dict] = []
    best_rhos = {g: params.rho for g in groups}
    if searching:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        scorer = problem.load_encoder(problem.base_dir)
        low, high = params.rho_range

        def objective(trial) -> float:
            rhos = {g: trial.suggest_float(g, low, high, log=True) for g in groups}
            with torch.no_grad():
                scorer.load_state_dict(problem.full_state(merged_state(rhos)), strict=False)
            score = _validation_score(problem, scorer, params, seed)
            trials_log.append({"rho": rhos, "validation": score})
            return score

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.enqueue_trial({g: min(max(params.rho, low), high) for g in groups})  # start from the default rho
        study.optimize(objective, n_trials=params.trials, show_progress_bar=False)
        best_rhos = dict(study.best_params)
        del scorer
    regularised.clear()
    final = merged_state(best_rhos)
    info: dict = {
        "rho": best_rhos,
        "groups": {g: len(v) for g, v in groups.items()},
        "linear_layers": len(modules),
        "gram_source": "task vectors (data-free)" if datafree else f"{params.num_examples} validation inputs per task",
    }
    if conv1d:
        info["conv1d_layers"] = len(conv1d)
    if searching:
        info["bo"] = {
            "sampler": "optuna TPE",
            "trials": len(trials_log),
            "best_validation": max(t["validation"] for t in trials_log),
            "history": [round(t["validation"], 4) for t in trials_log],
        }
    if regularised:
        info["regularised"] = sorted(regularised)
        info["warning"] = f"{len(regularised)} singular system(s) got a ridge of {params.ridge:g} x mean diagonal"
    spec = {"method": method, "paper": PAPER, "params": params_dict(params), "seed": seed}
    return weights_result(problem, final, spec=spec, info=info)


def run(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    return run_bmm(problem, params, seed, datafree=False)


def run_datafree(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    return run_bmm(problem, params, seed, datafree=True)


SPEC = AdaptSpec(
    name="bmm",
    run=run,
    params=Params,
    paper=PAPER,
    needs=frozenset({"validation"}),
    description="regression toward a task-arithmetic anchor per linear module; module-wise priors by Bayesian optimisation",
)

SPEC_DATAFREE = AdaptSpec(
    name="bmm_datafree",
    run=run_datafree,
    params=Params,
    paper=PAPER,
    needs=frozenset({"validation"}),
    description="BMM with Grams estimated from the task vectors (tau^T tau); validation only for the prior search",
)

"""RegMean (Jin et al. 2023, arXiv:2212.09849) and RegMean++ (Nguyen et al. 2025, arXiv:2508.03121).

RegMean, eq. (2)-(3): every linear layer is merged by the closed-form regression W* = (sum_i G_i)^-1 sum_i G_i W_i,
with G_i = X_i^T X_i the Gram of the layer's inputs on task i's data, recorded with forward hooks on expert i, and the
off-diagonal entries scaled by alpha (section 3.2); every other tensor is averaged.

RegMean++ keeps the objective but takes X_i from the MERGED model: the inputs to layer l's linear modules are what
expert i's layer l computes from the merged model's layers < l (cross-layer dependency; the intra-layer inputs stay
expert i's own sub-modules), so layers are merged in order, from the embeddings up.

Both save each task's Grams as ``statistics/<task>.safetensors`` (``<linear weight name>`` -> [in, in]) and the final
checkpoint is written by the engine's ``regmean_combine`` from the weights and those Grams.

GPT-2's ``Conv1D`` layers are linear layers too, but store their weight [in, out] (the paper's own layout); the merge
config gives each of them ``input_axis: 0`` (a per-tensor filter), so ``regmean_combine`` reads their Grams and
solves them in that layout, and ``mergesmith merge merge.yaml`` rebuilds every weight.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.modules import is_conv1d
from mergesmith.adapt.problem import AdaptProblem, check_needs
from mergesmith.adapt.result import AdaptResult, weights_result
from mergesmith.adapt.statistics import (
    AllCollected,
    GramCollector,
    data_split,
    engine_merge,
    example_batches,
    linear_modules,
    portable_config,
    save_statistics,
)
from mergesmith.methods.regmean_combine import regmean_weight_in_layout

PAPER = "Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models, arXiv:2212.09849"
PAPER_PP = (
    "Nguyen et al. 2025, RegMean++: Enhancing Effectiveness and Generalization of Regression Mean for Model "
    "Merging, arXiv:2508.03121"
)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_examples: int = Field(256, ge=1, description="inputs per task the Grams are computed from")
    alpha: float = Field(0.95, ge=0, le=1, description="off-diagonal scale of the Grams (FusionBench's CLIP default)")
    ridge: float = Field(1e-4, gt=0, description="ridge for a singular Gram sum, relative to its mean diagonal")
    data: Literal["validation", "unlabeled"] = Field("validation", description="which inputs (labels are never read)")
    batch_size: int = Field(32, ge=1)
    progress: bool = Field(True, description="show a progress bar")


def _forward(problem: AdaptProblem, encoder, state: dict[str, Tensor] | None, batch) -> None:
    from torch.func import functional_call

    with torch.no_grad():
        try:
            if state is None:
                encoder(**problem.forward_kwargs(batch))
            else:
                functional_call(encoder, state, args=(), kwargs=problem.forward_kwargs(batch), strict=False)
        except AllCollected:  # every watched module saw the batch; later layers are not needed
            pass


def task_grams(
    problem: AdaptProblem,
    task,
    encoder,
    modules: dict,
    params: Params,
    seed: int,
    state: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Module name -> mean Gram of the module's inputs on the task's data (``state`` overrides the encoder's weights)."""
    split = data_split(problem, task, params.data)
    with GramCollector(modules, stop_early=True) as collector:
        for batch in example_batches(problem, split, params.num_examples, params.batch_size, seed):
            collector.set_batch(problem, batch)
            _forward(problem, encoder, state, batch)
        return collector.grams()


def regmean_weight_stored(
    weights: list[Tensor], grams: list[Tensor], alpha: float, ridge: float, conv1d: bool
) -> tuple[Tensor, bool]:
    """``regmean_weight`` for weights in their stored layout (a GPT-2 Conv1D weight is [in, out])."""
    return regmean_weight_in_layout(weights, grams, alpha, ridge, 0 if conv1d else 1)


def layout_parameters(conv1d: set[str], names: dict[str, str]) -> dict:
    """The merge config's ``input_axis``: 0 for each Conv1D weight (filtered by its checkpoint name), else 1."""
    if not conv1d:
        return {}
    entries = [{"filter": names[w], "value": 0} for w in sorted(conv1d) if w in names]
    return {"input_axis": entries + [{"value": 1}]}


def stage_of(name: str, stack: str | None, depth: int) -> int:
    """Where a tensor sits in RegMean++'s layer order: -1 before the layer stack (embeddings), its layer index inside
    it, ``depth`` after it (pooler, final norm)."""
    from mergesmith.engine.layers import is_pre_stack, parse_layer

    layer = parse_layer(name)
    if layer is not None and layer.prefix == stack:
        return layer.index
    return -1 if is_pre_stack(name) else depth


def run_regmean(problem: AdaptProblem, params: Params, seed: int, *, plusplus: bool) -> AdaptResult:
    method = "regmean_plusplus" if plusplus else "regmean"
    check_needs(problem, method, frozenset({params.data}))
    workdir = tempfile.TemporaryDirectory(prefix=f"mergesmith-{method}-")
    root = Path(workdir.name)
    encoder = problem.load_encoder(problem.base_dir)
    modules = linear_modules(encoder, method)
    weight_of = {m: f"{m}.weight" for m in modules}
    linear_weights = set(weight_of.values())
    conv1d = {weight_of[m] for m, module in modules.items() if is_conv1d(module)}
    names = problem.checkpoint_names(linear_weights)
    info: dict = {"linear_layers": len(modules)}
    if conv1d:
        info["conv1d_layers"] = len(conv1d)
    if plusplus:
        statistics, merged, regularised = _plusplus_statistics(
            problem, params, seed, encoder, modules, root, names, conv1d
        )
    else:
        statistics = _regmean_statistics(problem, params, seed, encoder, modules, root, names)
        merged, regularised = None, _singular_sums(statistics, names, params)
    del encoder
    parameters = {"alpha": params.alpha, "ridge": params.ridge, **layout_parameters(conv1d, names)}
    floating, config_path = engine_merge(problem, "regmean_combine", statistics, parameters, root)
    portable = root / "merge.portable.yaml"
    portable.write_text(portable_config(config_path, statistics), encoding="utf-8")
    files = {f"statistics/{t}.safetensors": p for t, p in statistics.items()} | {"merge.yaml": portable}
    info["regularised"] = regularised
    if regularised:
        info["warning"] = (
            f"{len(regularised)} Gram sum(s) were singular and got a ridge of {params.ridge:g} x mean "
            f"diagonal, e.g. {regularised[0]}"
        )
    solved = sorted(w for w in linear_weights if w in names)
    if merged is not None and solved:  # RegMean++'s layer sweep solved in memory: the engine's solution must agree
        info["engine_max_abs_difference"] = max(float((floating[k] - merged[k]).abs().max()) for k in solved)
    spec = {"method": method, "paper": PAPER_PP if plusplus else PAPER, "params": params_dict(params), "seed": seed}
    return weights_result(problem, floating, spec=spec, info=info, files=files, workdir=workdir)


def _regmean_statistics(
    problem: AdaptProblem, params: Params, seed: int, encoder, modules: dict, root: Path, names: dict[str, str]
) -> dict[str, Path]:
    """Each task's Grams, recorded on its expert and written to disk before the next task: memory holds the base
    encoder, one expert's weights and one task's Grams; the engine then streams weights and Grams (section 3)."""
    from tqdm import tqdm

    statistics: dict[str, Path] = {}
    for i, task in enumerate(
        tqdm(problem.tasks, desc="regmean", unit="task", leave=False, disable=None if params.progress else True)
    ):
        expert = {k: v for k, v in problem.load_encoder(problem.expert_dirs[task.name]).state_dict().items()}
        found = task_grams(problem, task, encoder, modules, params, seed + i, state=expert)
        del expert
        statistics[task.name] = save_statistics(
            root / "statistics" / f"{task.name}.safetensors", {f"{m}.weight": g for m, g in found.items()}, names
        )
        del found
    return statistics


def _singular_sums(statistics: dict[str, Path], names: dict[str, str], params: Params) -> list[str]:
    """The linear weights whose Gram sum is singular (the engine regularises them with the ridge), read one
    weight at a time from the statistics files."""
    from safetensors import safe_open

    from mergesmith.methods import _task_vectors as tv
    from mergesmith.methods.regmean_combine import is_singular, reduce_off_diagonal

    handles = [safe_open(str(p), framework="pt") for p in statistics.values()]
    singular = []
    for weight, stored in sorted(names.items()):
        if stored not in handles[0].keys():
            continue
        total = tv.sum_in_order(reduce_off_diagonal(h.get_tensor(stored).double(), params.alpha) for h in handles)
        if is_singular(total):  # the test regmean_weight applies before its ridge
            singular.append(weight)
    return singular


def _plusplus_statistics(
    problem: AdaptProblem,
    params: Params,
    seed: int,
    encoder,
    modules: dict,
    root: Path,
    names: dict[str, str],
    conv1d: set[str],
) -> tuple[dict[str, Path], dict[str, Tensor], list[str]]:
    """RegMean++: layers merged in order, each task's Grams taken from a model whose earlier layers are merged.

    Memory: the base, the merged weights so far, and one stage's Grams and expert tensors of every task; the
    experts are read again for each stage rather than held, and each stage's Grams go to disk once it is solved."""
    from tqdm import tqdm

    from mergesmith.engine.layers import layer_counts, main_stack

    base = problem.base_state()
    tasks = problem.tasks
    weight_of = {m: f"{m}.weight" for m in modules}
    linear_weights = set(weight_of.values())
    n = len(tasks)

    # Section 3: every tensor that is not a linear layer's weight is averaged.
    others = [k for k in base if k not in linear_weights]
    merged = {k: torch.zeros_like(base[k]) for k in others}
    for task in tasks:
        expert = problem.expert_state(task.name, others)
        for k in others:
            merged[k].add_(expert[k])
        del expert
    for k in others:
        merged[k].div_(n)
    regularised: list[str] = []
    stack = main_stack(list(base))
    depth = layer_counts(list(base)).get(stack, 0) if stack else 0
    stage_index = {k: stage_of(k, stack, depth) for k in base}
    stages = sorted({stage_index[weight_of[m]] for m in modules})
    stage_files: dict[str, list[Path]] = {t.name: [] for t in tasks}
    for stage in tqdm(
        stages, desc="regmean_plusplus", unit="stage", leave=False, disable=None if params.progress else True
    ):
        stage_modules = {m: mod for m, mod in modules.items() if stage_index[weight_of[m]] == stage}
        grams: dict[str, dict[str, Tensor]] = {}
        stage_weights: dict[str, dict[str, Tensor]] = {}
        own_keys = [k for k in base if stage_index[k] == stage]
        for i, task in enumerate(tasks):
            # Layers before this stage are the merged model's, this layer is expert i's. Later layers cannot change
            # this stage's inputs (and the forward stops once they are collected): they keep the base's tensors.
            own = problem.expert_state(task.name, own_keys)
            hybrid = {k: merged[k] if stage_index[k] < stage else own.get(k, b) for k, b in base.items()}
            found = task_grams(problem, task, encoder, stage_modules, params, seed + i, state=hybrid)
            grams[task.name] = {weight_of[m]: g for m, g in found.items()}
            stage_weights[task.name] = {weight_of[m]: own[weight_of[m]] for m in stage_modules}
            del hybrid, found, own
        for m in stage_modules:
            w = weight_of[m]
            weights = [stage_weights[t.name][w] for t in tasks]
            merged[w], singular = regmean_weight_stored(
                weights, [grams[t.name][w] for t in tasks], params.alpha, params.ridge, conv1d=w in conv1d
            )
            if singular:
                regularised.append(w)
        for t in tasks:
            path = root / "stages" / f"{t.name}.{len(stage_files[t.name])}.safetensors"
            stage_files[t.name].append(save_statistics(path, grams[t.name], names))
        del grams, stage_weights
    statistics = {
        t.name: _join_statistics(stage_files[t.name], root / "statistics" / f"{t.name}.safetensors") for t in tasks
    }
    return statistics, merged, regularised


def _join_statistics(parts: list[Path], path: Path) -> Path:
    """One statistics file from per-stage files (already keyed by the checkpoints' names); the parts are removed."""
    from safetensors.torch import load_file, save_file

    joined: dict[str, Tensor] = {}
    for part in parts:
        joined.update(load_file(str(part)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(joined, str(path), metadata={"format": "pt"})
    for part in parts:
        part.unlink()
    return path


def run(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    return run_regmean(problem, params, seed, plusplus=False)


def run_plusplus(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    return run_regmean(problem, params, seed, plusplus=True)


SPEC = AdaptSpec(
    name="regmean",
    run=run,
    params=Params,
    paper=PAPER,
    needs=frozenset({"validation"}),
    description="closed-form regression merge of every linear layer from the experts' input Grams; others averaged",
)

SPEC_PLUSPLUS = AdaptSpec(
    name="regmean_plusplus",
    run=run_plusplus,
    params=Params,
    paper=PAPER_PP,
    needs=frozenset({"validation"}),
    description="RegMean with each layer's inputs computed by the merged model's earlier layers",
)

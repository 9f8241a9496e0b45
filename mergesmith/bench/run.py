"""``mergesmith bench``: build (or reuse) the task data and expert zoo, merge with each method, evaluate, report.

Both the built-in profiles (the cached zoo) and a user's pool YAML (``mergesmith.bench.pool``) become one ``Pool``;
everything after that is the same code path.

Protocol (DESIGN.md section 4):
- the encoder is merged, heads stay task-specific: a merged model is scored on task t with expert t's head;
- a method's grid point is chosen on the validation split (in-memory merges with the same method functions);
  the chosen point is then merged through the streaming engine from a YAML config in its own process
  (``mergesmith merge``; its wall time and peak RSS are the row's cost), and scored once on the test split; no test
  label is seen before that;
- every row keeps its per-example test hits (``predictions.safetensors``) and carries a paired-bootstrap interval
  of its difference from task arithmetic (``mergesmith.bench.paired``);
- normalized accuracy = merged accuracy / the task's expert accuracy, averaged over tasks.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from mergesmith.bench import per_task
from mergesmith.bench.adapt_rows import adapt_row, is_adapt_method
from mergesmith.bench.fixed_rows import cache_file, fixed_row_hits
from mergesmith.bench.grids import (
    DEFAULT_METHODS,
    GRID_EXAMPLES_PER_TASK,
    METHOD_SETS,
    MINI_METHODS,
    choose_point,
    expand_method_sets,
    grid_points,
)
from mergesmith.bench.load import DEFAULT_PROTOCOL, check_protocol, profile_pool
from mergesmith.bench.merge_process import MERGE_PROCESS_PEAK, measure_merge
from mergesmith.bench.method_args import grid_with, method_parameters
from mergesmith.bench.paired import CONFIDENCE, SAMPLES, attach_comparisons, hit_rates
from mergesmith.bench.predictions import FILE_NAME as PREDICTIONS_FILE, write_predictions
from mergesmith.bench.scoring import Evaluator, average as _average, normalized as _normalized
from mergesmith.errors import MergesmithError


def resolve_methods(requested: list[str] | None, profile: str, n_experts: int) -> list[str]:
    from mergesmith.adapt import ADAPT_METHODS
    from mergesmith.methods import METHODS

    methods = (
        expand_method_sets(list(requested))
        if requested
        else list(MINI_METHODS if profile == "mini" else DEFAULT_METHODS)
    )
    for name in methods:
        if name in ADAPT_METHODS:  # data-driven methods: mergesmith.bench.adapt_rows
            continue
        if name not in METHODS:
            known = ", ".join(sorted(METHODS))
            raise MergesmithError(
                f"unknown method {name!r} for --methods; known: {known}; adapt methods: {', '.join(sorted(ADAPT_METHODS))}"
            )
        spec = METHODS[name]
        if spec.max_models is not None and spec.max_models < n_experts:
            raise MergesmithError(
                f"{name} merges at most {spec.max_models} model(s) besides the base; the bench has {n_experts} experts"
            )
    return methods


def _params_with_defaults(method: str, point: dict) -> dict:
    """A grid point with a required per-model ``weight`` of 1.0 (``with_equal_weights``), so any method can run
    without a grid entry; another required parameter must come from the grid."""
    from mergesmith.methods import METHODS
    from mergesmith.methods._spec import param_infos, with_equal_weights

    filled = with_equal_weights(METHODS[method].params, point)
    missing = [
        name for name, info in param_infos(METHODS[method].params).items() if info.required and name not in filled
    ]
    if missing:
        raise MergesmithError(f"the bench has no grid for {method}'s required parameter {missing[0]!r}")
    return filled


def merge_config(method: str, params: dict, pool, tasks: list, seed: int) -> dict:
    """The engine's YAML config for ``method``; ``pool`` has ``base_dir`` and ``experts`` (task name -> directory)."""
    from mergesmith.methods import METHODS
    from mergesmith.methods._spec import param_infos

    spec = METHODS[method]
    infos = param_infos(spec.params)
    per_model = {k: v for k, v in params.items() if infos[k].per_model}
    global_params = {k: v for k, v in params.items() if not infos[k].per_model}
    config: dict = {"merge_method": method, "dtype": "float32", "seed": seed}
    if spec.base != "unused":
        config["base_model"] = str(pool.base_dir)

    def own(i: int) -> dict:  # a per-model list (``--methods ties:density=[0.2,0.5]``) gives model i its value
        return {k: v[i] if isinstance(v, (list, tuple)) else v for k, v in per_model.items()}

    config["models"] = [
        {"model": str(pool.experts[t.name]), **({"parameters": own(i)} if per_model else {})}
        for i, t in enumerate(tasks)
    ]
    if global_params:
        config["parameters"] = global_params
    return config


def run_bench(
    *,
    profile: str | None = None,
    pool: str | Path | None = None,
    methods: list[str] | None = None,
    method_params: dict[str, dict] | None = None,
    run_dir: Path,
    cache_dir: Path | None = None,
    seed: int = 0,
    keep_models: bool = False,
    protocol: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the bench on a built-in profile (default: "default") or on the user pool described by the YAML ``pool``.
    ``protocol``: the built-in zoo's protocol (``zero_shot``, the default, or ``probe``); a pool file names its own.

    ``method_params``: method -> parameters given for it (``mergesmith.bench.method_args``): fixed axes of a
    tensor-wise method's grid, or an adapt method's parameters."""
    from transformers.utils import logging as hf_logging

    from mergesmith.api import merge_state_dicts
    from mergesmith.bench.report import format_table, write_outputs
    from mergesmith.bench.sources import default_cache_dir, ensure_writable
    from mergesmith.bench.tasks import PROFILES, build_tasks, task_facts

    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if pool is not None and profile is not None:
        raise MergesmithError(
            "a profile and a pool were both given; pass --profile for a built-in pool or --pool for your own, not both"
        )
    run_dir = Path(run_dir)
    profile_name = profile or "default"  # the built-in pool, when no pool file is given
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if pool is None:
        if profile_name not in PROFILES:
            raise MergesmithError(f"unknown profile {profile_name!r}; choose one of {', '.join(PROFILES)}")
        cache = ensure_writable(cache)
    facts: dict[str, dict] = {}  # source, licence, class counts: known for built-in tasks only
    if run_dir.exists() and any(run_dir.iterdir()):
        raise MergesmithError(f"run directory {run_dir} exists and is not empty; choose another with --out")
    check_protocol(pool, protocol)
    if pool is None:
        method_names = resolve_methods(
            methods, profile_name, len(PROFILES[profile_name].tasks)
        )  # before any data is built
        fixed = method_parameters(
            method_names, check_method_sets(method_params), len(PROFILES[profile_name].tasks), progress=progress
        )
        task_data = build_tasks(profile_name, cache, seed=seed, progress=progress)
        facts = {t.name: task_facts(t) for t in task_data}
        torch.set_num_threads(os.cpu_count() or 1)
        bench_pool = profile_pool(
            profile_name, task_data, cache, seed, progress, echo, protocol=protocol or DEFAULT_PROTOCOL
        )
    else:
        from mergesmith.bench.pool import build_pool, check_pool

        checked = check_pool(pool)  # every input checked before any model is loaded
        method_names = resolve_methods(methods, "custom", len(checked.tasks))
        fixed = method_parameters(method_names, check_method_sets(method_params), len(checked.tasks), progress=progress)
        torch.set_num_threads(os.cpu_count() or 1)
        bench_pool = build_pool(checked, seed=seed, progress=progress, echo=echo)

    tasks = bench_pool.tasks
    featurizer = bench_pool.featurizer
    heads = {t.name: t.head for t in tasks}
    validation = Evaluator(
        tasks, {t.name: _first(featurizer, t.validation, GRID_EXAMPLES_PER_TASK) for t in tasks}, heads, featurizer
    )
    test = Evaluator(tasks, {t.name: t.test for t in tasks}, heads, featurizer)
    load = featurizer.load

    base_model = load(bench_pool.base_dir)
    base_state = {k: v.clone() for k, v in base_model.state_dict().items()}
    expert_states = {t.name: load(t.expert).state_dict() for t in tasks}
    rows: list[dict] = []
    hits: dict[str, dict[str, torch.Tensor | None]] = {}  # row name -> task -> per-example test hits

    # Zero-shot protocol: the pretrained model is scored with the same fixed heads as every other row (zero-shot
    # accuracy, as in the papers); probe protocol: with linear probes trained on its frozen features.
    zero_shot = bench_pool.protocol == "zero_shot"
    pretrained_name = "pretrained (zero-shot)" if zero_shot else "pretrained (linear probe)"
    echo(
        f"scoring the pretrained model ({'zero-shot heads' if zero_shot else 'linear probes'}) and every expert on "
        "every task"
    )
    pretrained_heads = heads if zero_shot else {t.name: t.probe for t in tasks}
    scorers: dict[str, Callable[[], dict[str, torch.Tensor | None]]] = {}
    if any(p is not None for p in pretrained_heads.values()):
        scorers[pretrained_name] = lambda: Evaluator(tasks, test.splits, pretrained_heads, featurizer).correct(
            base_model
        )
    for t in tasks:
        scorers[f"expert: {t.name}"] = functools.partial(lambda path: test.correct(load(path)), t.expert)
    fixed_hits, fixed_seconds = fixed_row_hits(
        cache_file(bench_pool, bench_pool.protocol), scorers, {t.name: len(t.test) for t in tasks}, echo
    )
    hits.update(fixed_hits)
    pretrained = hit_rates(hits[pretrained_name]) if pretrained_name in hits else None
    expert_acc: dict[str, float | None] = {}
    expert_rows: list[dict[str, Any]] = []
    for t in tasks:
        scores = hit_rates(hits[f"expert: {t.name}"])
        expert_acc[t.name] = scores[t.name]
        expert_rows.append(
            {
                "name": f"expert: {t.name}",
                "kind": "expert",
                "task": t.name,
                "accuracy": scores,
                "average": _average(scores),
                "params": {},
                "grid": [],
                "merge_seconds": None,
                "peak_memory_mb": None,
                "train_seconds": t.train_seconds,
                "eval_seconds": fixed_seconds[f"expert: {t.name}"],
            }
        )
    for row in expert_rows:
        row["normalized"] = _normalized(row["accuracy"], expert_acc)
    if pretrained is not None:
        # A user pool's task without a train split has no probe: its cell is empty, and an average over fewer
        # tasks would not compare with the other rows, so the row's average and normalized accuracy are left empty.
        complete = all(v is not None for v in pretrained.values())
        rows.append(
            {
                "name": pretrained_name,
                "kind": "baseline",
                "accuracy": pretrained,
                "average": _average(pretrained) if complete else None,
                "normalized": _normalized(pretrained, expert_acc) if complete else None,
                "params": {},
                "grid": [],
                "merge_seconds": None,
                "peak_memory_mb": None,
            }
        )
    rows.extend(expert_rows)

    (run_dir / "configs").mkdir(parents=True, exist_ok=True)
    experts_in_order = [expert_states[t.name] for t in tasks]
    for method in method_names:
        if is_adapt_method(method):  # data-driven methods run on the pool itself (mergesmith.bench.adapt_rows)
            row, hits[method] = adapt_row(
                method,
                bench_pool,
                expert_acc,
                seed=seed,
                features=featurizer,
                params=fixed[method],
                out_dir=run_dir / "merged" / method if keep_models else None,
                echo=echo,
            )
            rows.append(row)
            continue
        grid: list[dict[str, Any]] = []
        points = [_params_with_defaults(method, p) for p in grid_with(grid_points(method), fixed[method])]
        for point in points:
            if per_task.has_task_models(method):  # EMR, TALL masks: task t is scored with task t's model
                score = per_task.validation_average(
                    method, point, base_state, experts_in_order, base_model, validation, seed
                )
            else:
                merged = merge_state_dicts(base_state, experts_in_order, method, seed=seed, **point)
                base_model.load_state_dict(merged)
                score = _average(validation(base_model))
            grid.append({"params": point, "validation_average": score})
        chosen = points[choose_point([g["validation_average"] for g in grid])]
        config = merge_config(method, chosen, bench_pool, tasks, seed)
        config_path = run_dir / "configs" / f"{method}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        out = run_dir / "merged" / method
        cost = measure_merge(config_path, out, threads=2)  # in its own process: what `mergesmith merge` costs
        started = time.perf_counter()
        hits[method] = (
            per_task.test_hits(out, load, test) if per_task.has_task_models(method) else test.correct(load(out))
        )
        scores = hit_rates(hits[method])
        eval_seconds = time.perf_counter() - started
        if not keep_models:
            shutil.rmtree(out)
        rows.append(
            {
                "name": method,
                "kind": "merge",
                "method": method,
                "accuracy": scores,
                "average": _average(scores),
                "normalized": _normalized(scores, expert_acc),
                "params": chosen,
                "grid": grid,
                "merge_seconds": cost.seconds,
                "peak_memory_mb": cost.peak_memory_mb,
                "memory_measure": MERGE_PROCESS_PEAK,
                "single_model": not per_task.has_task_models(method),
                "eval_seconds": eval_seconds,
            }
        )
        normalized = "-" if rows[-1]["normalized"] is None else f"{rows[-1]['normalized']:.3f}"
        echo(f"{method:18s} test average {_average(scores):.3f}  normalized {normalized}  ({_fmt(chosen)})")
    if not keep_models and (run_dir / "merged").exists():
        shutil.rmtree(run_dir / "merged")
    reference = attach_comparisons(rows, hits, expert_acc, samples=SAMPLES, seed=seed)
    write_predictions(
        run_dir / PREDICTIONS_FILE, {row["name"]: hits[row["name"]] for row in rows if row["name"] in hits}
    )

    results = {
        "profile": bench_pool.profile,
        "seed": seed,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
        "protocol": bench_pool.protocol,
        "base_model": bench_pool.base_model,
        "trained": bench_pool.trained,
        "tasks": [
            {
                "name": t.name,
                "num_labels": t.num_labels,
                "sizes": t.sizes,
                "majority": t.majority,
                **facts.get(t.name, {"source": None, "licence": None}),
            }
            for t in tasks
        ],
        "rows": rows,
        "expert_average": _average(expert_acc),
        "cosine": _cosine(base_state, expert_states, [t.name for t in tasks]),
        "reference": reference,
        "bootstrap": {"samples": SAMPLES, "confidence": CONFIDENCE, "seed": seed},
        **bench_pool.provenance,
    }
    write_outputs(results, run_dir)
    echo("")
    echo(format_table(results))
    echo(f"\nresults: {run_dir / 'results.json'}  {run_dir / 'results.csv'}  report: {run_dir / 'report.html'}")
    return results


def _first(featurizer, split, count: int):
    """The first ``count`` examples of ``split`` (all of it when it is smaller)."""
    return split if len(split) <= count else featurizer.select(split, torch.arange(count))


def check_method_sets(method_params: dict[str, dict] | None) -> dict[str, dict]:
    """``--methods`` parameters keyed by method; a set name (``METHOD_SETS``) takes none."""
    given = dict(method_params or {})
    for name in METHOD_SETS:
        if given.pop(name, None):
            raise MergesmithError(
                f"--methods: {name} is a set of methods and takes no parameters; list its methods with theirs"
            )
    return given


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "no parameters"


def _cosine(base: dict, experts: dict[str, dict], names: list[str]) -> dict:
    vectors = []
    for name in names:
        vectors.append(
            torch.cat(
                [(experts[name][k].float() - base[k].float()).flatten() for k in base if base[k].is_floating_point()]
            )
        )
    stacked = torch.nn.functional.normalize(torch.stack(vectors), dim=1)
    matrix = (stacked @ stacked.T).tolist()
    return {"tasks": names, "matrix": [[round(v, 4) for v in row] for row in matrix]}


def _machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }

"""``mergesmith bench --protect``: what MergeLock does to a merge, measured on the bench pool.

One expert (the first task's, or ``protect_task``) is protected with MergeLock (Wang et al. 2025, "Model
Unmerging"). Then, for each method (task arithmetic, linear by default), the pool is merged twice: with the original
expert and with its protected copy in its place. Both merges pick their grid point on the validation split and are
scored once on the test split (the bench protocol, DESIGN.md section 4); normalized accuracy = merged / expert
accuracy per task, averaged. The protected expert alone is also scored: MergeLock must leave its accuracy unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mergesmith.errors import MergesmithError
from mergesmith.io.parse import read_json

DEFAULT_PROTECT_METHODS = ("task_arithmetic", "linear")


def _choose_and_score(method, base_state, experts, model, validation, test, seed):
    """Grid point with the best validation average, then its test scores (merged in memory)."""
    from mergesmith.api import merge_state_dicts
    from mergesmith.bench.grids import choose_point, grid_points
    from mergesmith.bench.run import _average, _params_with_defaults

    points = [_params_with_defaults(method, p) for p in grid_points(method)]
    scores = []
    for point in points:
        model.load_state_dict(merge_state_dicts(base_state, experts, method, seed=seed, **point))
        scores.append(_average(validation(model)))
    chosen = choose_point(scores)
    model.load_state_dict(merge_state_dicts(base_state, experts, method, seed=seed, **points[chosen]))
    return points[chosen], scores[chosen], test(model)


def run_protect_bench(
    *,
    profile: str | None = None,
    pool: str | Path | None = None,
    methods: list[str] | None = None,
    protect_task: str | None = None,
    run_dir: Path,
    cache_dir: Path | None = None,
    seed: int = 0,
    protocol: str | None = None,
    reference: Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Merge the pool with and without one protected expert; write results.json, report.html, normalized.png.

    ``reference``: a ``mergesmith bench`` results.json of the same pool and seed. Its expert accuracies and its rows
    for ``methods`` are the unprotected side, and the protected merges reuse the grid points those rows chose on
    validation (an attacker tuning the merge for the protected model is not modelled then). Saves the grid search.
    """
    from transformers.utils import logging as hf_logging

    from mergesmith.api import merge_state_dicts
    from mergesmith.bench.load import load_bench_pool
    from mergesmith.bench.run import Evaluator, _average, _normalized
    from mergesmith.methods import METHODS
    from mergesmith.protect import protect_checkpoint

    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise MergesmithError(f"run directory {run_dir} exists and is not empty; choose another with --out")
    methods = list(methods or DEFAULT_PROTECT_METHODS)
    for m in methods:
        if m not in METHODS:
            raise MergesmithError(f"unknown method {m!r} for --protect; known: {', '.join(sorted(METHODS))}")
    torch.set_num_threads(os.cpu_count() or 1)
    bench_pool = load_bench_pool(profile, pool, cache_dir, seed, progress, echo, protocol=protocol)
    tasks = bench_pool.tasks
    names = [t.name for t in tasks]
    target = protect_task or names[0]
    if target not in names:
        raise MergesmithError(f"--protect-task {target!r} is not a task of the pool; choose one of {', '.join(names)}")
    featurizer = bench_pool.featurizer
    heads = {t.name: t.head for t in tasks}
    validation = Evaluator(tasks, {t.name: t.validation for t in tasks}, heads, featurizer)
    test = Evaluator(tasks, {t.name: t.test for t in tasks}, heads, featurizer)

    ref = _read_reference(reference, bench_pool, names, methods, seed) if reference is not None else None
    own = {t.name: Evaluator([t], {t.name: t.test}, heads, featurizer) for t in tasks}  # a task's own test split
    if ref is not None:
        expert_acc = ref["expert_accuracy"]
    else:
        echo("scoring every expert on its own task")
        expert_acc = {t.name: own[t.name](featurizer.load(t.expert))[t.name] for t in tasks}
    locked_dir = run_dir / "protected" / target
    started = time.perf_counter()
    result = protect_checkpoint(bench_pool.experts[target], locked_dir, seed=seed, progress=None)
    protect_seconds = time.perf_counter() - started
    locked_model = featurizer.load(locked_dir)
    locked_scores = own[target](locked_model)
    original_scores = {target: expert_acc[target]}
    echo(
        f"protected {target} ({len(result.layout.blocks)} attention layers, {protect_seconds:.1f} s): own-task accuracy "
        f"{original_scores[target]:.4f} -> {locked_scores[target]:.4f}"
    )

    base_model = featurizer.load(bench_pool.base_dir)
    base_state = {k: v.clone() for k, v in base_model.state_dict().items()}
    plain_experts = [featurizer.load(t.expert).state_dict() for t in tasks]
    locked_experts = list(plain_experts)
    locked_experts[names.index(target)] = locked_model.state_dict()
    rows = []
    for method in methods:
        for label, experts in (("unprotected", plain_experts), ("one protected", locked_experts)):
            if ref is not None and label == "unprotected":  # the reference bench run's row, as it was scored
                rows.append(ref["rows"][method])
                continue
            if ref is not None:  # the grid point the unprotected merge chose on validation, scored once on test
                point = ref["rows"][method]["params"]
                base_model.load_state_dict(merge_state_dicts(base_state, experts, method, seed=seed, **point))
                val, scores = None, test(base_model)
            else:
                point, val, scores = _choose_and_score(method, base_state, experts, base_model, validation, test, seed)
            rows.append(
                {
                    "method": method,
                    "setting": label,
                    "params": point,
                    "validation_average": val,
                    "accuracy": scores,
                    "average": _average(scores),
                    "normalized": _normalized(scores, expert_acc),
                }
            )
            echo(
                f"{method:16s} {label:14s} test average {rows[-1]['average']:.4f}  normalized {rows[-1]['normalized']:.4f}  ({point})"
            )
    shutil.rmtree(run_dir / "protected", ignore_errors=True)
    results = {
        "kind": "mergelock",
        "profile": bench_pool.profile,
        "seed": seed,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base_model": bench_pool.base_model,
        "protected_task": target,
        "protect_seconds": protect_seconds,
        "expert_accuracy": expert_acc,
        "protected_expert_accuracy": locked_scores,
        "original_expert_accuracy": original_scores,
        "rows": rows,
        "reference": str(reference) if reference is not None else None,
    }
    _write(results, run_dir)
    echo("\n" + format_protect_table(results))
    echo(f"\nresults: {run_dir / 'results.json'}  report: {run_dir / 'report.html'}")
    return results


def _read_reference(path, bench_pool, names, methods, seed) -> dict:
    results = read_json(
        path, what="bench results.json", error=MergesmithError, fix="give the results.json of a bench run"
    )
    if (
        results.get("seed") != seed
        or [t["name"] for t in results.get("tasks", [])] != names
        or ("zoo" in bench_pool.provenance and results.get("zoo") != bench_pool.provenance["zoo"])
    ):
        raise MergesmithError(
            f"{path}: a bench run of another pool, zoo or seed; give results.json of the same profile and seed"
        )
    rows = {r["method"]: r for r in results["rows"] if r.get("kind") == "merge"}
    missing = [m for m in methods if m not in rows]
    if missing:
        raise MergesmithError(f"{path}: has no row for {', '.join(missing)}; run the bench with those methods first")
    experts = {r["task"]: r["accuracy"][r["task"]] for r in results["rows"] if r.get("kind") == "expert"}
    return {
        "expert_accuracy": experts,
        "rows": {
            m: {
                "method": m,
                "setting": "unprotected",
                "params": rows[m]["params"],
                "validation_average": None,
                "accuracy": rows[m]["accuracy"],
                "average": rows[m]["average"],
                "normalized": rows[m]["normalized"],
            }
            for m in methods
        },
    }


def main(argv=None) -> None:
    """python -m mergesmith.bench.protected [--profile P] [--reference results.json] --out DIR [--cache-dir D]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mergesmith.bench.protected", description=main.__doc__)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--protect-task", default=None)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run_protect_bench(
        profile=args.profile,
        methods=args.methods.split(",") if args.methods else None,
        protect_task=args.protect_task,
        reference=args.reference,
        run_dir=args.out,
        cache_dir=args.cache_dir,
        seed=args.seed,
        progress=False,
    )


def format_protect_table(results: dict) -> str:
    tasks = list(results["expert_accuracy"])
    header = (
        f"{'method':16s} {'setting':14s} " + " ".join(f"{t[:12]:>12s}" for t in tasks) + f" {'avg':>7s} {'norm':>7s}"
    )
    lines = [header, "-" * len(header)]
    for row in results["rows"]:
        cells = " ".join(f"{row['accuracy'][t]:12.4f}" for t in tasks)
        lines.append(f"{row['method']:16s} {row['setting']:14s} {cells} {row['average']:7.4f} {row['normalized']:7.4f}")
    own = results["protected_task"]
    lines.append(
        f"protected expert ({own}) alone: own-task accuracy {results['protected_expert_accuracy'][own]:.4f} "
        f"(original {results['original_expert_accuracy'][own]:.4f})"
    )
    return "\n".join(lines)


def _plot(results: dict) -> bytes:
    import matplotlib

    from mergesmith.figures import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for k, setting in enumerate(("unprotected", "one protected")):
        values = [
            next(r["normalized"] for r in results["rows"] if r["method"] == m and r["setting"] == setting)
            for m in methods
        ]
        ax.bar([i + (k - 0.5) * width for i in range(len(methods))], values, width, label=setting)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("normalized accuracy")
    ax.set_title(f"merge with vs without MergeLock on {results['protected_task']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def _write(results: dict, run_dir: Path) -> None:
    import html

    from mergesmith.figures import img_tag

    run_dir.mkdir(parents=True, exist_ok=True)
    png = _plot(results)
    (run_dir / "normalized.png").write_bytes(png)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mergesmith bench --protect</title></head><body>"
        "<h1>MergeLock: merging with a protected expert</h1>"
        f"<pre>{html.escape(format_protect_table(results))}</pre>"
        f"{img_tag(png, 'normalized accuracy')}"
        "</body></html>\n"
    )
    (run_dir / "report.html").write_text(page, encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    main()

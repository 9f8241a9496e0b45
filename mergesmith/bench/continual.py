"""``mergesmith bench --continual``: experts arrive one at a time; how well does each continual method keep up?

For each method and each task order (the pool's order, then seeded random permutations), the experts are merged one
at a time with ``continual_add_state_dicts`` (the same step ``mergesmith continual add`` streams from disk; the
tests check both give the same bytes). After every step the merge is scored on the test split of every task seen so
far: accuracy per task, their average, and the normalized accuracy (merged / the task's own expert, averaged), as
FusionBench's continual-merging protocol reports (Tang et al. 2025, OPCM, Sec. 5). No method sees any data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mergesmith.errors import MergesmithError

DEFAULT_CONTINUAL_METHODS = ("averaging", "task_arithmetic", "ties", "opcm")


def task_orders(names: list[str], count: int, seed: int) -> list[list[str]]:
    """The pool's order first, then ``count - 1`` distinct seeded permutations (fewer if the pool has fewer)."""
    orders = [list(names)]
    gen = torch.Generator().manual_seed(seed)
    limit = 1
    for k in range(2, len(names) + 1):
        limit *= k
    attempts = 0
    while len(orders) < min(count, limit) and attempts < 1000:
        attempts += 1
        order = [names[i] for i in torch.randperm(len(names), generator=gen).tolist()]
        if order not in orders:
            orders.append(order)
    return orders


def run_continual_bench(
    *,
    profile: str | None = None,
    pool: str | Path | None = None,
    methods: list[str] | None = None,
    orders: int = 3,
    run_dir: Path,
    cache_dir: Path | None = None,
    seed: int = 0,
    protocol: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Add the pool's experts one at a time in several orders; write results.json, report.html, continual.png."""
    from transformers.utils import logging as hf_logging

    from mergesmith.bench.load import load_bench_pool
    from mergesmith.bench.run import Evaluator, _average, _normalized
    from mergesmith.continual import CONTINUAL_METHODS, continual_add_state_dicts, start_state_dict

    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise MergesmithError(f"run directory {run_dir} exists and is not empty; choose another with --out")
    methods = list(methods or DEFAULT_CONTINUAL_METHODS)
    for m in methods:
        if m not in CONTINUAL_METHODS:
            raise MergesmithError(
                f"unknown continual method {m!r} for --continual; known: {', '.join(CONTINUAL_METHODS)}"
            )
    if orders < 1:
        raise MergesmithError(f"--orders {orders}: give at least 1 task order")
    torch.set_num_threads(os.cpu_count() or 1)
    bench_pool = load_bench_pool(profile, pool, cache_dir, seed, progress, echo, protocol=protocol)
    tasks = {t.name: t for t in bench_pool.tasks}
    names = list(tasks)
    if len(names) < 2:
        raise MergesmithError("continual merging needs a pool of at least 2 tasks")
    featurizer = bench_pool.featurizer
    heads = {t.name: t.head for t in tasks.values()}

    def test_on(seen: list[str]) -> Evaluator:
        return Evaluator([tasks[n] for n in seen], {n: tasks[n].test for n in seen}, heads, featurizer)

    echo("scoring every expert on its own task")
    expert_acc = {n: test_on([n])(featurizer.load(tasks[n].expert))[n] for n in names}
    model = featurizer.load(bench_pool.base_dir)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    experts = {n: featurizer.load(tasks[n].expert).state_dict() for n in names}
    sequences = task_orders(names, orders, seed)
    rows: list[dict[str, Any]] = []
    for method in methods:
        for o, order in enumerate(sequences):
            echo(f"{method}: order {o + 1}/{len(sequences)}: {' -> '.join(order)}")
            merged = start_state_dict(base_state, experts[order[0]], method)
            state, seconds = None, 0.0
            for t in range(len(order)):
                if t > 0:
                    started = time.perf_counter()
                    # the first add starts from the raw first expert (it applies the method's start itself)
                    previous = experts[order[0]] if state is None else merged
                    merged, state = continual_add_state_dicts(
                        base_state,
                        previous,
                        experts[order[t]],
                        method,
                        state=state,
                        new_name=order[t],
                        previous_name=order[0],
                    )
                    seconds = time.perf_counter() - started
                seen = order[: t + 1]
                model.load_state_dict(merged)
                scores = test_on(seen)(model)
                rows.append(
                    {
                        "method": method,
                        "order_index": o,
                        "order": order,
                        "step": t + 1,
                        "seen": seen,
                        "accuracy": scores,
                        "average": _average(scores),
                        "normalized": _normalized(scores, {n: expert_acc[n] for n in seen}),
                        "add_seconds": seconds,
                    }
                )
                echo(
                    f"  {t + 1} tasks: average {rows[-1]['average']:.4f}  normalized "
                    f"{_fmt(rows[-1]['normalized'])}  ({seconds:.1f} s)"
                )
    results = {
        "kind": "continual",
        "profile": bench_pool.profile,
        "seed": seed,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base_model": bench_pool.base_model,
        "tasks": names,
        "orders": sequences,
        "expert_accuracy": expert_acc,
        "rows": rows,
        "summary": summarize(rows, methods, len(names)),
    }
    _write(results, run_dir)
    echo("\n" + format_continual_table(results))
    echo(f"\nresults: {run_dir / 'results.json'}  report: {run_dir / 'report.html'}")
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def summarize(rows: list[dict], methods: list[str], n_tasks: int) -> list[dict]:
    """Per method: the final merge (all tasks seen) and the mean along the sequence, averaged over the orders."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        final = [r for r in mine if r["step"] == n_tasks]
        final_norm = [r["normalized"] for r in final if r["normalized"] is not None]
        along = [
            statistics.mean(r["normalized"] for r in mine if r["order_index"] == o and r["normalized"] is not None)
            for o in sorted({r["order_index"] for r in mine})
        ]
        adds = [r["add_seconds"] for r in mine if r["step"] > 1]
        out.append(
            {
                "method": method,
                "final_average": statistics.mean(r["average"] for r in final),
                "final_normalized": statistics.mean(final_norm) if final_norm else None,
                "final_normalized_min": min(final_norm) if final_norm else None,
                "final_normalized_max": max(final_norm) if final_norm else None,
                "mean_normalized_along_sequence": statistics.mean(along) if along else None,
                "seconds_per_add": statistics.mean(adds) if adds else 0.0,
            }
        )
    return out


def format_continual_table(results: dict) -> str:
    n_orders = len(results["orders"])
    header = (
        f"{'method':16s} {'final avg':>9s} {'final norm':>10s} {'min..max over ' + str(n_orders) + ' orders':>26s} "
        f"{'norm along':>10s} {'s/add':>7s}"
    )
    lines = [header, "-" * len(header)]
    for s in results["summary"]:
        spread = f"{_fmt(s['final_normalized_min'])}..{_fmt(s['final_normalized_max'])}"
        lines.append(
            f"{s['method']:16s} {s['final_average']:9.4f} {_fmt(s['final_normalized']):>10s} {spread:>26s} "
            f"{_fmt(s['mean_normalized_along_sequence']):>10s} {s['seconds_per_add']:7.2f}"
        )
    lines.append(
        "final = all tasks merged; norm along = normalized accuracy on the tasks seen so far, averaged over "
        "the steps; experts on their own tasks average "
        f"{statistics.mean(results['expert_accuracy'].values()):.4f}"
    )
    return "\n".join(lines)


def _plot(results: dict) -> bytes:
    import matplotlib

    from mergesmith.figures import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results["tasks"])
    steps = list(range(1, n + 1))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for s in results["summary"]:
        per_step = [
            [
                r["normalized"]
                for r in results["rows"]
                if r["method"] == s["method"] and r["step"] == t and r["normalized"] is not None
            ]
            for t in steps
        ]
        mean = [statistics.mean(v) if v else float("nan") for v in per_step]
        (line,) = ax.plot(steps, mean, marker="o", label=s["method"])
        ax.fill_between(
            steps,
            [min(v) if v else float("nan") for v in per_step],
            [max(v) if v else float("nan") for v in per_step],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("tasks merged so far")
    ax.set_ylabel("normalized accuracy on seen tasks")
    ax.set_title(f"continual merging, {len(results['orders'])} task orders (band: min..max)")
    ax.set_xticks(steps)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def _write(results: dict, run_dir: Path) -> None:
    import html

    from mergesmith.figures import img_tag

    run_dir.mkdir(parents=True, exist_ok=True)
    png = _plot(results)
    (run_dir / "continual.png").write_bytes(png)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    orders = "".join(f"<li>{html.escape(' → '.join(o))}</li>" for o in results["orders"])
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mergesmith bench --continual</title></head><body>"
        "<h1>Continual merging: experts added one at a time</h1>"
        f"<pre>{html.escape(format_continual_table(results))}</pre>"
        f"{img_tag(png, 'normalized accuracy on seen tasks per step')}"
        f"<h2>Task orders</h2><ol>{orders}</ol>"
        "</body></html>\n"
    )
    (run_dir / "report.html").write_text(page, encoding="utf-8")

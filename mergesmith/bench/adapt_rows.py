"""Bench rows for adapt methods (``mergesmith bench --methods fisher,regmean,...``): run the method on the bench's
pool, time it, sample its peak memory, and score ``result.encoder_for(task)`` on each task's test split with the
task's head. Hyper-parameters are those given with ``--methods METHOD:KEY=VALUE``, else the method's Params defaults
(methods that tune on validation do it inside ``run``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

# What an adapt row's "peak_memory_mb" is: the method runs inside the bench's process, so the figure is the rise of
# that process's RSS above its level at the start (heap trimmed first), sampled every 20 ms.
from mergesmith.bench.report_cells import IN_PROCESS_RISE


def is_adapt_method(name: str) -> bool:
    from mergesmith.adapt import ADAPT_METHODS

    return name in ADAPT_METHODS


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS so the RSS the run starts from is what is really in use (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def adapt_row(
    method: str,
    pool,
    expert_acc: Mapping[str, float | None],
    *,
    seed: int,
    features,
    out_dir: Path | None,
    echo: Callable[[str], None] = print,
    params=None,
) -> tuple[dict, dict[str, torch.Tensor | None]]:
    """One results row of kind "adapt" and its per-example test hits per task. ``features`` is the pool's featurizer; ``out_dir`` saves the result there;
    ``params`` the method's parameters object (default: its defaults)."""
    import gc

    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import params_dict
    from mergesmith.adapt.problem import check_needs
    from mergesmith.adapt.result import save_result
    from mergesmith.bench.adapt_problem import problem_from_pool
    from mergesmith.bench.paired import hit_rates
    from mergesmith.bench.scoring import Evaluator, PeakRss, average, normalized

    spec = get_adapt_method(method)
    params = params if params is not None else spec.params()
    problem = problem_from_pool(pool)  # a fresh problem: the run loads (and is charged for) the base and task vectors
    check_needs(problem, method, spec.needs)
    gc.collect()
    _trim_heap()
    # One intra-op thread: these methods run many small per-example / per-batch ops, which gain little from more
    # threads and slow down several-fold when OpenMP threads spin on a shared machine (measured: one layer's Grams
    # 0.8 s with 1 thread vs 2.7 s with 2 on the busy 2-core bench machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The rise of this process's RSS above its level at the start, sampled every 20 ms while the method runs.
        with PeakRss() as rss:
            started = time.perf_counter()
            result = spec.run(problem, params, seed)
            seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    hits: dict[str, torch.Tensor | None] = {}
    for task in pool.tasks:
        encoder = result.encoder_for(task.name)
        hits.update(Evaluator([task], {task.name: task.test}, {task.name: task.head}, features).correct(encoder))
    scores = hit_rates(hits)
    eval_seconds = time.perf_counter() - started
    if out_dir is not None:
        save_result(result, problem, out_dir, force=True)
    defaults = params_dict(spec.params())
    used = params_dict(params)
    shown = {k: v for k, v in used.items() if v != defaults.get(k)}
    shown["added_parameters"] = int(result.info.get("added_parameters", 0))
    row = {
        "name": method,
        "kind": "adapt",
        "method": method,
        "accuracy": scores,
        "average": average(scores),
        "normalized": normalized(scores, expert_acc),
        "params": shown,
        "grid": [],
        "merge_seconds": seconds,
        "peak_memory_mb": rss.peak_mb,
        "memory_measure": IN_PROCESS_RISE,
        "single_model": result.kind == "weights",  # False: routers, per-task modules or per-task models
        "eval_seconds": eval_seconds,
        "paper": spec.paper,
        "info": _summary(result.info),
        "adapt_params": used,
        "threads": 1,
    }
    shown_normalized = "-" if row["normalized"] is None else f"{row['normalized']:.3f}"
    echo(
        f"{method:18s} test average {row['average']:.3f}  normalized {shown_normalized}  ({seconds:.0f} s, peak +{rss.peak_mb:.0f} MB)"
    )
    del result, problem
    gc.collect()
    return row, hits


def _summary(info: dict) -> dict:
    """The row's info, JSON-able and short (long per-step histories are cut)."""
    from mergesmith.adapt.result import _jsonable

    out = {}
    for key, value in _jsonable(info).items():
        if isinstance(value, list) and len(value) > 50:
            value = value[:50] + ["..."]
        out[key] = value
    return out


__all__ = ["adapt_row", "is_adapt_method"]

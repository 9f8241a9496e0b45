"""Surgery, SurgeryV2, WEMoE and E-WEMoE on the offline bench's pool, scored exactly as ``mergesmith bench`` scores
an adapt method (``result.encoder_for(task)`` on each task's test split with the task's head), without the bench's
other rows: each expert is scored on its own task only (for the normalized accuracy), plus the merge Surgery sits
on. Results are written after every method (JSON + a Markdown table), so a long run can be read while it goes.

    python benchmarks/bench_adapt_modules.py --cache-dir /tmp/mcache --out /work/runs/adapt-modules-lean \
        [--methods surgery,surgery_v2,wemoe,e_wemoe] [--param surgery_v2.steps=30 ...]

Parameters not given are the methods' defaults (what ``mergesmith bench --methods ...`` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml


def _write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tasks = results["tasks"]
    lines = [
        "| row | " + " | ".join(tasks) + " | avg | normalized | run s | peak MB | added params |",
        "|---" * (len(tasks) + 6) + "|",
    ]
    for row in results["rows"]:
        cells = [f"{100 * row['accuracy'][t]:.1f}" for t in tasks]
        norm = "-" if row.get("normalized") is None else f"{100 * row['normalized']:.1f}"
        run = "-" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        peak = "-" if row.get("peak_memory_mb") is None else f"{row['peak_memory_mb']:.0f}"
        added = row.get("added_parameters", "")
        lines.append(
            f"| {row['name']} | "
            + " | ".join(cells)
            + f" | {100 * row['average']:.1f} | {norm} | {run} | {peak} | {added} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _subset(task, n: int, seed: int):
    """The task with a seeded random subset of ``n`` test examples (the same subset for every row)."""
    import dataclasses

    import torch

    from mergesmith.bench.encoder import EncodedSplit

    rows = torch.randperm(len(task.test), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    test = EncodedSplit(tuple(task.test.ids[int(i)] for i in rows), task.test.labels[rows])
    return dataclasses.replace(task, test=test)


def _anchor_row(pool, results: dict, expert_acc: dict, score, seed: int) -> None:
    from mergesmith.adapt.base_merge import anchor_merge
    from mergesmith.bench.adapt_problem import problem_from_pool
    from mergesmith.bench.scoring import average as _average, normalized as _normalized

    problem = problem_from_pool(pool)
    anchor, _ = anchor_merge(problem, "task_arithmetic", {"lambda": 0.3}, seed)
    anchor_model = problem.encoder_with(anchor)
    acc = score(lambda _: anchor_model)
    results["rows"].append(
        {
            "name": "task_arithmetic (lambda 0.3: what Surgery and WEMoE start from)",
            "accuracy": acc,
            "average": _average(acc),
            "normalized": _normalized(acc, expert_acc),
        }
    )
    print(f"task_arithmetic 0.3: {_average(acc):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("MERGESMITH_CACHE"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--methods", default="surgery,surgery_v2,wemoe,e_wemoe")
    parser.add_argument("--param", action="append", default=[], help="method.key=value (YAML value)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-anchor", action="store_true", help="skip the task arithmetic (lambda 0.3) row")
    parser.add_argument(
        "--expert-scores", help="results.json of an earlier run of this script: reuse its expert scores"
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="score (and adapt on) a seeded random subset of this many test inputs per task",
    )
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import params_dict, parse_params
    from mergesmith.bench.adapt_problem import problem_from_pool
    from mergesmith.bench.load import profile_pool
    from mergesmith.bench.scoring import Evaluator, PeakRss, average as _average, normalized as _normalized
    from mergesmith.bench.tasks import build_tasks

    hf_logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    overrides: dict[str, dict] = {}
    for item in args.param:
        key, _, raw = item.partition("=")
        method, _, name = key.partition(".")
        overrides.setdefault(method, {})[name] = yaml.safe_load(raw)
    cache = Path(args.cache_dir)
    tasks = build_tasks(args.profile, cache, seed=args.seed, progress=False)
    pool = profile_pool(args.profile, tasks, cache, args.seed, False, lambda _: None)
    if args.test_limit:
        pool.tasks = [_subset(t, args.test_limit, args.seed) for t in pool.tasks]
    names = [t.name for t in pool.tasks]
    out = Path(args.out)
    results = {
        "profile": args.profile,
        "seed": args.seed,
        "tasks": names,
        "rows": [],
        "test_limit": args.test_limit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
    }

    def score(encoder_for) -> dict:
        acc = {}
        for task in pool.tasks:
            acc.update(
                Evaluator([task], {task.name: task.test}, {task.name: task.head}, pool.featurizer)(
                    encoder_for(task.name)
                )
            )
        return acc

    expert_acc = {}
    if args.expert_scores:
        earlier = json.loads(Path(args.expert_scores).read_text(encoding="utf-8"))
        if earlier.get("test_limit") != args.test_limit or earlier.get("tasks") != names:
            raise SystemExit(f"{args.expert_scores} scored other tasks or another test subset")
        expert_acc = dict(earlier["rows"][0]["accuracy"])
    for task in pool.tasks if not expert_acc else []:  # each expert on its own task (normalized accuracy's denominator)
        expert = pool.featurizer.load(task.expert)
        expert_acc.update(Evaluator([task], {task.name: task.test}, {task.name: task.head}, pool.featurizer)(expert))
    results["rows"].append(
        {
            "name": "experts (each on its own task)",
            "accuracy": expert_acc,
            "average": _average(expert_acc),
            "normalized": 1.0,
        }
    )
    results["expert_average"] = _average(expert_acc)
    _write(out, results)
    print(f"experts: {_average(expert_acc):.4f}", flush=True)

    if not args.no_anchor:
        _anchor_row(pool, results, expert_acc, score, args.seed)
        _write(out, results)

    for method in args.methods.split(","):
        spec = get_adapt_method(method)
        params = parse_params(spec, overrides.get(method, {}))
        problem = problem_from_pool(pool)
        with PeakRss() as rss:
            started = time.perf_counter()
            result = spec.run(problem, params, args.seed)
            seconds = time.perf_counter() - started
        started = time.perf_counter()
        acc = score(result.encoder_for)
        eval_seconds = time.perf_counter() - started
        info = {k: v for k, v in result.info.items() if not k.endswith("every_10")}
        results["rows"].append(
            {
                "name": method,
                "accuracy": acc,
                "average": _average(acc),
                "normalized": _normalized(acc, expert_acc),
                "seconds": seconds,
                "eval_seconds": eval_seconds,
                "peak_memory_mb": rss.peak_mb,
                "added_parameters": int(result.info.get("added_parameters", 0)),
                "params": params_dict(params),
                "info": json.loads(json.dumps(info, default=str)),
            }
        )
        _write(out, results)
        print(f"{method}: {_average(acc):.4f} ({seconds:.0f} s + eval {eval_seconds:.0f} s)", flush=True)
        del result, problem


if __name__ == "__main__":
    main()

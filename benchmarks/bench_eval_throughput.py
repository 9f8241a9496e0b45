#!/usr/bin/env python
"""Scoring throughput: one model (the bench's base all-MiniLM-L6-v2) on every test split of a profile.

Paths timed (``--paths``, comma separated):

- ``per_task``: each task's split on its own (``encoder.split_features``: sorted by length, padded batches of 128,
  attention mask), what ``Evaluator`` did before it bucketed;
- ``bucketed``: ``Evaluator.correct`` (all splits grouped by exact token length, no padding, no mask);
- ``bf16``: the same under bf16 autocast (``Evaluator(precision="bf16")``), opt-in; ``--length-multiple`` pads
  lengths up to a multiple to bound the number of batch shapes oneDNN compiles a kernel for.

The heads are zero-shot cosine heads from the label names (cheap to build, and accuracies meaningful); the point is
throughput and equality: the script checks that ``bucketed`` gives the per-example hits of ``per_task`` (exit 1 when
not) and reports the largest feature difference of each path against ``per_task`` (or ``bucketed`` when
``per_task`` is not timed). It prints, per path, wall seconds of each repeat, CPU seconds, examples/s and
tokens/s (real tokens, no padding counted), then one JSON line with everything.

    MERGESMITH_CACHE=~/.cache/mergesmith python benchmarks/bench_eval_throughput.py --profile default --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

PATHS = ("per_task", "bucketed", "bf16")


def wait_for_idle(max_wait_s: float, threshold: float = 15.0) -> float:
    """Wait (up to ``max_wait_s``) until the machine's busy percentage (all cores = 100) is under ``threshold``."""
    import psutil

    deadline = time.monotonic() + max_wait_s
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def load_profile(profile: str, cache_dir: Path):
    """The profile's tasks (test splits tokenized), the featurizer and the base model."""
    from mergesmith.bench.features import TextFeaturizer
    from mergesmith.bench.sources import minilm_model_dir
    from mergesmith.bench.tasks import build_tasks

    base_dir = minilm_model_dir(cache_dir)
    tasks = build_tasks(profile, cache_dir, progress=False)
    featurizer = TextFeaturizer.from_base(base_dir)
    splits = {t.name: featurizer.encode(t.test) for t in tasks}
    return tasks, splits, featurizer, featurizer.load(base_dir)


def per_task_correct(model, splits, heads, pad_id) -> tuple[dict, dict]:
    from mergesmith.bench.encoder import split_features

    features, hits = {}, {}
    for name, split in splits.items():
        features[name] = split_features(model, split, pad_id)
        with torch.no_grad():
            hits[name] = heads[name](features[name]).argmax(-1) == split.labels
    return hits, features


def timed(fn, repeat: int) -> tuple[list[float], list[float], object]:
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return walls, cpus, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", choices=("default", "mini"))
    parser.add_argument("--cache-dir", help="bench cache (default: $MERGESMITH_CACHE or ~/.cache/mergesmith)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--paths", default="per_task,bucketed", help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--length-multiple", type=int, default=1, help="bf16 path: round lengths up to this")
    parser.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many seconds for a quiet machine")
    parser.add_argument("--json", help="also append the JSON line to this file")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")

    from mergesmith.bench.buckets import bucket_by_length, bucketed_features
    from mergesmith.bench.heads import zero_shot_head
    from mergesmith.bench.scoring import Evaluator
    from mergesmith.bench.sources import default_cache_dir

    torch.set_num_threads(args.threads)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    tasks, splits, featurizer, model = load_profile(args.profile, cache_dir)
    heads = {t.name: zero_shot_head(model, featurizer, t.label_names) for t in tasks}
    started = time.perf_counter()
    buckets = bucket_by_length(splits, featurizer.pad_id)
    bucket_s = time.perf_counter() - started
    examples = buckets.rows
    result: dict = {
        "profile": args.profile,
        "tasks": len(tasks),
        "examples": examples,
        "tokens": buckets.tokens,
        "padded_tokens": buckets.padded_tokens,
        "batches": len(buckets.batches),
        "unpadded_batches": sum(b.mask is None for b in buckets.batches),
        "bucket_s": round(bucket_s, 3),
        "threads": args.threads,
        "cpu": _cpu_name(),
    }
    if args.wait_idle > 0:
        result["busy_before_pct"] = wait_for_idle(args.wait_idle)
    result["load1_before"] = os.getloadavg()[0]

    def run_per_task():
        return per_task_correct(model, splits, heads, featurizer.pad_id)[0]

    evaluator = Evaluator(tasks, splits, heads, featurizer)
    if "bf16" in paths:
        bf16_buckets = bucket_by_length(splits, featurizer.pad_id, length_multiple=args.length_multiple)
        result["bf16_batches"] = len(bf16_buckets.batches)
        result["bf16_shapes"] = len({tuple(b.ids.shape) for b in bf16_buckets.batches})

        def run_bf16():
            features = bucketed_features(model, bf16_buckets, "bf16")
            with torch.no_grad():
                return {n: heads[n](f).argmax(-1) == splits[n].labels for n, f in features.items()}

    runners = {"per_task": run_per_task, "bucketed": lambda: evaluator.correct(model)}
    if "bf16" in paths:
        runners["bf16"] = run_bf16
    hits = {}
    for path in paths:
        walls, cpus, hits[path] = timed(runners[path], args.repeat)
        best = min(walls)
        result[path] = {
            "wall_s": [round(w, 2) for w in walls],
            "cpu_s": [round(c, 2) for c in cpus],
            "examples_per_s": round(examples / best),
            "tokens_per_s": round(buckets.tokens / best),
            "accuracy": {n: round(float(h.float().mean()), 4) for n, h in hits[path].items()},
        }
        print(
            f"{path}: wall {result[path]['wall_s']} s, cpu {result[path]['cpu_s']} s, "
            f"{result[path]['examples_per_s']} examples/s, {result[path]['tokens_per_s']} tokens/s",
            flush=True,
        )
    result["load1_after"] = os.getloadavg()[0]

    # Equality: per-example hits and largest feature difference of each path against the first of per_task and
    # bucketed (fp32) that was timed; bucketed features also against themselves (determinism).
    fast = evaluator.features_by_task(model, tuple(splits))
    again = evaluator.features_by_task(model, tuple(splits))
    result["deterministic"] = all(torch.equal(fast[n], again[n]) for n in splits)
    if "per_task" in paths:
        reference_name, (reference_hits, reference) = (
            "per_task",
            per_task_correct(model, splits, heads, featurizer.pad_id),
        )
    else:
        reference_name, reference = "bucketed", fast
        reference_hits = hits["bucketed"] if "bucketed" in hits else evaluator.correct(model)
    result["reference"] = reference_name
    result["reference_accuracy"] = {n: round(float(h.float().mean()), 4) for n, h in reference_hits.items()}
    compared = {"bucketed": fast} if reference_name == "per_task" and "bucketed" in paths else {}
    if "bf16" in paths:
        compared["bf16"] = bucketed_features(model, bf16_buckets, "bf16")
    for path, features in compared.items():
        result[path]["hits_differing"] = sum(int((hits[path][n] != reference_hits[n]).sum()) for n in splits)
        result[path]["max_abs_feature_diff"] = max(float((features[n] - reference[n]).abs().max()) for n in splits)
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    if result.get("bucketed", {}).get("hits_differing"):
        sys.exit("the bucketed path's hits differ from the per-task path's")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()

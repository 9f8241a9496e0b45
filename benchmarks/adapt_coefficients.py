"""Score AdaMerging / aTLAS / Twin-Merging on the bench's default pool, exactly as ``mergesmith bench`` does
(``mergesmith.bench.adapt_rows.adapt_row``: run with the method's defaults, time, peak RSS, test accuracy with each
task's head), without re-scoring the pretrained model and the experts when a previous bench run on the same zoo gives
them (``--reference RUN/results.json``; scoring seven models costs more than some methods on a busy 2-core machine).

Rows are written after every method (``OUT/results.json``, ``OUT/table.md``), so an interrupted run keeps its rows.

    MERGESMITH_CACHE=/tmp/mcache python benchmarks/adapt_coefficients.py --out /work/runs/adapt-coef \\
        --reference /work/runs/bench-default/results.json --methods adamerging_layerwise,atlas,twin_merging
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_METHODS = "adamerging_layerwise,twin_merging,atlas,adamerging_taskwise,adamerging_plusplus"


def _table(rows: list[dict], tasks: list[str]) -> str:
    head = "| row | " + " | ".join(tasks) + " | avg | normalized | run s | peak MB | added params |"
    lines = [head, "|" + "---|" * (len(tasks) + 6)]
    for row in rows:
        cells = [f"{100 * row['accuracy'][t]:.1f}" if row["accuracy"].get(t) is not None else "-" for t in tasks]
        norm = "-" if row.get("normalized") is None else f"{100 * row['normalized']:.1f}"
        secs = "-" if row.get("merge_seconds") is None else f"{row['merge_seconds']:.0f}"
        peak = "-" if row.get("peak_memory_mb") is None else f"{row['peak_memory_mb']:.0f}"
        added = (row.get("info") or {}).get("added_parameters", "")
        lines.append(
            f"| {row['name']} | "
            + " | ".join(cells)
            + f" | {100 * row['average']:.1f} | {norm} | {secs} | {peak} | {added} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--cache-dir", default=os.environ.get("MERGESMITH_CACHE", "/tmp/mcache"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference", default=None, help="a bench results.json on the same zoo (expert accuracies)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from mergesmith.bench.adapt_rows import adapt_row
    from mergesmith.bench.load import profile_pool
    from mergesmith.bench.scoring import Evaluator
    from mergesmith.bench.tasks import build_tasks

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir)
    tasks = build_tasks("default", cache, seed=args.seed, progress=False)
    pool = profile_pool("default", tasks, cache, args.seed, False, print)
    names = [t.name for t in pool.tasks]
    zoo = pool.provenance.get("zoo")

    rows: list[dict] = []
    expert_acc = None
    if args.reference:
        ref = json.loads(Path(args.reference).read_text())
        if ref.get("zoo") == zoo and ref.get("seed") == args.seed:
            kept = [
                r
                for r in ref["rows"]
                if r["kind"] in ("baseline", "expert") or r["name"] in ("task_arithmetic", "ties")
            ]
            rows.extend({**r, "name": r["name"] + (" (reference run)" if r["kind"] == "merge" else "")} for r in kept)
            expert_acc = {r["task"]: r["accuracy"][r["task"]] for r in ref["rows"] if r["kind"] == "expert"}
            print(f"expert accuracies and the task_arithmetic / ties rows from {args.reference} (same zoo {zoo})")
        else:
            print(f"{args.reference} is from another zoo or seed; scoring the experts here")
    if expert_acc is None:
        test = Evaluator(
            pool.tasks, {t.name: t.test for t in pool.tasks}, {t.name: t.head for t in pool.tasks}, pool.featurizer
        )
        expert_acc = {t.name: test(pool.featurizer.load(t.expert))[t.name] for t in pool.tasks}

    for method in [m for m in args.methods.split(",") if m]:
        row, _ = adapt_row(method, pool, expert_acc, seed=args.seed, features=pool.featurizer, out_dir=None, echo=print)
        rows.append(row)
        (out / "results.json").write_text(
            json.dumps({"zoo": zoo, "seed": args.seed, "tasks": names, "rows": rows}, indent=2, default=str) + "\n"
        )
        (out / "table.md").write_text(_table(rows, names))
        print(_table(rows[-1:], names), flush=True)
    print(_table(rows, names))


if __name__ == "__main__":
    main()

"""Test accuracy of the merge Surgery/SurgeryV2 sit on (their ``merge_method`` / ``merge_params``), scored exactly as
``mergesmith bench`` scores a method (each task's head on the task's test split), so a Surgery row can be compared
with the model it corrects. The bench's own task_arithmetic row uses the lambda its validation grid picks, not the
papers' 0.3 that Surgery sits on by default.

    python benchmarks/adapt_anchor_scores.py --cache-dir /tmp/mcache [--merge-method task_arithmetic]
                                             [--merge-params '{lambda: 0.3}'] [--profile default]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("MERGESMITH_CACHE"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--merge-method", default="task_arithmetic")
    parser.add_argument("--merge-params", default="{lambda: 0.3}", help="YAML mapping")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from mergesmith.adapt.base_merge import anchor_merge
    from mergesmith.bench.adapt_problem import problem_from_pool
    from mergesmith.bench.load import profile_pool
    from mergesmith.bench.scoring import Evaluator, average as _average
    from mergesmith.bench.tasks import build_tasks

    hf_logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = build_tasks(args.profile, Path(args.cache_dir), seed=args.seed, progress=False)
    pool = profile_pool(args.profile, tasks, Path(args.cache_dir), args.seed, False, lambda _: None)
    problem = problem_from_pool(pool)
    params = yaml.safe_load(args.merge_params) or {}
    started = time.perf_counter()
    floating, _ = anchor_merge(problem, args.merge_method, params, args.seed)
    encoder = problem.encoder_with(floating)
    merge_seconds = time.perf_counter() - started
    scores = Evaluator(
        pool.tasks, {t.name: t.test for t in pool.tasks}, {t.name: t.head for t in pool.tasks}, pool.featurizer
    )(encoder)
    print(
        json.dumps(
            {
                "merge_method": args.merge_method,
                "merge_params": params,
                "accuracy": scores,
                "average": _average(scores),
                "merge_seconds": round(merge_seconds, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

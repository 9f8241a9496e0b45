"""Is one merge really better than another on the bench? Paired bootstrap of the difference in normalized accuracy.

Every merge is scored on the same test examples, so the honest comparison is paired: resample each task's test
examples (with replacement, the same indices for every merge), recompute the difference of normalized accuracy
(merged / expert accuracy per task, averaged over tasks, as `mergesmith bench` reports it) and read the 2.5 and 97.5
percentiles (``mergesmith.bench.paired``, the bench's own intervals). A difference whose interval contains 0 is not
a finding.

Any rows of a finished bench run, from the per-example hits it saved (predictions.safetensors), the first row named
being the reference (default: task_arithmetic when the run has it, and every row):

    python benchmarks/paired_difference.py --run runs/bench-default ties adamerging_layerwise

Or merges scored here, each ``METHOD:{YAML params}`` (a tensor-wise method, merged in memory as the bench's grid
does) or ``adapt:METHOD[:{YAML params}]`` (a data-driven method, run as `mergesmith bench` runs it):

    python benchmarks/paired_difference.py --cache-dir ~/.cache/mergesmith \\
        'task_arithmetic:{lambda: 0.1}' 'ties:{density: 0.5, lambda: 0.7}' adapt:adamerging_layerwise
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

from mergesmith.bench.paired import Interval, paired_difference


def correctness(encoder_for, pool) -> dict[str, torch.Tensor]:
    """Task -> bool [n_test]: whether the merged model's head prediction is right on each test example."""
    from mergesmith.bench.scoring import Evaluator

    out = {}
    for task in pool.tasks:
        one = Evaluator([task], {task.name: task.test}, {task.name: task.head}, pool.featurizer)
        out[task.name] = one.correct(encoder_for(task.name))[task.name]
    return out


def normalized(right: dict[str, torch.Tensor], expert: dict[str, float]) -> float:
    return sum(float(right[t].float().mean()) / expert[t] for t in expert) / len(expert)


def compare(results: dict[str, dict[str, torch.Tensor]], expert: dict[str, float], samples: int, seed: int):
    """Per merge: (normalized accuracy, interval of its difference from the first merge, and from the merge listed
    just before it); None for the first."""
    names = list(results)

    def interval(a: str, b: str) -> Interval | None:
        difference = paired_difference(results[a], results[b], expert, samples=samples, seed=seed)
        return None if difference is None else difference.normalized

    table = {names[0]: (normalized(results[names[0]], expert), None, None)}
    for before, name in zip(names, names[1:]):
        table[name] = (normalized(results[name], expert), interval(name, names[0]), interval(name, before))
    return table


def _verdict(interval: Interval) -> str:
    return "better" if interval.low > 0 else "worse" if interval.high < 0 else "no difference"


def report(table: dict, samples: int, n_test: int) -> str:
    names = list(table)
    lines = [
        f"\nnormalized accuracy (%); differences with their paired 95 % bootstrap intervals ({samples} resamples "
        f"of each task's {n_test} test examples), against the first merge and the one listed before"
    ]
    for i, (name, (score, against_first, against_previous)) in enumerate(table.items()):
        line = f"  {name:42s} {100 * score:6.2f}"
        for label, other, interval in (
            ("first", names[0], against_first),
            ("previous", names[i - 1], against_previous),
        ):
            if interval is None or (label == "previous" and i == 1):
                continue
            line += (
                f"   vs {other}: {100 * interval.difference:+.2f} [{100 * interval.low:+.2f}, "
                f"{100 * interval.high:+.2f}] {_verdict(interval)}"
            )
        lines.append(line)
    return "\n".join(lines)


def from_run(run_dir: Path, rows: list[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """The named rows' hits (the reference first) and the experts' accuracies, from a bench run directory."""
    from mergesmith.bench.predictions import FILE_NAME, read_predictions

    hits = read_predictions(run_dir / FILE_NAME)
    tasks = list(next(iter(hits.values()))) if hits else []
    expert = {}
    for task in tasks:
        own = hits.get(f"expert: {task}", {}).get(task)
        if own is None:
            raise ValueError(f"{run_dir / FILE_NAME} has no expert row for task {task!r}")
        expert[task] = float(own.float().mean())
    if not rows:
        rows = [r for r in hits if not r.startswith("expert: ")]
        if "task_arithmetic" in rows:
            rows.remove("task_arithmetic")
            rows.insert(0, "task_arithmetic")
    unknown = [r for r in rows if r not in hits]
    if unknown:
        raise ValueError(f"no row {unknown[0]!r} in {run_dir / FILE_NAME}; its rows: {', '.join(hits)}")
    missing = [r for r in rows if any(hits[r][t] is None for t in tasks)]
    if missing:
        raise ValueError(f"row {missing[0]!r} was not scored on every task; it cannot be compared")
    return {r: {t: hit for t, hit in hits[r].items() if hit is not None} for r in rows}, expert


def parse_merge(item: str) -> tuple[bool, str, dict]:
    """``METHOD:{params}`` or ``adapt:METHOD[:{params}]`` -> (is adapt, method, params); an unknown method, bad
    YAML or parameters that fail the method's schema raise with a one-line message."""
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.methods import METHODS

    adapt = item.startswith("adapt:")
    method, _, raw = item.removeprefix("adapt:").partition(":")
    try:
        params = yaml.safe_load(raw) if raw else {}
    except yaml.YAMLError as e:
        raise ValueError(
            f"{item!r}: the parameters are not YAML ({str(e).splitlines()[0]}); write e.g. '{{lambda: 0.3}}'"
        ) from None
    if not isinstance(params, dict):
        raise ValueError(f"{item!r}: the parameters must be a YAML mapping such as '{{lambda: 0.3}}'")
    if adapt:
        parse_params(get_adapt_method(method), params)
    elif method not in METHODS:
        raise ValueError(f"{item!r}: unknown method {method!r}; known: {', '.join(sorted(METHODS))} (or adapt:METHOD)")
    return adapt, method, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "merges",
        nargs="*",
        help="with --run: row names; else METHOD:{params} or adapt:METHOD[:{params}]; the first is the reference",
    )
    parser.add_argument("--run", type=Path, default=None, help="a bench run directory (its predictions.safetensors)")
    parser.add_argument("--cache-dir", default=os.environ.get("MERGESMITH_CACHE"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from mergesmith.errors import MergesmithError

    if args.run is not None:
        try:
            results, expert = from_run(args.run, list(args.merges))
        except (ValueError, MergesmithError) as e:
            parser.error(str(e))
        n_test = len(next(iter(next(iter(results.values())).values())))
        print(report(compare(results, expert, args.samples, args.seed), args.samples, n_test))
        return
    if not args.merges:
        parser.error("name the merges to compare, or a finished run with --run DIR")

    from transformers.utils import logging as hf_logging

    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.adapt.base_merge import anchor_merge
    from mergesmith.bench.adapt_problem import problem_from_pool
    from mergesmith.bench.load import profile_pool
    from mergesmith.bench.sources import default_cache_dir
    from mergesmith.bench.tasks import build_tasks

    try:  # every merge is checked before the minutes of scoring start
        merges = {item: parse_merge(item) for item in args.merges}
    except (ValueError, MergesmithError) as e:
        parser.error(str(e))

    hf_logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    tasks = build_tasks(args.profile, cache, seed=args.seed, progress=False)
    pool = profile_pool(args.profile, tasks, cache, args.seed, False, lambda _: None)
    problem = problem_from_pool(pool)

    experts = {name: problem.load_encoder(problem.expert_dirs[name]) for name in problem.task_names}
    expert_right = correctness(lambda t: experts[t], pool)
    expert = {t: float(v.float().mean()) for t, v in expert_right.items()}
    experts.clear()  # the experts' encoders are freed before the merges load theirs

    results = {}
    for item, (adapt, method, params) in merges.items():
        if adapt:
            spec = get_adapt_method(method)
            result = spec.run(problem, parse_params(spec, params), args.seed)
            results[item] = correctness(result.encoder_for, pool)
            del result
        else:
            floating, _ = anchor_merge(problem, method, params, args.seed)
            encoder = problem.encoder_with(floating)
            results[item] = correctness(lambda _t: encoder, pool)  # noqa: B023 (called before the loop moves on)
        print(f"scored {item}", flush=True)

    print(report(compare(results, expert, args.samples, args.seed), args.samples, len(pool.tasks[0].test)))


if __name__ == "__main__":
    main()

"""Is one merge really better than another on the bench? Paired bootstrap of the difference in normalized accuracy.

Every merge is scored on the same test examples, so the honest comparison is paired: resample each task's test
examples (with replacement, the same indices for every merge), recompute each merge's normalized accuracy (merged /
expert accuracy per task, averaged over tasks, as `mergesmith bench` reports it) and read the 2.5 and 97.5
percentiles of the difference against the first merge. A difference whose interval contains 0 is not a finding.

    python benchmarks/paired_difference.py --cache-dir ~/.cache/mergesmith \\
        'task_arithmetic:{lambda: 0.1}' 'ties:{density: 0.5, lambda: 0.7}' adapt:adamerging_layerwise

Each merge is ``METHOD:{YAML params}`` (a tensor-wise method, merged in memory as the bench's grid does) or
``adapt:METHOD[:{YAML params}]`` (a data-driven method, run as `mergesmith bench` runs it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml


def correctness(encoder_for, pool) -> dict[str, torch.Tensor]:
    """Task -> bool [n_test]: whether the merged model's head prediction is right on each test example."""
    from mergesmith.bench.encoder import split_features

    out = {}
    for task in pool.tasks:
        features = split_features(encoder_for(task.name), task.test, pool.featurizer.pad_id)
        with torch.no_grad():
            out[task.name] = task.head(features).argmax(-1) == task.test.labels
    return out


def normalized(right: dict[str, torch.Tensor], expert: dict[str, float], rows: dict[str, torch.Tensor]) -> float:
    return sum(float(right[t][rows[t]].float().mean()) / expert[t] for t in right) / len(right)


def bootstrap(results: dict[str, dict[str, torch.Tensor]], expert: dict[str, float], samples: int, seed: int):
    """Per merge: (normalized accuracy, 95 % interval of its difference from the first merge, and from the merge
    listed just before it); None for the first."""
    names = list(results)
    first = results[names[0]]
    full = {t: torch.arange(len(v)) for t, v in first.items()}
    generator = torch.Generator().manual_seed(seed)
    scores = {name: [] for name in names}
    for _ in range(samples):
        rows = {t: torch.randint(len(v), (len(v),), generator=generator) for t, v in first.items()}
        for name in names:
            scores[name].append(normalized(results[name], expert, rows))

    def interval(a: str, b: str) -> tuple[float, float]:
        d = torch.tensor(scores[a]) - torch.tensor(scores[b])
        return float(d.quantile(0.025)), float(d.quantile(0.975))

    table = {names[0]: (normalized(first, expert, full), None, None)}
    for before, name in zip(names, names[1:]):
        table[name] = (normalized(results[name], expert, full), interval(name, names[0]), interval(name, before))
    return table


def _verdict(low: float, high: float) -> str:
    return "no difference" if low <= 0 <= high else ("better" if low > 0 else "worse")


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
            low, high = interval
            line += (
                f"   vs {other}: {100 * (score - table[other][0]):+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] "
                f"{_verdict(low, high)}"
            )
        lines.append(line)
    return "\n".join(lines)


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
        "merges", nargs="+", help="METHOD:{params} or adapt:METHOD[:{params}]; the first is the reference"
    )
    parser.add_argument("--cache-dir", default=os.environ.get("MERGESMITH_CACHE"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.adapt.base_merge import anchor_merge
    from mergesmith.bench.adapt_problem import problem_from_pool
    from mergesmith.bench.load import profile_pool
    from mergesmith.bench.sources import default_cache_dir
    from mergesmith.bench.tasks import build_tasks
    from mergesmith.errors import MergesmithError

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

    print(report(bootstrap(results, expert, args.samples, args.seed), args.samples, len(pool.tasks[0].test)))


if __name__ == "__main__":
    main()

"""``mergesmith adapt METHOD``: build the problem from a pool or profile, run the method, save the result."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from mergesmith.errors import ConfigError, MergesmithError


def parse_param_args(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` strings -> a dict; values are read as YAML scalars/lists (``0.3``, ``true``, ``[1, 2]``)."""
    from mergesmith.io.parse import parse_yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected key=value, e.g. --param num_examples=128")
        try:
            params[key] = parse_yaml(raw, f"--param {key}", what="value", error=ConfigError, top=None) if raw.strip() else ""
        except ConfigError:
            params[key] = raw  # not YAML: the text itself, which the method's parameter check then judges
    return params


def run_adapt(method: str, out_dir: str | Path, *, pool: str | Path | None = None, profile: str | None = None,
              cache_dir: str | Path | None = None, params: dict | None = None, seed: int = 0, force: bool = False,
              progress: bool = True, echo: Callable[[str], None] = print):
    """Run adapt ``method`` on a pool YAML or built-in profile and write the result to ``out_dir``.
    Returns ``(result, seconds)``. Every argument is checked before any model is loaded."""
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.adapt.problem import check_needs, load_problem
    from mergesmith.adapt.result import save_result

    spec = get_adapt_method(method)
    parsed = parse_params(spec, params or {})
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MergesmithError(f"output directory {out} exists and is not empty; choose another or pass --force to replace it")
    problem = load_problem(pool=pool, profile=profile, cache_dir=cache_dir, seed=seed, progress=progress, echo=echo)
    check_needs(problem, method, spec.needs)
    echo(f"{method}: {len(problem.tasks)} tasks ({', '.join(problem.task_names)}), base {problem.base_dir}")
    started = time.perf_counter()
    result = spec.run(problem, parsed, seed)
    seconds = time.perf_counter() - started
    save_result(result, problem, out, force=force)
    return result, seconds

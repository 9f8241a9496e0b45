"""``mergesmith adapt METHOD``: check the arguments, run the method on a ready ``AdaptProblem``, save the result.
(The CLI builds the problem from a pool or a profile with ``mergesmith.bench.adapt_problem.load_problem``.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergesmith.errors import ConfigError

if TYPE_CHECKING:
    from mergesmith.adapt._spec import AdaptSpec
    from mergesmith.adapt.problem import AdaptProblem
    from mergesmith.adapt.result import AdaptResult


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
            params[key] = (
                parse_yaml(raw, f"--param {key}", what="value", error=ConfigError, top=None) if raw.strip() else ""
            )
        except ConfigError:
            params[key] = raw  # not YAML: the text itself, which the method's parameter check then judges
    return params


def check_adapt_args(
    method: str,
    out_dir: str | Path,
    params: dict | None = None,
    *,
    force: bool = False,
    inputs: Sequence[Path] = (),
    quiet: bool = False,
):
    """``(spec, parsed params)`` of adapt ``method``, with the output directory checked (``io.atomic.check_output``,
    against the ``inputs`` known before the pool is loaded): every argument is checked before any model is loaded.
    ``quiet`` turns the method's own progress bars off unless ``params`` sets them."""
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params, without_progress_bars
    from mergesmith.io.atomic import check_output

    spec = get_adapt_method(method)
    given = dict(params or {})
    parsed = parse_params(spec, without_progress_bars(spec, given) if quiet else given)
    check_output(out_dir, force=force, inputs=[Path(p) for p in inputs if Path(p).exists()])
    return spec, parsed


def run_adapt(
    spec: AdaptSpec,
    params: Any,
    problem: AdaptProblem,
    out_dir: str | Path,
    *,
    seed: int = 0,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> tuple[AdaptResult, float]:
    """Run the adapt method ``spec`` with ``params`` (from ``check_adapt_args``) on ``problem`` and write the result
    to ``out_dir``. Returns ``(result, seconds the method ran)``."""
    from mergesmith.adapt.problem import check_needs
    from mergesmith.adapt.result import save_result

    check_needs(problem, spec.name, spec.needs)
    echo(f"{spec.name}: {len(problem.tasks)} tasks ({', '.join(problem.task_names)}), base {problem.base_dir}")
    started = time.perf_counter()
    result = spec.run(problem, params, seed)
    seconds = time.perf_counter() - started
    save_result(result, problem, Path(out_dir), force=force)
    return result, seconds

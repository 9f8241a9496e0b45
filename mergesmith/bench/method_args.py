"""``bench --methods``: the methods to run and the parameters fixed for each.

Comma-separated entries, each ``method`` or ``method:key=value``; a ``key=value`` after a comma belongs to the method
before it: ``ties:density=0.3,lambda=1.0,linear,regmean:alpha=0.5``. Values are read as YAML (``0.3``, ``true``,
``[0.2, 0.5]``, as ``--param``); commas inside brackets do not split entries.

A tensor-wise method's fixed keys replace those axes of its validation grid (the other axes are still tuned); an adapt
method's keys are its parameters (the method's defaults otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mergesmith.errors import ConfigError


@dataclass(frozen=True)
class MethodChoice:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def parse_methods(text: str) -> list[MethodChoice]:
    """``--methods`` text -> the methods in order, each with the parameters given for it (not yet checked)."""
    from mergesmith.adapt.runner import parse_param_args

    choices: list[MethodChoice] = []
    for item in _split_top_level(text):
        head, eq, _ = item.partition("=")
        if eq and ":" not in head:  # key=value: a parameter of the method before it
            if not choices:
                raise ConfigError(
                    f"--methods: {item!r} has no method before it; write METHOD:KEY=VALUE, e.g. ties:density=0.3"
                )
            choices[-1].params.update(parse_param_args([item]))
            continue
        name, colon, first = item.partition(":")
        name = name.strip()
        if not name or (colon and "=" not in first):
            raise ConfigError(f"--methods: {item!r} is not METHOD or METHOD:KEY=VALUE, e.g. ties:density=0.3")
        if any(c.name == name for c in choices):
            raise ConfigError(f"--methods: {name} is listed twice; list each method once, with all its parameters")
        choices.append(MethodChoice(name, parse_param_args([first]) if colon else {}))
    return choices


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside [...] and {...}; empty items are dropped."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def tensor_method_values(method: str, given: Mapping[str, Any], n_experts: int) -> dict[str, Any]:
    """A tensor-wise method's given parameters, checked and converted (unknown key, wrong type, out of range, a
    per-model list of the wrong length, or a grid point they make invalid: a one-line ConfigError)."""
    from mergesmith.bench.grids import grid_points
    from mergesmith.methods import METHODS
    from mergesmith.methods._spec import param_infos, with_equal_weights

    spec = METHODS[method]
    infos = param_infos(spec.params)
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key not in infos:
            allowed = ", ".join(sorted(infos)) or "none"
            raise ConfigError(f"--methods {method}: unknown parameter {key!r}; allowed: {allowed}")
        where = f"--methods {method}:{key}"
        if isinstance(value, list):
            if not infos[key].per_model:
                raise ConfigError(f"{where}: {key} is one value for all experts, not a list")
            if len(value) != n_experts:
                raise ConfigError(
                    f"{where}: {len(value)} values for {n_experts} experts; give one per expert or one for all"
                )
            values[key] = [infos[key].coerce(v, where) for v in value]
        else:
            values[key] = infos[key].coerce(value, where)
    for point in grid_with(grid_points(method), values):  # rules across parameters (della's density +/- epsilon)
        spec.make_params(n_experts, with_equal_weights(spec.params, point), where=f"--methods {method}")
    return values


def adapt_method_params(method: str, given: Mapping[str, Any], *, progress: bool = True) -> Any:
    """An adapt method's parameters object (``adapt._spec.parse_params``); ``progress=False`` also turns the method's
    own progress bar off unless the parameters set it."""
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params, without_progress_bars

    spec = get_adapt_method(method)
    return parse_params(spec, dict(given) if progress else without_progress_bars(spec, dict(given)))


def grid_with(points: list[dict], fixed: Mapping[str, Any]) -> list[dict]:
    """The grid with the fixed keys set on every point; points that become equal are kept once, in order."""
    out: list[dict] = []
    for point in points:
        merged = {**point, **fixed}
        if merged not in out:
            out.append(merged)
    return out


def method_parameters(
    names: list[str], given: Mapping[str, Mapping[str, Any]], n_experts: int, *, progress: bool = True
) -> dict[str, Any]:
    """Every method's checked parameters, before any model is loaded: an adapt method's parameters object, or a
    tensor-wise method's fixed values (empty when none were given)."""
    from mergesmith.adapt import ADAPT_METHODS

    return {
        name: adapt_method_params(name, given.get(name, {}), progress=progress)
        if name in ADAPT_METHODS
        else tensor_method_values(name, given.get(name, {}), n_experts)
        for name in names
    }

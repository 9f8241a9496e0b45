"""What an adapt method is: a name, a ``run(problem, params, seed) -> AdaptResult`` function, its pydantic parameters,
its paper and the data it reads. The catalogue is the plain dict ``mergesmith.adapt.ADAPT_METHODS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergesmith.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mergesmith.adapt.problem import AdaptProblem
    from mergesmith.adapt.result import AdaptResult

# The data an adapt method may read: "unlabeled" = the test split's inputs (never its labels: test-time adaptation),
# "validation" = a small labeled split.
DATA_KINDS = frozenset({"unlabeled", "validation"})


@dataclass(frozen=True)
class AdaptSpec:
    name: str  # CLI/bench name, e.g. "adamerging_layerwise"
    run: Callable[[AdaptProblem, Any, int], AdaptResult]  # run(problem, params, seed) -> result
    params: type[BaseModel]  # extra="forbid", every field with a default
    paper: str  # citation: authors, year, title, arXiv id
    needs: frozenset[str]  # subset of DATA_KINDS: which data the method reads
    description: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - DATA_KINDS
        if unknown:
            raise ValueError(f"{self.name}: needs {sorted(unknown)} are not data kinds {sorted(DATA_KINDS)}")


def parse_params(spec: AdaptSpec, given: dict[str, Any] | None = None) -> Any:
    """``spec.params(**given)`` with one-line errors: unknown keys list the allowed ones, bad values say which key."""
    from pydantic import ValidationError

    given = dict(given or {})
    allowed = list(spec.params.model_fields)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for {spec.name}; allowed: {', '.join(allowed) or '(none)'}"
        )
    try:
        return spec.params(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first.get("loc", ())) or "?"
        raise ConfigError(
            f"{spec.name}: parameter {key!r}: {first.get('msg', 'invalid value')} (got {first.get('input')!r})"
        ) from None


def params_dict(params: Any) -> dict:
    """A JSON-able dict of a params object (for adapt.json and bench rows)."""
    return params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params or {})


def without_progress_bars(spec: AdaptSpec, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with the method's own ``progress`` switch off, unless ``given`` sets it (what ``-q`` asks for)."""
    if "progress" in spec.params.model_fields and "progress" not in given:
        return {**given, "progress": False}
    return given

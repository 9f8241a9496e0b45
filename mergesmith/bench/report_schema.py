"""The results dict a bench report is built from: its required keys, and ``validate``, which names the first missing
or malformed one. Accuracies are fractions in [0, 1]; ``None`` (JSON null) means "not measured"."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergesmith.errors import MergesmithError

# Top-level keys of a results dict; "cosine" may be null (a user pool whose task vectors were not compared).
REQUIRED_KEYS = (
    "profile",
    "seed",
    "date",
    "machine",
    "base_model",
    "trained",
    "tasks",
    "rows",
    "expert_average",
    "cosine",
)
REQUIRED_TASK_KEYS = ("name", "num_labels", "sizes", "majority")
REQUIRED_ROW_KEYS = (
    "name",
    "kind",
    "accuracy",
    "average",
    "normalized",
    "params",
    "grid",
    "merge_seconds",
    "peak_memory_mb",
)
REQUIRED_GRID_KEYS = ("params", "validation_average")
# Optional keys a bench run writes (a results dict without them still renders, without what they feed):
# - top level "protocol": "zero_shot" (every row scored with the tasks' fixed heads made from label descriptions; the
#   pretrained row is zero-shot) or "probe" (each expert with its own head; the pretrained row a linear probe).
# - top level "reference": the row every row's "vs_reference" is against: "task_arithmetic" when it ran, else
#   the first merge row (e.g. "linear"); null when no merge row has hits. "bootstrap": {"samples", "confidence",
#   "seed"} of those intervals (``mergesmith.bench.paired``). The per-example hits they were computed from are in the
#   run directory's predictions.safetensors (``mergesmith.bench.predictions``).
# - per row "vs_reference": {"difference", "low", "high", "real"}: normalized accuracy minus the reference
#   row's (fractions), its 95 % paired-bootstrap interval, and whether the interval excludes 0; "average": the same
#   for average accuracy. null for a row not scored on every task.
# - per merge/adapt row "memory_measure": what "peak_memory_mb" is: "merge process peak" (the peak RSS of the
#   row's own `mergesmith merge` process) or "in-process rise" (the bench process's RSS rise while an adapt method
#   ran); "single_model": whether the row is one model for every task (false: routers, per-task modules or models).
ROW_KINDS = ("baseline", "expert", "merge", "adapt")
MERGED_KINDS = ("merge", "adapt")  # rows that are one merged model per method (adapt: data-driven methods)


class ReportError(MergesmithError, ValueError):
    """A results dict the report cannot be built from. A ValueError too, so callers outside the CLI can catch it."""


def _require(mapping: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(mapping, Mapping):
        raise ReportError(f"{where} must be a dict, got {type(mapping).__name__}")
    for key in keys:
        if key not in mapping:
            raise ReportError(f"{where} is missing required key {key!r}")


def _check_finite(value: Any, where: str) -> None:
    # NaN/inf would make results.json invalid JSON and every plot silently wrong; the runner must say null instead.
    if isinstance(value, float) and not math.isfinite(value):
        raise ReportError(f"{where} is {value!r}; use null (None) for a value that was not measured")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


def validate(results: Any) -> None:
    """Raise ReportError (a ValueError) naming the first missing or malformed key; return None when usable."""
    _require(results, REQUIRED_KEYS, "results")
    if not isinstance(results["tasks"], list) or not results["tasks"]:
        raise ReportError("results['tasks'] must be a non-empty list")
    for i, task in enumerate(results["tasks"]):
        _require(task, REQUIRED_TASK_KEYS, f"results['tasks'][{i}]")
    names = [task["name"] for task in results["tasks"]]
    if len(set(names)) != len(names):
        raise ReportError(f"results['tasks'] names repeat: {names}")
    if not isinstance(results["rows"], list) or not results["rows"]:
        raise ReportError("results['rows'] must be a non-empty list")
    for i, row in enumerate(results["rows"]):
        where = f"results['rows'][{i}]"
        _require(row, ("name",), where)
        where = f"{where} ({row['name']!r})"
        _require(row, REQUIRED_ROW_KEYS, where)
        if row["kind"] not in ROW_KINDS:
            raise ReportError(f"{where}['kind'] is {row['kind']!r}; expected one of {list(ROW_KINDS)}")
        _require(row["accuracy"], names, f"{where}['accuracy']")
        _require(row["params"], (), f"{where}['params']")
        if not isinstance(row["grid"], list):
            raise ReportError(f"{where}['grid'] must be a list")
        for j, point in enumerate(row["grid"]):
            _require(point, REQUIRED_GRID_KEYS, f"{where}['grid'][{j}]")
    cosine = results["cosine"]
    if cosine is not None:
        _require(cosine, ("tasks", "matrix"), "results['cosine']")
        n = len(cosine["tasks"])
        if len(cosine["matrix"]) != n or any(len(line) != n for line in cosine["matrix"]):
            raise ReportError(f"results['cosine']['matrix'] must be {n} x {n} to match results['cosine']['tasks']")
    _check_finite(results, "results")

"""Cell texts shared by the terminal table and the HTML page, so both always show the same numbers; and what the
table, the page and the plots read from a results dict (task names, each expert's accuracy on its own task)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergesmith.bench.report_schema import MERGED_KINDS


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    # Sub-second merges happen on the mini profile; one decimal would show them all as "0.0 s".
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"


def format_megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


# An adapt row's memory is the rise of the bench's own RSS while it ran (``adapt_rows.IN_PROCESS_RISE``), a merge
# row's the peak RSS of its own ``mergesmith merge`` process: the cell says which, so the two are not confused.
IN_PROCESS_RISE = "in-process rise"
MEMORY_HEADER_NOTE = (
    "peak memory: for a tensor-wise merge, the peak resident memory of its own `mergesmith merge` process (what a "
    "user would see); for a data-driven (adapt) method, marked 'in-process rise', how far the bench process's "
    "resident memory rose above its level at the start while the method ran"
)
REAL_MARK = "\u2713"  # a difference whose interval excludes 0


def format_memory(row: Mapping[str, Any]) -> str:
    text = format_megabytes(row["peak_memory_mb"])
    return f"{text} {IN_PROCESS_RISE}" if row.get("memory_measure") == IN_PROCESS_RISE and text != "-" else text


def format_difference(row: Mapping[str, Any], reference: str | None) -> str:
    """``+3.1 [+2.0, +4.2] ✓``: the row's normalized accuracy minus the reference row's, in points, with its 95 %
    paired-bootstrap interval; the mark when the interval excludes 0."""
    if row["name"] == reference:
        return "reference"
    field = row.get("vs_reference")
    if not isinstance(field, Mapping) or field.get("difference") is None:
        return "-"
    d, low, high = (100 * field[key] for key in ("difference", "low", "high"))
    return f"{d:+.1f} [{_bound(low)}, {_bound(high)}]" + (f" {REAL_MARK}" if field.get("real") else "")


def _bound(points: float) -> str:
    """One decimal, or two when one would print a nonzero bound as 0.0 (an interval that excludes 0 by 0.03 points
    must not read as touching it)."""
    text = f"{points:+.1f}"
    return f"{points:+.2f}" if points != 0 and float(text) == 0 else text


def difference_header(results: Mapping[str, Any]) -> str | None:
    """The difference column's header, ``vs task_arithmetic``; None for results without comparisons."""
    reference = results.get("reference")
    return None if reference is None else f"vs {reference}"


def format_scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def compact_params(params: Mapping[str, Any]) -> str:
    """``{"density": 0.5, "lambda": 1.0}`` -> ``density=0.5 lambda=1``; ``{}`` -> ``-``."""
    if not params:
        return "-"
    return " ".join(f"{key}={format_scalar(params[key])}" for key in sorted(params))


def task_names(results: Mapping[str, Any]) -> list[str]:
    return [task["name"] for task in results["tasks"]]


def _best_merge_values(results: Mapping[str, Any]) -> dict[str, float]:
    """Per column (each task, "average", "normalized"), the highest value any merge row reached.

    Only merges scored on every task compete for the best average and normalized accuracy: an average over fewer
    tasks is not comparable.
    """
    tasks = task_names(results)
    best: dict[str, float] = {}
    for row in results["rows"]:
        if row["kind"] not in MERGED_KINDS:
            continue
        values = {task: row["accuracy"][task] for task in tasks}
        if all(value is not None for value in values.values()):
            values.update(average=row["average"], normalized=row["normalized"])
        for column, value in values.items():
            if value is not None and value > best.get(column, -math.inf):
                best[column] = value
    return best


def table_model(results: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[tuple[str, bool]]]]]:
    """The results table as text: (headers, [(row kind, [(cell text, is best merge in its column)])])."""
    tasks = task_names(results)
    versus = difference_header(results)
    headers = ["method", *tasks, "average", "normalized", *([versus] if versus else []), "merge time"]
    headers += ["peak memory", "params"]
    best = _best_merge_values(results)
    rows = []
    for row in results["rows"]:
        cells: list[tuple[str, bool]] = [(str(row["name"]), False)]
        scored = [(row["accuracy"][t], t) for t in tasks] + [
            (row["average"], "average"),
            (row["normalized"], "normalized"),
        ]
        for value, column in scored:
            # Ties share the mark: two merges with the same accuracy are equally best.
            is_best = row["kind"] in MERGED_KINDS and value is not None and value == best.get(column)
            cells.append((format_percent(value), is_best))
        if versus:
            cells.append((format_difference(row, results["reference"]), False))
        cells += [
            (format_seconds(row["merge_seconds"]), False),
            (format_memory(row), False),
            (compact_params(row["params"]), False),
        ]
        rows.append((row["kind"], cells))
    return headers, rows


def expert_task(row: Mapping[str, Any], tasks: Sequence[str]) -> str | None:
    """The task an expert row was fine-tuned on: an explicit "task" key, else the task its name ends with."""
    if row.get("task") in tasks:
        return row["task"]
    matches = [t for t in tasks if str(row["name"]).endswith(t)]
    return max(matches, key=len) if matches else None


def expert_own_accuracy(results: Mapping[str, Any]) -> dict[str, float]:
    tasks = task_names(results)
    own = {}
    for row in results["rows"]:
        if row["kind"] == "expert":
            task = expert_task(row, tasks)
            if task is not None and row["accuracy"][task] is not None:
                own[task] = row["accuracy"][task]
    return own

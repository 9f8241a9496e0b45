"""The text outputs of a bench run: the terminal table (rich, no colour codes), ``results.json`` and ``results.csv``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

from mergesmith.bench.report_cells import (
    MEMORY_HEADER_NOTE,
    REAL_MARK,
    compact_params,
    format_percent,
    table_model,
    task_names,
)
from mergesmith.bench.report_schema import validate

# Marks the best merge in a column, in the terminal table (no colour there when piped to a file).
BEST_MARK = "*"


def _terminal_header(header: str) -> str:
    # Task names break after "_" and two-word headers stack: six tasks then fit a 120-column terminal.
    return header.replace("_", "_\n").replace(" ", "\n") if header != "method" else header


def _rich_table(results: Mapping[str, Any], with_params: bool):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    headers, rows = table_model(results)
    numeric = range(1, len(headers) - 1)  # everything between the method name and the params
    if not with_params:
        headers, rows = headers[:-1], [(kind, cells[:-1]) for kind, cells in rows]
    # Every number ends in the mark or a space, so right-aligned numbers stay aligned on the decimal point.
    texts = [
        [text + (BEST_MARK if best else " ") if i in numeric else text for i, (text, best) in enumerate(cells)]
        for _, cells in rows
    ]
    # Right padding only: two spaces between columns, enough to read and a dozen columns narrower.
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        title=f"mergesmith bench · profile {results['profile']} · seed {results['seed']}",
    )
    for i, header in enumerate(headers):
        # Numbers and method names (up to 32 characters) never wrap; the params column folds.
        longest = max(len(line[i]) for line in texts)
        table.add_column(
            _terminal_header(header),
            justify="right" if i in numeric else "left",
            overflow="fold",
            min_width=None if i == len(headers) - 1 and with_params else min(longest, 32),
        )
    previous_kind = None
    for (kind, _), line in zip(rows, texts):
        if previous_kind is not None and kind != previous_kind:
            table.add_section()  # a gap between baselines, experts and merges
        previous_kind = kind
        # Text objects, not strings: a method name like "ties [tuned]" must not be read as rich markup.
        table.add_row(*(Text(text) for text in line))
    return table


def format_table(results: Mapping[str, Any], width: int | None = None) -> str:
    """The results as a plain-text table (rich, no colour codes), best merge per column marked with ``*``.

    ``width`` is the terminal width; by default the table takes its natural width. When the table with its params
    column does not fit, the params move to lines under the table rather than being cropped.
    """
    from rich.console import Console

    validate(results)

    def console(width: int, file: io.StringIO | None = None) -> Console:
        return Console(
            file=file if file is not None else io.StringIO(),
            width=width,
            color_system=None,
            force_terminal=False,
            highlight=False,
            emoji=False,
            legacy_windows=False,
        )

    def natural_width(table) -> int:
        return console(10_000).measure(table).maximum

    table = _rich_table(results, with_params=True)
    fits = width is None or natural_width(table) <= width
    if not fits:
        table = _rich_table(results, with_params=False)
    # Never narrower than the table's natural width: rich would crop columns, and a terminal that wraps long lines
    # loses nothing.
    buffer = io.StringIO()
    console(max(width or 0, natural_width(table)), buffer).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not fits:
        lines += ["", "params:"]
        lines += [f"  {row['name']}: {compact_params(row['params'])}" for row in results["rows"] if row["params"]]
    lines.append("")
    lines.append(
        f"{BEST_MARK} best merge in the column. normalized = merged / expert accuracy per task, averaged. "
        f"Experts on their own tasks average {format_percent(results['expert_average'])}."
    )
    if results.get("reference") is not None:
        lines.append(
            f"vs {results['reference']}: normalized accuracy minus {results['reference']}'s, in points, [95% paired "
            f"bootstrap interval]; {REAL_MARK} the interval excludes 0."
        )
    lines.append(MEMORY_HEADER_NOTE + ".")
    return "\n".join(lines).strip("\n") + "\n"


def results_json(results: Mapping[str, Any]) -> str:
    return json.dumps(results, sort_keys=True, indent=2, allow_nan=False) + "\n"


def results_csv(results: Mapping[str, Any]) -> str:
    tasks = task_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "name",
            "kind",
            *(f"accuracy_{t}" for t in tasks),
            "average",
            "normalized",
            "merge_seconds",
            "peak_memory_mb",
            "params",
        ]
    )

    def raw(value):  # full precision, and an empty cell for null so spreadsheets read it as missing
        return "" if value is None else repr(value)

    for row in results["rows"]:
        writer.writerow(
            [
                row["name"],
                row["kind"],
                *(raw(row["accuracy"][t]) for t in tasks),
                raw(row["average"]),
                raw(row["normalized"]),
                raw(row["merge_seconds"]),
                raw(row["peak_memory_mb"]),
                json.dumps(row["params"], sort_keys=True, separators=(",", ":")),
            ]
        )
    return buffer.getvalue()

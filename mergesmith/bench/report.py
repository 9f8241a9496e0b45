"""The bench's report layer: the terminal table, ``results.json``, ``results.csv`` and a self-contained ``report.html``.

Everything here is a pure function of the results dict the bench runner produces (schema in ``REQUIRED_KEYS`` /
``REQUIRED_ROW_KEYS`` / ``REQUIRED_TASK_KEYS``), so a report can be re-rendered later from a saved ``results.json``.
Accuracies are fractions in [0, 1]; they are shown as percentages. ``None`` (JSON null) means "not measured" and is
shown as "-": experts are often scored on their own task only, baselines have no merge time.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergesmith.errors import MergesmithError
from mergesmith.figures import img_tag

# Top-level keys of a results dict; "cosine" may be null (a user pool whose task vectors were not compared).
REQUIRED_KEYS = ("profile", "seed", "date", "machine", "base_model", "trained", "tasks", "rows", "expert_average",
                 "cosine")
REQUIRED_TASK_KEYS = ("name", "num_labels", "sizes", "majority")
REQUIRED_ROW_KEYS = ("name", "kind", "accuracy", "average", "normalized", "params", "grid", "merge_seconds",
                     "peak_memory_mb")
REQUIRED_GRID_KEYS = ("params", "validation_average")
ROW_KINDS = ("baseline", "expert", "merge", "adapt")
MERGED_KINDS = ("merge", "adapt")  # rows that are one merged model per method (adapt: data-driven methods)

# Marks the best merge in a column, in the terminal table (no colour there when piped to a file).
BEST_MARK = "*"

# Output file names inside the run directory; write_outputs returns them under these keys.
OUTPUT_FILES = {"json": "results.json", "csv": "results.csv", "html": "report.html"}

# One size for every plot so the PNG bytes only depend on the data, and a dpi that keeps the page light.
FIG_WIDTH_IN = 11.0
FIG_DPI = 100


class ReportError(MergesmithError, ValueError):
    """A results dict the report cannot be built from. A ValueError too, so callers outside the CLI can catch it."""


# --------------------------------------------------------------------------------------------------------------------
# Validation


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


# --------------------------------------------------------------------------------------------------------------------
# Cell formatting, shared by the terminal and the HTML table so both always show the same numbers


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    # Sub-second merges happen on the mini profile; one decimal would show them all as "0.0 s".
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"


def _megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def _scalar(value: Any) -> str:
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
    return " ".join(f"{key}={_scalar(params[key])}" for key in sorted(params))


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
    headers = ["method", *tasks, "average", "normalized", "merge time", "peak memory", "params"]
    best = _best_merge_values(results)
    rows = []
    for row in results["rows"]:
        cells: list[tuple[str, bool]] = [(str(row["name"]), False)]
        scored = [(row["accuracy"][t], t) for t in tasks] + [(row["average"], "average"),
                                                             (row["normalized"], "normalized")]
        for value, column in scored:
            # Ties share the mark: two merges with the same accuracy are equally best.
            is_best = row["kind"] in MERGED_KINDS and value is not None and value == best.get(column)
            cells.append((_pct(value), is_best))
        cells += [(_seconds(row["merge_seconds"]), False), (_megabytes(row["peak_memory_mb"]), False),
                  (compact_params(row["params"]), False)]
        rows.append((row["kind"], cells))
    return headers, rows


# --------------------------------------------------------------------------------------------------------------------
# Terminal table


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
    texts = [[text + (BEST_MARK if best else " ") if i in numeric else text for i, (text, best) in enumerate(cells)]
             for _, cells in rows]
    # Right padding only: two spaces between columns, enough to read and a dozen columns narrower.
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False,
                  title=f"mergesmith bench · profile {results['profile']} · seed {results['seed']}")
    for i, header in enumerate(headers):
        # Numbers and method names (up to 32 characters) never wrap; the params column folds.
        longest = max(len(line[i]) for line in texts)
        table.add_column(_terminal_header(header), justify="right" if i in numeric else "left", overflow="fold",
                         min_width=None if i == len(headers) - 1 and with_params else min(longest, 32))
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

    def console(width: int) -> Console:
        return Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, highlight=False,
                       emoji=False, legacy_windows=False)

    def natural_width(table) -> int:
        return console(10_000).measure(table).maximum

    table = _rich_table(results, with_params=True)
    fits = width is None or natural_width(table) <= width
    if not fits:
        table = _rich_table(results, with_params=False)
    # Never narrower than the table's natural width: rich would crop columns, and a terminal that wraps long lines
    # loses nothing.
    out = console(max(width or 0, natural_width(table)))
    out.print(table)
    lines = [line.rstrip() for line in out.file.getvalue().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not fits:
        lines += ["", "params:"]
        lines += [f"  {row['name']}: {compact_params(row['params'])}" for row in results["rows"] if row["params"]]
    lines.append("")
    lines.append(f"{BEST_MARK} best merge in the column. normalized = merged / expert accuracy per task, averaged. "
                 f"Experts on their own tasks average {_pct(results['expert_average'])}.")
    return "\n".join(lines).strip("\n") + "\n"


# --------------------------------------------------------------------------------------------------------------------
# JSON and CSV


def results_json(results: Mapping[str, Any]) -> str:
    return json.dumps(results, sort_keys=True, indent=2, allow_nan=False) + "\n"


def results_csv(results: Mapping[str, Any]) -> str:
    tasks = task_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "kind", *(f"accuracy_{t}" for t in tasks), "average", "normalized", "merge_seconds",
                     "peak_memory_mb", "params"])

    def raw(value):  # full precision, and an empty cell for null so spreadsheets read it as missing
        return "" if value is None else repr(value)

    for row in results["rows"]:
        writer.writerow([row["name"], row["kind"], *(raw(row["accuracy"][t]) for t in tasks), raw(row["average"]),
                         raw(row["normalized"]), raw(row["merge_seconds"]), raw(row["peak_memory_mb"]),
                         json.dumps(row["params"], sort_keys=True, separators=(",", ":"))])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg, no pyplot: no global state, no display needed)


def _new_figure(height_in: float, width_in: float = FIG_WIDTH_IN):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    import matplotlib

    from mergesmith.figures import png_bytes

    # fixed rc values and no "Software" chunk (png_bytes): same data, same bytes
    with matplotlib.rc_context({"svg.hashsalt": "mergesmith", "savefig.dpi": FIG_DPI}):
        return png_bytes(fig, dpi=FIG_DPI, tight=False, close=False)


def method_colors(results: Mapping[str, Any]) -> dict[str, Any]:
    """One colour per baseline/merge row, the same in every plot; baselines in greys so merges stand out."""
    from matplotlib import colormaps

    merges = [row["name"] for row in results["rows"] if row["kind"] in MERGED_KINDS]
    baselines = [row["name"] for row in results["rows"] if row["kind"] == "baseline"]
    # The qualitative palettes without their greys, which belong to the baselines.
    palette = ([colormaps["tab10"](i) for i in range(10) if i != 7] if len(merges) <= 9
               else [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)])
    colors = {name: palette[i % len(palette)] for i, name in enumerate(merges)}
    for i, name in enumerate(baselines):
        colors[name] = (0.55 - 0.12 * (i % 3),) * 3 + (1.0,)
    return colors


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


def _compared_rows(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # The rows a reader compares: what you start from (baselines) and what merging buys (merges).
    return [row for row in results["rows"] if row["kind"] in ("baseline", *MERGED_KINDS)]


def plot_task_accuracy(results: Mapping[str, Any]) -> bytes:
    """(a) Grouped bars: per task, one bar per baseline/merge; the task's expert and majority class as markers."""
    tasks = task_names(results)
    rows = _compared_rows(results)
    colors = method_colors(results)
    own = expert_own_accuracy(results)
    majority = {task["name"]: task["majority"] for task in results["tasks"]}
    fig = _new_figure(5.2)
    ax = fig.add_subplot()
    group = 0.84
    width = group / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [t_i - group / 2 + (i + 0.5) * width for t_i, t in enumerate(tasks) if row["accuracy"][t] is not None]
        ys = [100 * row["accuracy"][t] for t in tasks if row["accuracy"][t] is not None]
        ax.bar(xs, ys, width=width, color=colors[row["name"]], label=row["name"], edgecolor="white", linewidth=0.4)
    half = group / 2 + 0.04
    for t_i, task in enumerate(tasks):
        if task in own:
            ax.hlines(100 * own[task], t_i - half, t_i + half, colors="black", linewidth=2.2,
                      label="expert (own task)" if t_i == min(tasks.index(t) for t in own) else None)
        if majority[task] is not None:
            ax.hlines(100 * majority[task], t_i - half, t_i + half, colors="0.35", linewidth=1.4, linestyles=(0, (3, 2)),
                      label="majority class" if t_i == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-task test accuracy by method")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _png_bytes(fig)


def plot_normalized(results: Mapping[str, Any]) -> bytes:
    """(b) Horizontal bars of normalized accuracy, best first; horizontal so long method names never overlap."""
    colors = method_colors(results)
    rows = [row for row in _compared_rows(results) if row["normalized"] is not None]
    rows.sort(key=lambda row: row["normalized"], reverse=True)
    fig = _new_figure(max(2.6, 0.42 * len(rows) + 1.3))
    ax = fig.add_subplot()
    values = [100 * row["normalized"] for row in rows]
    positions = range(len(rows))
    ax.barh(positions, values, color=[colors[row["name"]] for row in rows], height=0.7)
    for y, value in zip(positions, values):
        ax.text(value + 0.8, y, f"{value:.1f}%", va="center", fontsize=9)
    ax.set_yticks(positions, [row["name"] for row in rows])
    ax.invert_yaxis()  # best at the top
    ax.axvline(100, color="black", linewidth=1.2, linestyle="--", label="experts (100%)")
    ax.set_xlim(0, max([105.0, *(v + 12 for v in values)]))
    ax.set_xlabel("normalized accuracy (% of each expert's own-task accuracy, averaged over tasks)")
    ax.set_title("Normalized accuracy by method")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=9)
    return _png_bytes(fig)


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                 radius: tuple[float, float], gap: float) -> list[tuple[float, float, bool]]:
    """Lower-left corner of each point's label, and whether it needs a leader line.

    Each label tries above, right of, left of and below its point (a marker of half-size ``radius``) and takes the
    first spot that stays inside the unit box and covers no marker and no label placed before it; in a cluster with
    no free spot it moves up above its point until free. Labels are placed lowest point first. All coordinates are
    axes fractions, which behave the same on linear and log axes.
    """
    rx, ry = radius
    taken: list[Box] = [(x - rx, y - ry, x + rx, y + ry) for x, y in anchors]
    order = sorted(range(len(anchors)), key=lambda i: (anchors[i][1], anchors[i][0]))
    corners: list[tuple[float, float, bool]] = [(0.0, 0.0, False)] * len(anchors)

    def free(box: Box) -> bool:
        inside = box[0] >= 0 and box[1] >= 0 and box[2] <= 1 and box[3] <= 1
        return inside and not any(_overlaps(box, other) for other in taken)

    for i in order:
        (x, y), (width, height) = anchors[i], sizes[i]
        candidates = [(x - width / 2, y + ry + gap), (x + rx + gap, y - height / 2),
                      (x - rx - gap - width, y - height / 2), (x - width / 2, y - ry - gap - height)]
        spot = next(((x0, y0) for x0, y0 in candidates if free((x0, y0, x0 + width, y0 + height))), None)
        leader = spot is None
        if spot is None:
            x0, y0 = candidates[0]
            while True:
                hits = [other for other in taken if _overlaps((x0, y0, x0 + width, y0 + height), other)]
                if not hits:
                    break
                y0 = max(other[3] for other in hits) + gap / 2
            spot = (x0, y0)
        taken.append((spot[0], spot[1], spot[0] + width, spot[1] + height))
        corners[i] = (spot[0], spot[1], leader)
    return corners


def _label_points(fig, ax, names: Sequence[str], xs: Sequence[float], ys: Sequence[float], marker_area: float) -> None:
    """Name every point without a label covering another label or a marker: text sizes are measured with the
    renderer, positions worked out in axes fractions by place_labels."""
    fig.canvas.draw()  # fixes the limits, the layout and the transforms
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transData + ax.transAxes.inverted()
    axes_px = ax.get_window_extent(renderer)
    anchors = [tuple(to_axes.transform((x, y))) for x, y in zip(xs, ys)]
    texts = [ax.text(x, y, name, transform=ax.transAxes, ha="left", va="bottom", fontsize=9)
             for name, (x, y) in zip(names, anchors)]
    sizes = []
    for text in texts:
        extent = text.get_window_extent(renderer)
        sizes.append((extent.width / axes_px.width, extent.height / axes_px.height))
    # A marker's radius in points is sqrt(area) / 2; 1 point = dpi / 72 pixels.
    radius_px = math.sqrt(marker_area) / 2 * fig.dpi / 72
    rx, ry = radius_px / axes_px.width, radius_px / axes_px.height
    corners = place_labels(anchors, sizes, (rx, ry), gap=3 / axes_px.height)
    for text, (x, y), (x0, y0, leader) in zip(texts, anchors, corners):
        text.set_position((x0, y0))
        if leader:  # pushed away from its point: a thin line says which point it names
            ax.plot([x, x], [y + ry, y0], transform=ax.transAxes, color="0.6", linewidth=0.7, zorder=1)


def plot_cost_quality(results: Mapping[str, Any]) -> bytes:
    """(c) Normalized accuracy against merge time, coloured by peak memory, every point labelled."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    merges = [row for row in results["rows"] if row["kind"] in MERGED_KINDS]
    shown = [row for row in merges if row["merge_seconds"] is not None and row["normalized"] is not None]
    left_out = [row["name"] for row in merges if row not in shown]
    fig = _new_figure(5.6)
    ax = fig.add_subplot()
    xs = [row["merge_seconds"] for row in shown]
    ys = [100 * row["normalized"] for row in shown]
    mems = [row["peak_memory_mb"] for row in shown]
    known = [m for m in mems if m is not None]
    cmap = colormaps["viridis"]
    norm = Normalize(vmin=min(known, default=0), vmax=max(known, default=1) if len(set(known)) > 1 else
                     min(known, default=0) + 1)
    for x, y, mem in zip(xs, ys, mems):
        if mem is None:  # no memory figure: hollow grey marker, explained in the legend
            ax.scatter([x], [y], s=110, facecolors="none", edgecolors="0.4", linewidths=1.5, zorder=3)
        else:
            ax.scatter([x], [y], s=110, color=cmap(norm(mem)), edgecolors="black", linewidths=0.6, zorder=3)
    if known:
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="peak memory (MB)", pad=0.01)
    if any(m is None for m in mems):
        ax.scatter([], [], s=80, facecolors="none", edgecolors="0.4", label="peak memory not measured")
        ax.legend(loc="lower right", fontsize=9)
    # Log time axis when merges differ by more than 20x, else the fast ones pile up at zero.
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.6, max(xs) * 2.2)
    elif xs:
        ax.set_xlim(0, max(xs) * 1.25 + 1e-9)
    baselines = [row for row in results["rows"] if row["kind"] == "baseline" and row["normalized"] is not None]
    ys_all = ys + [100 * row["normalized"] for row in baselines]
    if ys_all:
        low, high = min(ys_all), max(ys_all)
        pad = max(3.0, 0.12 * (high - low))
        ax.set_ylim(low - pad, high + 2.5 * pad)  # head room for the labels that get pushed up
    for row in baselines:
        ax.axhline(100 * row["normalized"], color="0.5", linestyle=":", linewidth=1.2)
        ax.annotate(row["name"], (0.005, 100 * row["normalized"]), xycoords=("axes fraction", "data"),
                    xytext=(2, 3), textcoords="offset points", fontsize=8, color="0.35")
    _label_points(fig, ax, [row["name"] for row in shown], xs, ys, marker_area=110)
    ax.set_xlabel("merge time (s" + (", log scale)" if ax.get_xscale() == "log" else ")"))
    ax.set_ylabel("normalized accuracy (%)")
    ax.set_title("Quality vs. merge cost" + (f"  (no timing: {', '.join(left_out)})" if left_out else ""))
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    return _png_bytes(fig)


def plot_cosine(results: Mapping[str, Any]) -> bytes:
    """(d) Task-vector cosine similarity, every cell annotated.

    The colour scale is symmetric around 0 and covers the off-diagonal values only: the diagonal is 1 by definition
    (drawn grey) and would otherwise wash out the small similarities between tasks that matter.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    tasks = results["cosine"]["tasks"]
    matrix = results["cosine"]["matrix"]
    n = len(tasks)
    off = [matrix[i][j] for i in range(n) for j in range(n) if i != j and matrix[i][j] is not None]
    limit = 1.25 * max([abs(v) for v in off] + [0.04])  # head room: the largest value is not the darkest colour
    norm = Normalize(vmin=-limit, vmax=limit)
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
    # Square cells, so the figure grows with the task count instead of stretching to the page width.
    fig = _new_figure(max(3.6, 0.72 * n + 2.0), width_in=min(FIG_WIDTH_IN, max(6.0, 0.8 * n + 4.6)))
    ax = fig.add_subplot()
    grid = [[math.nan if v is None or i == j else v for j, v in enumerate(line)] for i, line in enumerate(matrix)]
    image = ax.imshow(grid, cmap=cmap, norm=norm)
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            text = "-" if value is None else f"{value:.2f}"
            strong = i != j and value is not None and abs(norm(value) - 0.5) > 0.3
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if strong else "black")
    ax.set_xticks(range(n), tasks, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), tasks)
    ax.set_title("Task-vector cosine similarity")
    fig.colorbar(image, ax=ax, label="cosine similarity", shrink=0.85)
    return _png_bytes(fig)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _grid_axes(points: Sequence[Mapping[str, Any]]) -> tuple[str | None, str | None]:
    """(x key, series key) for a grid: the numeric parameter with most values on x, a second one as one line per
    value; (None, None) when the grid is not numeric in at most two parameters (then x is the grid point index)."""
    keys = sorted({key for point in points for key in point["params"]})
    varying = []
    for key in keys:
        values = [point["params"].get(key) for point in points]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            varying.append(key)
    if not varying or len(varying) > 2:
        return None, None
    if not all(_is_number(point["params"].get(key)) for key in varying for point in points):
        return None, None
    if len(varying) == 1:
        return varying[0], None
    counts = {key: len({point["params"][key] for point in points}) for key in varying}
    x_key = max(varying, key=lambda key: (counts[key], key))
    return x_key, next(key for key in varying if key != x_key)


def _is_chosen(point_params: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    return bool(point_params) and all(chosen.get(key) == value for key, value in point_params.items())


MIN_GRID_SPAN_POINTS = 1.0  # smallest y range of a grid plot, in percentage points of validation accuracy


def _plot_one_grid(ax, row: Mapping[str, Any], color) -> None:
    points = row["grid"]
    x_key, series_key = _grid_axes(points)
    if x_key is None:
        xs = list(range(len(points)))
        ys = [None if p["validation_average"] is None else 100 * p["validation_average"] for p in points]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", color=color)
        ax.set_xticks(xs, [compact_params(p["params"]) for p in points], rotation=40, ha="right",
                      rotation_mode="anchor", fontsize=7)
        ax.set_xlabel("grid point")
    else:
        series_values = sorted({p["params"][series_key] for p in points}) if series_key else [None]
        styles = ["-", "--", ":", "-."]
        for s_i, s_value in enumerate(series_values):
            chosen_points = [p for p in points if series_key is None or p["params"][series_key] == s_value]
            chosen_points.sort(key=lambda p: p["params"][x_key])
            ax.plot([p["params"][x_key] for p in chosen_points],
                    [math.nan if p["validation_average"] is None else 100 * p["validation_average"]
                     for p in chosen_points],
                    marker="osD^v"[s_i % 5], markersize=4, color=color, linestyle=styles[s_i % len(styles)],
                    alpha=1.0 - 0.5 * s_i / max(len(series_values), 1),
                    label=None if series_key is None else f"{series_key}={_scalar(s_value)}")
        ax.set_xlabel(x_key)
        if series_key is not None:
            ax.legend(fontsize=7, loc="best")
    for i, point in enumerate(points):
        if _is_chosen(point["params"], row["params"]) and point["validation_average"] is not None:
            x = i if x_key is None else point["params"][x_key]
            ax.scatter([x], [100 * point["validation_average"]], marker="*", s=170, color="red", zorder=4,
                       edgecolors="black", linewidths=0.5)
    ax.set_title(f"{row['name']}\nchosen: {compact_params(row['params'])}", fontsize=9)
    ax.set_ylabel("validation average (%)")
    ax.grid(alpha=0.3)
    # Plain tick labels (no "+7.75e1" offset) over at least one percentage point: float noise between grid points
    # (77.500001 vs 77.499998) draws as the flat line it is, not as a slope on an axis zoomed to 1e-6.
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    low, high = ax.get_ylim()
    if high - low < MIN_GRID_SPAN_POINTS:
        middle = (low + high) / 2
        ax.set_ylim(middle - MIN_GRID_SPAN_POINTS / 2, middle + MIN_GRID_SPAN_POINTS / 2)


def plot_grids(results: Mapping[str, Any]) -> bytes | None:
    """(e) One small plot per method that was tuned on the validation split; the chosen point is a red star."""
    rows = [row for row in results["rows"] if row["grid"]]
    if not rows:
        return None
    colors = method_colors(results)
    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    fig = _new_figure(3.3 * lines + 0.5, width_in=min(FIG_WIDTH_IN, 4.2 * columns + 1.0))
    axes = fig.subplots(lines, columns, squeeze=False)
    for i, row in enumerate(rows):
        _plot_one_grid(axes[i // columns][i % columns], row, colors.get(row["name"], "C0"))
    for j in range(len(rows), lines * columns):
        axes[j // columns][j % columns].set_visible(False)
    fig.suptitle("Validation average over each grid (red star: chosen)")
    return _png_bytes(fig)


def render_plots(results: Mapping[str, Any]) -> list[tuple[str, str, bytes]]:
    """[(title, caption, PNG bytes)] in page order; a plot without data (no grids, no cosine) is left out."""
    plots = [
        ("Per-task accuracy", "Bars: the pretrained baseline and every merge on each task's test split. Black line: "
         "the task's own expert. Dashed grey line: always predicting the majority class.", plot_task_accuracy(results)),
        ("Normalized accuracy", "Each merge's test accuracy divided by the expert's on the same task, averaged over "
         "tasks; 100% means the merge keeps all of what the experts learned.", plot_normalized(results)),
        ("Quality vs. merge cost", "Normalized accuracy against the time the merge took; colour is the peak memory "
         "of the merge. Up and to the left is better.", plot_cost_quality(results)),
    ]
    if results["cosine"] is not None:
        plots.append(("Task-vector similarity", "Cosine similarity between the experts' task vectors (expert minus "
                      "base, encoder only). Near zero: the tasks pull the weights in unrelated directions. The colour "
                      "scale covers the off-diagonal values; the diagonal (1 by definition) is grey.",
                      plot_cosine(results)))
    grids = plot_grids(results)
    if grids is not None:
        plots.append(("Validation grids", "Scales and densities are chosen on the validation split, never on test "
                      "labels; each plot shows the grid a method was tuned on.", grids))
    return plots


# --------------------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1180px; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 14px; margin: 0.6em 0; }
th, td { padding: 4px 8px; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
.scroll { overflow-x: auto; }
th { background: #f2f2f4; border-bottom: 2px solid #bbb; }
td.text, th.text { text-align: left; }
td.params { text-align: left; white-space: normal; min-width: 10em; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
tbody + tbody { border-top: 2px solid #bbb; }
tbody tr:nth-child(even) { background: #fafafa; }
td.best { font-weight: bold; background: #e3f4e1; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 0.8em 0; }
dl.meta dt { font-weight: 600; color: #555; } dl.meta dd { margin: 0; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 14px; margin-top: 0.3em; }
.note { color: #555; font-size: 14px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _machine_text(machine: Any) -> str:
    if not isinstance(machine, Mapping):
        return str(machine)
    parts = []
    if machine.get("cpu"):
        parts.append(str(machine["cpu"]))
    if machine.get("cores") is not None:
        parts.append(f"{machine['cores']} cores")
    if machine.get("memory_gb") is not None:
        parts.append(f"{machine['memory_gb']:g} GB RAM")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    known = {"cpu", "cores", "memory_gb", "torch", "python"}
    parts += [f"{key} {machine[key]}" for key in sorted(machine) if key not in known]
    return " · ".join(parts)


def _tasks_html(results: Mapping[str, Any]) -> str:
    own = expert_own_accuracy(results)
    lines = ['<table><thead><tr><th class="text">task</th><th>labels</th><th>train</th><th>validation</th>'
             "<th>test</th><th>majority class</th><th>expert (own task)</th></tr></thead><tbody>"]
    for task in results["tasks"]:
        sizes = task["sizes"] if isinstance(task["sizes"], Mapping) else {}
        cells = [task["num_labels"], *(sizes.get(split, "-") for split in ("train", "validation", "test")),
                 _pct(task["majority"]), _pct(own.get(task["name"]))]
        lines.append(f'<tr><td class="text">{_e(task["name"])}</td>' + "".join(f"<td>{_e(c)}</td>" for c in cells)
                     + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _results_html(results: Mapping[str, Any]) -> str:
    headers, rows = table_model(results)
    last = len(headers) - 1
    # <wbr> after "_": six task names wrap in their headers instead of pushing the table off the page.
    head = "".join(f'<th class="text">{_e(h)}</th>' if i in (0, last) else f"<th>{_e(h).replace('_', '_<wbr>')}</th>"
                   for i, h in enumerate(headers))
    body, previous_kind = [], None
    for kind, cells in rows:
        if kind != previous_kind:  # one tbody per kind: the CSS draws a rule between groups
            body.append(("</tbody>" if previous_kind is not None else "") + f'<tbody class="{_e(kind)}">')
            previous_kind = kind
        tds = []
        for i, (text, best) in enumerate(cells):
            css = ["text"] if i == 0 else ["params"] if i == last else []
            if best:
                css.append("best")
            attr = f' class="{" ".join(css)}"' if css else ""
            tds.append(f"<td{attr}>{_e(text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    body.append("</tbody>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n' + "\n".join(body)
            + "\n</table></div>")


def render_html(results: Mapping[str, Any], plots: Sequence[tuple[str, str, bytes]]) -> str:
    """The whole page as one string: inline CSS, images as data URIs, no script and no external reference."""
    meta = [("profile", results["profile"]), ("seed", results["seed"]), ("date", results["date"]),
            ("machine", _machine_text(results["machine"])), ("base model", results["base_model"]),
            ("what was trained", results["trained"]),
            ("experts on their own tasks", f"{_pct(results['expert_average'])} average test accuracy")]
    figures = []
    for title, caption, png in plots:
        figures.append(f"<h2>{_e(title)}</h2>\n<figure>{img_tag(png, title)}<figcaption>{_e(caption)}</figcaption></figure>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>mergesmith bench · {_e(results['profile'])} · {_e(results['date'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>mergesmith bench: profile {_e(results['profile'])}</h1>",
        '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta) + "</dl>",
        "<h2>Tasks</h2>",
        _tasks_html(results),
        "<h2>Results</h2>",
        '<p class="note">Test accuracy per task. Normalized = merged accuracy / the expert\'s accuracy on the same '
        "task, averaged over tasks. Highlighted: the best merge in each column. &ldquo;-&rdquo;: not measured.</p>",
        _results_html(results),
        *figures,
        "</body></html>",
        "",
    ])


# --------------------------------------------------------------------------------------------------------------------
# Writing


def _write_atomically(files: Mapping[Path, bytes]) -> None:
    """Write every file to a temp file next to it first and rename only once all are complete: a crash leaves the
    previous report (or none), never a truncated file. Renames are atomic per file on POSIX and Windows."""
    temps: dict[Path, str] = {}
    try:
        for path, content in files.items():
            # os.open with 0o666 rather than mkstemp (always 0600): the report gets the umask's usual permissions.
            tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():  # left over only when something failed before its rename
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_outputs(results: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.json, results.csv and report.html into ``run_dir`` (created if needed).

    Returns ``{"json": path, "csv": path, "html": path}``. Everything is rendered in memory before anything is
    written, so a bad results dict or a plotting error leaves ``run_dir`` as it was.
    """
    validate(results)
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergesmithError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from exc
    contents = {
        "json": results_json(results).encode("utf-8"),
        "csv": results_csv(results).encode("utf-8"),
        "html": render_html(results, render_plots(results)).encode("utf-8"),
    }
    paths = {key: run_dir / name for key, name in OUTPUT_FILES.items()}
    try:
        _write_atomically({paths[key]: contents[key] for key in OUTPUT_FILES})
    except OSError as exc:
        raise MergesmithError(f"cannot write the report into {run_dir}: {exc.strerror or exc}") from exc
    return paths

"""The validation-grid plot: one small plot per method tuned on the validation split, the chosen point marked."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergesmith.bench.report_cells import compact_params, format_scalar
from mergesmith.bench.report_plots import FIG_WIDTH_IN, figure_png, method_colors, new_figure


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
        ax.set_xticks(
            xs,
            [compact_params(p["params"]) for p in points],
            rotation=40,
            ha="right",
            rotation_mode="anchor",
            fontsize=7,
        )
        ax.set_xlabel("grid point")
    else:
        series_values = sorted({p["params"][series_key] for p in points}) if series_key else [None]
        styles = ["-", "--", ":", "-."]
        for s_i, s_value in enumerate(series_values):
            chosen_points = [p for p in points if series_key is None or p["params"][series_key] == s_value]
            chosen_points.sort(key=lambda p: p["params"][x_key])
            ax.plot(
                [p["params"][x_key] for p in chosen_points],
                [math.nan if p["validation_average"] is None else 100 * p["validation_average"] for p in chosen_points],
                marker="osD^v"[s_i % 5],
                markersize=4,
                color=color,
                linestyle=styles[s_i % len(styles)],
                alpha=1.0 - 0.5 * s_i / max(len(series_values), 1),
                label=None if series_key is None else f"{series_key}={format_scalar(s_value)}",
            )
        ax.set_xlabel(x_key)
        if series_key is not None:
            ax.legend(fontsize=7, loc="best")
    for i, point in enumerate(points):
        if _is_chosen(point["params"], row["params"]) and point["validation_average"] is not None:
            x = i if x_key is None else point["params"][x_key]
            ax.scatter(
                [x],
                [100 * point["validation_average"]],
                marker="*",
                s=170,
                color="red",
                zorder=4,
                edgecolors="black",
                linewidths=0.5,
            )
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
    fig = new_figure(3.3 * lines + 0.5, width_in=min(FIG_WIDTH_IN, 4.2 * columns + 1.0))
    axes = fig.subplots(lines, columns, squeeze=False)
    for i, row in enumerate(rows):
        _plot_one_grid(axes[i // columns][i % columns], row, colors.get(row["name"], "C0"))
    for j in range(len(rows), lines * columns):
        axes[j // columns][j % columns].set_visible(False)
    fig.suptitle("Validation average over each grid (red star: chosen)")
    return figure_png(fig)

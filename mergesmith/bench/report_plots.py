"""The bench report's plots as PNG bytes: per-task accuracy, normalized accuracy, quality against merge cost and the
task-vector cosine. Matplotlib with the Agg canvas and no pyplot: no global state, no display needed; one figure
width, one colour per method in every plot, and the same bytes for the same data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mergesmith.bench.report_cells import expert_own_accuracy, task_names
from mergesmith.bench.report_labels import label_points
from mergesmith.bench.report_schema import MERGED_KINDS

# One size for every plot so the PNG bytes only depend on the data, and a dpi that keeps the page light.
FIG_WIDTH_IN = 11.0
FIG_DPI = 100


def new_figure(height_in: float, width_in: float = FIG_WIDTH_IN):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
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
    palette = (
        [colormaps["tab10"](i) for i in range(10) if i != 7]
        if len(merges) <= 9
        else [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]
    )
    colors = {name: palette[i % len(palette)] for i, name in enumerate(merges)}
    for i, name in enumerate(baselines):
        colors[name] = (0.55 - 0.12 * (i % 3),) * 3 + (1.0,)
    return colors


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
    fig = new_figure(5.2)
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
            ax.hlines(
                100 * own[task],
                t_i - half,
                t_i + half,
                colors="black",
                linewidth=2.2,
                label="expert (own task)" if t_i == min(tasks.index(t) for t in own) else None,
            )
        if majority[task] is not None:
            ax.hlines(
                100 * majority[task],
                t_i - half,
                t_i + half,
                colors="0.35",
                linewidth=1.4,
                linestyles=(0, (3, 2)),
                label="majority class" if t_i == 0 else None,
            )
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-task test accuracy by method")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return figure_png(fig)


def plot_normalized(results: Mapping[str, Any]) -> bytes:
    """(b) Horizontal bars of normalized accuracy, best first; horizontal so long method names never overlap."""
    colors = method_colors(results)
    rows = [row for row in _compared_rows(results) if row["normalized"] is not None]
    rows.sort(key=lambda row: row["normalized"], reverse=True)
    fig = new_figure(max(2.6, 0.42 * len(rows) + 1.3))
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
    return figure_png(fig)


def plot_cost_quality(results: Mapping[str, Any]) -> bytes:
    """(c) Normalized accuracy against merge time, coloured by peak memory, every point labelled."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    merges = [row for row in results["rows"] if row["kind"] in MERGED_KINDS]
    shown = [row for row in merges if row["merge_seconds"] is not None and row["normalized"] is not None]
    left_out = [row["name"] for row in merges if row not in shown]
    fig = new_figure(5.6)
    ax = fig.add_subplot()
    xs = [row["merge_seconds"] for row in shown]
    ys = [100 * row["normalized"] for row in shown]
    mems = [row["peak_memory_mb"] for row in shown]
    known = [m for m in mems if m is not None]
    cmap = colormaps["viridis"]
    norm = Normalize(
        vmin=min(known, default=0), vmax=max(known, default=1) if len(set(known)) > 1 else min(known, default=0) + 1
    )
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
        ax.annotate(
            row["name"],
            (0.005, 100 * row["normalized"]),
            xycoords=("axes fraction", "data"),
            xytext=(2, 3),
            textcoords="offset points",
            fontsize=8,
            color="0.35",
        )
    label_points(fig, ax, [row["name"] for row in shown], xs, ys, marker_area=110)
    ax.set_xlabel("merge time (s" + (", log scale)" if ax.get_xscale() == "log" else ")"))
    ax.set_ylabel("normalized accuracy (%)")
    ax.set_title("Quality vs. merge cost" + (f"  (no timing: {', '.join(left_out)})" if left_out else ""))
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    return figure_png(fig)


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
    fig = new_figure(max(3.6, 0.72 * n + 2.0), width_in=min(FIG_WIDTH_IN, max(6.0, 0.8 * n + 4.6)))
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
    return figure_png(fig)

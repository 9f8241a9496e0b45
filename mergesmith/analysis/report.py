"""Presenting diagnostics: a rich terminal table, matplotlib plots, and an HTML report with the plots embedded."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from mergesmith.analysis.summary import Summary
from mergesmith.figures import img_tag

PLOTS = (
    ("cosine", "Pairwise task-vector cosine (whole model)"),
    ("layer_cosine", "Mean pairwise cosine per layer"),
    ("conflicts", "Sign-conflict rate per layer"),
    ("norms", "Task-vector L2 norm per layer"),
    ("effective_rank", "Mean effective rank of the layer's 2-D task-vector matrices"),
)


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_tables(s: Summary, width: int | None = 120) -> str:
    from rich.console import Console
    from rich.table import Table

    if width is None:
        import shutil

        width = max(80, shutil.get_terminal_size((120, 24)).columns)
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    experts = Table(title="Task vectors (expert - base)")
    for col in ("#", "expert", "L2 norm", "mean eff. rank", *[f"cos #{i}" for i in range(len(s.experts))]):
        experts.add_column(col, justify="left" if col in ("#", "expert") else "right")
    ranks = [
        [r for r in (layer.effective_rank[i] for layer in s.layers) if r is not None] for i in range(len(s.experts))
    ]
    for i, name in enumerate(s.experts):
        mean_rank = sum(ranks[i]) / len(ranks[i]) if ranks[i] else None
        experts.add_row(str(i), name, _fmt(s.norms[i], ".4g"), _fmt(mean_rank, ".1f"), *[_fmt(c) for c in s.cosine[i]])
    console.print(experts)
    layers = Table(title="Per layer")
    for col in ("layer", "mean cos", "sign conflicts", *[f"|tau| #{i}" for i in range(len(s.experts))]):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for layer in s.layers:
        layers.add_row(
            str(layer.layer),
            _fmt(_mean_offdiag(layer.cosine)),
            _fmt(layer.conflict_rate, ".1%"),
            *[_fmt(x, ".4g") for x in layer.norms],
        )
    console.print(layers)
    console.print(
        f"mergeability: {s.verdict.upper()}  (mean pairwise cosine {_fmt(s.mean_pairwise_cosine)}, sign-conflict "
        f"rate {_fmt(s.conflict_rate, '.1%')} vs {s.random_conflict_rate:.1%} for random signs)"
    )
    for finding in s.findings:
        console.print(f"  - {finding}")
    return console.export_text()


def _mean_offdiag(matrix: list[list[float]]) -> float | None:
    n = len(matrix)
    values = [matrix[i][j] for i in range(n) for j in range(i + 1, n)]
    return sum(values) / len(values) if values else None


def _png(fig) -> bytes:
    from mergesmith.figures import png_bytes

    return png_bytes(fig)


def render_plots(s: Summary) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plots: dict[str, bytes] = {}
    n = len(s.experts)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n, 1.0 + 0.8 * n))
    image = ax.imshow(s.cosine, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), s.experts, rotation=45, ha="right")
    ax.set_yticks(range(n), s.experts)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{s.cosine[i][j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title("task-vector cosine")
    plots["cosine"] = _png(fig)

    stack = [layer for layer in s.layers if isinstance(layer.layer, int)]
    xs = [layer.layer for layer in stack]

    def line_plot(key: str, ylabel: str, series: dict[str, list]) -> None:
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        for label, ys in series.items():
            points = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        plots[key] = _png(fig)

    line_plot(
        "layer_cosine",
        "mean pairwise cosine",
        {"mean pairwise cosine": [_mean_offdiag(layer.cosine) for layer in stack]},
    )
    line_plot("conflicts", "sign-conflict rate", {"sign conflicts": [layer.conflict_rate for layer in stack]})
    line_plot("norms", "L2 norm", {e: [layer.norms[i] for layer in stack] for i, e in enumerate(s.experts)})
    line_plot(
        "effective_rank",
        "effective rank",
        {e: [layer.effective_rank[i] for layer in stack] for i, e in enumerate(s.experts)},
    )
    return plots


def render_html(s: Summary, plots: dict[str, bytes], table_text: str) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mergesmith inspect</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}pre{background:#f6f6f6;padding:1em;"
        "overflow-x:auto}img{max-width:100%}</style></head><body>",
        "<h1>Task-vector diagnostics</h1>",
        f"<p>Mergeability: <b>{e(s.verdict)}</b></p><ul>",
        *[f"<li>{e(f)}</li>" for f in s.findings],
        "</ul>",
        f"<pre>{e(table_text)}</pre>",
    ]
    titles = dict(PLOTS)
    for key, png in plots.items():
        parts.append(f"<h2>{e(titles.get(key, key))}</h2><figure>{img_tag(png, key)}</figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(s: Summary, out_dir: Path, *, force: bool = False, inputs: Sequence[Path] = ()) -> list[Path]:
    """report.html (plots embedded), one PNG per plot, diagnostics.json and table.txt, written atomically."""
    from mergesmith.io.atomic import StagedOutput

    plots = render_plots(s)
    table = format_tables(s)
    output = StagedOutput(out_dir, force=force, inputs=list(inputs))
    with output as staging:
        for key, png in plots.items():
            (staging / f"{key}.png").write_bytes(png)
        (staging / "report.html").write_text(render_html(s, plots, table), encoding="utf-8")
        (staging / "diagnostics.json").write_text(json.dumps(asdict(s), indent=1) + "\n", encoding="utf-8")
        (staging / "table.txt").write_text(table, encoding="utf-8")
        output.commit()
    return [Path(out_dir) / name for name in ("report.html", "diagnostics.json", *[f"{k}.png" for k in plots])]

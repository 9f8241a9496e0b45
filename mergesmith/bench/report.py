"""The bench's report layer: the terminal table, ``results.json``, ``results.csv`` and a self-contained ``report.html``.

Everything here is a pure function of the results dict the bench runner produces (schema in ``REQUIRED_KEYS`` /
``REQUIRED_ROW_KEYS`` / ``REQUIRED_TASK_KEYS``), so a report can be re-rendered later from a saved ``results.json``.
Accuracies are fractions in [0, 1]; they are shown as percentages. ``None`` (JSON null) means "not measured" and is
shown as "-": experts are often scored on their own task only, baselines have no merge time.

The parts, one job each: ``report_schema`` (the results dict's keys and ``validate``), ``report_cells`` (cell texts
shared by the table and the page), ``report_tasks`` (the page's Tasks table), ``report_text`` (the terminal table,
``results.json``, ``results.csv``), ``report_plots``, ``report_grids`` and ``report_labels`` (the PNG plots). This module renders the page, writes the
files (``write_outputs``) and is the one import for callers.
"""

from __future__ import annotations

import html
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergesmith.bench.report_cells import (
    MEMORY_HEADER_NOTE,
    compact_params as compact_params,
    format_percent,
    table_model,
)
from mergesmith.bench.report_grids import (
    MIN_GRID_SPAN_POINTS as MIN_GRID_SPAN_POINTS,
    _grid_axes as _grid_axes,
    _plot_one_grid as _plot_one_grid,
    plot_grids,
)
from mergesmith.bench.report_labels import _overlaps as _overlaps, place_labels as place_labels
from mergesmith.bench.report_papers import papers_html
from mergesmith.bench.report_plots import plot_cosine, plot_cost_quality, plot_normalized, plot_task_accuracy
from mergesmith.bench.report_schema import ReportError as ReportError, validate
from mergesmith.bench.report_tasks import tasks_table_html
from mergesmith.bench.report_text import format_table as format_table, results_csv, results_json
from mergesmith.errors import MergesmithError
from mergesmith.figures import img_tag

# Output file names inside the run directory; write_outputs returns them under these keys.
OUTPUT_FILES = {"json": "results.json", "csv": "results.csv", "html": "report.html"}


def render_plots(results: Mapping[str, Any]) -> list[tuple[str, str, bytes]]:
    """[(title, caption, PNG bytes)] in page order; a plot without data (no grids, no cosine) is left out."""
    plots = [
        (
            "Per-task accuracy",
            "Bars: the pretrained baseline and every merge on each task's test split. Black line: "
            "the task's own expert. Dashed grey line: always predicting the majority class.",
            plot_task_accuracy(results),
        ),
        (
            "Normalized accuracy",
            "Each merge's test accuracy divided by the expert's on the same task, averaged over "
            "tasks; 100% means the merge keeps all of what the experts learned.",
            plot_normalized(results),
        ),
        (
            "Quality vs. merge cost",
            "Normalized accuracy against the time the merge took; colour is the peak memory "
            "of the merge. Up and to the left is better.",
            plot_cost_quality(results),
        ),
    ]
    if results["cosine"] is not None:
        plots.append(
            (
                "Task-vector similarity",
                "Cosine similarity between the experts' task vectors (expert minus "
                "base, encoder only). Near zero: the tasks pull the weights in unrelated directions. The colour "
                "scale covers the off-diagonal values; the diagonal (1 by definition) is grey.",
                plot_cosine(results),
            )
        )
    grids = plot_grids(results)
    if grids is not None:
        plots.append(
            (
                "Validation grids",
                "Scales and densities are chosen on the validation split, never on test "
                "labels; each plot shows the grid a method was tuned on.",
                grids,
            )
        )
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


def _results_html(results: Mapping[str, Any]) -> str:
    headers, rows = table_model(results)
    last = len(headers) - 1
    # <wbr> after "_": six task names wrap in their headers instead of pushing the table off the page.
    titles = {"peak memory": MEMORY_HEADER_NOTE}  # a tooltip: what the column measures
    if results.get("reference") is not None:
        titles[f"vs {results['reference']}"] = _interval_note(results)
    head = "".join(
        f'<th class="text">{_e(h)}</th>'
        if i in (0, last)
        else f"<th{_title(titles.get(h))}>{_e(h).replace('_', '_<wbr>')}</th>"
        for i, h in enumerate(headers)
    )
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
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n' + "\n".join(body) + "\n</table></div>"


def _title(text: str | None) -> str:
    return "" if text is None else f' title="{_e(text)}"'


_PROTOCOLS = {
    "zero_shot": "zero-shot: every row is scored with each task's fixed head, the pretrained encoder's embeddings of "
    "its label descriptions (the task-arithmetic papers' protocol); the pretrained row is zero-shot accuracy",
    "probe": "probe: each expert is scored with its own trained head; the pretrained row is a linear probe",
}


def _interval_note(results: Mapping[str, Any]) -> str:
    """The one sentence that says what the difference column's interval is."""
    samples = results.get("bootstrap", {}).get("samples", "2000")
    return (
        f"vs {results['reference']}: the row's normalized accuracy minus {results['reference']}'s, in points, with "
        f"its 95% paired-bootstrap interval ({samples} resamples of each task's test examples, the same examples for "
        "both rows); \u2713 marks an interval that excludes 0, a difference the test set supports."
    )


def render_html(results: Mapping[str, Any], plots: Sequence[tuple[str, str, bytes]]) -> str:
    """The whole page as one string: inline CSS, images as data URIs, no script and no external reference."""
    meta = [
        ("profile", results["profile"]),
        ("seed", results["seed"]),
        ("date", results["date"]),
        ("machine", _machine_text(results["machine"])),
        ("base model", results["base_model"]),
        *([("protocol", _PROTOCOLS.get(results["protocol"], results["protocol"]))] if "protocol" in results else []),
        ("what was trained", results["trained"]),
        ("experts on their own tasks", f"{format_percent(results['expert_average'])} average test accuracy"),
    ]
    figures = []
    for title, caption, png in plots:
        figures.append(
            f"<h2>{_e(title)}</h2>\n<figure>{img_tag(png, title)}<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>mergesmith bench · {_e(results['profile'])} · {_e(results['date'])}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>mergesmith bench: profile {_e(results['profile'])}</h1>",
            '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta) + "</dl>",
            "<h2>Tasks</h2>",
            tasks_table_html(results),
            "<h2>Results</h2>",
            '<p class="note">Test accuracy per task. Normalized = merged accuracy / the expert\'s accuracy on the same '
            "task, averaged over tasks. Highlighted: the best merge in each column. &ldquo;-&rdquo;: not measured.</p>",
            *([f'<p class="note">{_e(_interval_note(results))}</p>'] if results.get("reference") is not None else []),
            f'<p class="note">{_e(MEMORY_HEADER_NOTE[0].upper() + MEMORY_HEADER_NOTE[1:])}.</p>',
            _results_html(results),
            "<h2>Papers vs this bench</h2>",
            papers_html(results),
            *figures,
            "</body></html>",
            "",
        ]
    )


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

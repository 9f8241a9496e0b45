"""The report's "papers vs this bench" table: the published ViT-B/32 figures (``paper_figures``) beside this run's
pretrained row, experts, and best row of each kind of merge (a static data-free merge, a test-time-adapted static
merge, a routing / per-task-module merge), each as average and normalized accuracy."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from mergesmith.bench.paper_figures import CATEGORIES, FIGURES, SETTING

NOT_RUN = "not run"


def _single_model(row: Mapping[str, Any]) -> bool:
    """Whether a merge row is one static model for every task. Older results have no "single_model": an adapt row
    then counts as static when it added no parameters (routers and per-task modules do)."""
    if "single_model" in row:
        return bool(row["single_model"])
    return row["kind"] == "merge" or not row["params"].get("added_parameters")


def _category(row: Mapping[str, Any]) -> str | None:
    if row["kind"] == "baseline":
        return "pretrained"
    if row["kind"] not in ("merge", "adapt"):
        return None
    if not _single_model(row):
        return "routing"
    return "static" if row["kind"] == "merge" else "adapted"


def best_rows(results: Mapping[str, Any]) -> dict[str, tuple[str, float | None, float | None] | None]:
    """Category -> (row name, average, normalized) of this run's best row by normalized accuracy (the first baseline
    for "pretrained", the experts' average for "experts"); None when no row of the category was run."""
    best: dict[str, tuple[str, float | None, float | None] | None] = {key: None for key, _ in CATEGORIES}
    best["experts"] = ("experts on their own tasks", results["expert_average"], 1.0)
    for row in results["rows"]:
        category = _category(row)
        if category is None:
            continue
        current = best[category]
        if category == "pretrained":
            if current is None:
                best[category] = (str(row["name"]), row["average"], row["normalized"])
            continue
        if row["normalized"] is None:
            continue  # not scored on every task: not comparable
        if current is None or current[2] is None or row["normalized"] > current[2]:
            best[category] = (str(row["name"]), row["average"], row["normalized"])
    return best


def _percent(value: float | None, scale: float = 100) -> str:
    return "-" if value is None else f"{scale * value:.1f}%"


def papers_html(results: Mapping[str, Any]) -> str:
    """The table, with a note on what the papers' setting is and that the two sides are not the same models."""
    ours = best_rows(results)
    e = html.escape
    lines = [
        '<div class="scroll"><table><thead><tr><th class="text">compared</th><th class="text">paper: method</th>'
        "<th>paper average</th><th>paper normalized</th>"
        '<th class="text">this bench: row</th><th>average</th><th>normalized</th>'
        '<th class="text">source of the paper figure</th></tr></thead><tbody>'
    ]
    for key, label in CATEGORIES:
        figures = [f for f in FIGURES if f.category == key]
        mine = ours[key]
        span = f' rowspan="{len(figures)}"' if len(figures) > 1 else ""
        if mine is None:
            run_cells = f'<td class="text"{span}>{NOT_RUN}</td><td{span}>-</td><td{span}>-</td>'
        else:
            name, average, normalized = mine
            run_cells = (
                f'<td class="text"{span}>{e(name)}</td><td{span}>{_percent(average)}</td>'
                f"<td{span}>{_percent(normalized)}</td>"
            )
        for i, figure in enumerate(figures):
            cells = [f'<td class="text">{e(label)}</td>' if i == 0 else '<td class="text"></td>']
            cells += [
                f'<td class="text">{e(figure.method)}</td>',
                f"<td>{figure.average:.1f}%</td>",
                f"<td>{figure.normalized:.1f}%</td>",
            ]
            if i == 0:
                cells.append(run_cells)
            cells.append(f'<td class="params">{e(figure.source)}</td>')
            lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table></div>")
    note = (
        f'<p class="note">Papers: {e(SETTING)}; normalized = the figure / the papers\' individual-expert average. '
        "This bench: its own base model, tasks and experts, so compare the normalized columns and the ordering, "
        "not the absolute accuracies. Static data-free: tensor-wise merges giving one model; test-time-adapted "
        "static: data-driven methods giving one model; routing / per-task modules: methods that add routers or "
        f"task-specific parameters, or give one model per task. &ldquo;{NOT_RUN}&rdquo;: no row of that kind in "
        "this run.</p>"
    )
    return note + "\n" + "\n".join(lines)


__all__ = ["NOT_RUN", "best_rows", "papers_html"]

"""The report page's "Tasks" table: what each task is, where its data comes from, and how it is split.

A built-in task's entry in the results carries ``source`` and ``licence`` (``mergesmith.bench.tasks.task_facts``);
a user pool's task, or a results file written before they were recorded, has none and shows "-".
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from mergesmith.bench.report_cells import expert_own_accuracy, format_percent

HEADERS = (
    "task",
    "classes",
    "source",
    "licence",
    "train",
    "validation",
    "test",
    "majority class (test)",
    "expert (own task)",
)
_TEXT_COLUMNS = {"task", "source", "licence"}


def tasks_table_html(results: Mapping[str, Any]) -> str:
    own = expert_own_accuracy(results)
    head = "".join(f'<th class="text">{h}</th>' if h in _TEXT_COLUMNS else f"<th>{h}</th>" for h in HEADERS)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for task in results["tasks"]:
        sizes = task["sizes"] if isinstance(task["sizes"], Mapping) else {}
        cells = [
            task["name"],
            task["num_labels"],
            task.get("source") or "-",
            task.get("licence") or "-",
            *(sizes.get(split, "-") for split in ("train", "validation", "test")),
            format_percent(task["majority"]),
            format_percent(own.get(task["name"])),
        ]
        lines.append(
            "<tr>"
            + "".join(
                f'<td class="text">{_e(cell)}</td>' if header in _TEXT_COLUMNS else f"<td>{_e(cell)}</td>"
                for header, cell in zip(HEADERS, cells)
            )
            + "</tr>"
        )
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)

"""The report page's Tasks table: source and licence for built-in tasks, "-" where they are not known."""

from __future__ import annotations

from mergesmith.bench.report_tasks import HEADERS, tasks_table_html


def _results() -> dict:
    return {
        "tasks": [
            {
                "name": "langid_ui",
                "num_labels": 10,
                "sizes": {"train": 4000, "validation": 500, "test": 1000},
                "majority": 0.119,
                "source": "Debian util-linux-locales",
                "licence": "GPL-2+",
                "class_counts": {"test": [119, 881]},
            },
            # a user pool's task, or a results file from before sources were recorded
            {"name": "my<task>", "num_labels": 2, "sizes": {"train": 10, "validation": 5, "test": 5}, "majority": 0.6},
        ],
        "rows": [],
    }


def _rows(page: str) -> list[list[str]]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[cell.split(">", 1)[1] for cell in row.split("</td>")[:-1]] for row in body.split("<tr>")[1:]]


def test_tasks_table_states_source_licence_sizes_and_majority():
    page = tasks_table_html(_results())
    assert all(f">{header}</th>" in page for header in HEADERS)
    langid, user = _rows(page)
    assert langid[:8] == ["langid_ui", "10", "Debian util-linux-locales", "GPL-2+", "4000", "500", "1000", "11.9%"]
    assert user[:4] == ["my&lt;task&gt;", "2", "-", "-"]

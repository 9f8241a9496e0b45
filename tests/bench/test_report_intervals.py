"""The report's difference column (paired-bootstrap intervals against the reference row), what its memory column
measures, and the papers-vs-this-bench table."""

from __future__ import annotations

import pytest

from mergesmith.bench import report
from mergesmith.bench.paper_figures import FIGURES
from mergesmith.bench.report_papers import NOT_RUN, best_rows, papers_html
from tests.bench.test_report import synthetic_results


def _interval(d, low, high):
    return {"difference": d, "low": low, "high": high, "real": low > 0 or high < 0}


@pytest.fixture
def results() -> dict:
    results = synthetic_results()
    results["reference"] = "task_arithmetic"
    results["bootstrap"] = {"samples": 2000, "confidence": 0.95, "seed": 0}
    for row in results["rows"]:
        row["vs_reference"] = None
    by_name = {row["name"]: row for row in results["rows"]}
    by_name["task_arithmetic"]["vs_reference"] = _interval(0.0, 0.0, 0.0)
    by_name["ties"]["vs_reference"] = {**_interval(0.031, 0.020, 0.042), "average": _interval(0.02, 0.01, 0.03)}
    by_name["average <weights>"]["vs_reference"] = _interval(0.008, -0.004, 0.019)
    results["rows"].append(
        {
            "name": "regmean",
            "kind": "adapt",
            "method": "regmean",
            "accuracy": {"food_reviews": 0.85, "tweet_sentiment": 0.66, "austen": 0.42},
            "average": 0.6433,
            "normalized": 0.95,
            "params": {"added_parameters": 0},
            "grid": [],
            "merge_seconds": 9.5,
            "peak_memory_mb": 412.0,
            "memory_measure": "in-process rise",
            "single_model": True,
            "vs_reference": _interval(0.061, 0.05, 0.07),
        }
    )
    return results


def test_the_table_shows_each_difference_with_its_interval_and_marks_the_real_ones(results):
    table = report.format_table(results)
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines() if line.strip()}
    assert "+3.1 [+2.0, +4.2] \u2713" in lines["ties"]
    assert "+0.8 [-0.4, +1.9]" in lines["average <weights>"] and "\u2713" not in lines["average <weights>"]
    assert "reference" in lines["task_arithmetic"]
    assert "412 MB in-process rise" in lines["regmean"] and "310 MB" in lines["ties"]
    assert "paired bootstrap interval" in table and "own `mergesmith merge` process" in table


def test_the_page_explains_the_interval_and_the_memory_column(results):
    page = report.render_html(results, [])
    assert "+3.1 [+2.0, +4.2] \u2713" in page and "+0.8 [-0.4, +1.9]<" in page
    assert "95% paired-bootstrap interval (2000 resamples" in page
    assert 'title="peak memory: for a tensor-wise merge, the peak resident memory of its own' in page
    assert "412 MB in-process rise" in page


def test_results_without_intervals_still_render_without_the_column():
    table = report.format_table(synthetic_results())
    assert "vs task_arithmetic" not in table.replace("\n", " ") and "\u2713" not in table


def test_papers_table_cites_every_figure_and_says_not_run_for_missing_kinds(results):
    page = report.render_html(results, [])
    assert "Papers vs this bench" in page
    for figure in FIGURES:
        assert f"{figure.average:.1f}%" in page and f"{figure.normalized:.1f}%" in page
        assert report.html.escape(figure.source) in page
    assert "48.0%" in page and "89.4%" in page and "arXiv 2402.00433" in page
    ours = best_rows(results)
    assert ours["static"][0] == "ties"  # best normalized among the tensor-wise merges
    assert ours["adapted"][0] == "regmean" and ours["routing"] is None
    assert ours["pretrained"][0] == "pretrained (linear probe)"
    assert papers_html(results).count(f">{NOT_RUN}<") == 1  # no routing row in this run


def test_per_task_models_and_routers_count_as_routing(results):
    results["rows"][-1]["single_model"] = False
    results["rows"][-2]["single_model"] = False  # dare_ties: not scored on every task, so never the best
    ours = best_rows(results)
    assert ours["routing"][0] == "regmean" and ours["adapted"] is None
    del results["rows"][-1]["single_model"]  # older results: added parameters decide
    results["rows"][-1]["params"]["added_parameters"] = 1000
    assert best_rows(results)["routing"][0] == "regmean"


def test_a_bound_that_excludes_zero_never_prints_as_zero():
    from mergesmith.bench.report_cells import format_difference

    row = {"name": "ties", "vs_reference": {"difference": -0.035, "low": -0.078, "high": -0.0003, "real": True}}
    assert format_difference(row, "task_arithmetic") == "-3.5 [-7.8, -0.03] \u2713"
    row["vs_reference"] = {"difference": 0.01, "low": -0.002, "high": 0.02, "real": False}
    assert format_difference(row, "task_arithmetic") == "+1.0 [-0.2, +2.0]"

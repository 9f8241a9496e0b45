"""The bench report: table, JSON, CSV and the self-contained HTML page, on a synthetic results dict."""

from __future__ import annotations

import base64
import copy
import csv
import json
import os
import re
import stat

import pytest

from mergesmith.bench import report

TASKS = ["food_reviews", "tweet_sentiment", "austen"]


def synthetic_results() -> dict:
    """3 tasks, a baseline, 2 experts (austen has none), 4 merges (ties tuned on a grid); nulls where allowed."""

    def row(name, kind, acc, average, normalized, params=None, grid=None, seconds=None, memory=None, **extra):
        return {
            "name": name,
            "kind": kind,
            "accuracy": dict(zip(TASKS, acc)),
            "average": average,
            "normalized": normalized,
            "params": params or {},
            "grid": grid or [],
            "merge_seconds": seconds,
            "peak_memory_mb": memory,
            **extra,
        }

    grid = [
        {"params": {"density": d, "lambda": lam}, "validation_average": v}
        for (d, lam), v in zip([(0.2, 0.5), (0.2, 1.0), (0.5, 0.5), (0.5, 1.0)], [0.58, 0.6, 0.61, 0.64])
    ]
    return {
        "profile": "mini",
        "seed": 0,
        "date": "2026-11-23T19:30:00Z",
        "machine": {"cpu": "Test CPU @ 2.0GHz", "cores": 2, "memory_gb": 23.4, "torch": "2.13.0", "python": "3.11.7"},
        "base_model": "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters)",
        "trained": "the encoder (word embeddings frozen) and one classification head per task",
        "tasks": [
            {
                "name": "food_reviews",
                "num_labels": 2,
                "sizes": {"train": 300, "validation": 100, "test": 200},
                "majority": 0.658,
            },
            {
                "name": "tweet_sentiment",
                "num_labels": 3,
                "sizes": {"train": 300, "validation": 100, "test": 200},
                "majority": 0.41,
            },
            {
                "name": "austen",
                "num_labels": 6,
                "sizes": {"train": 300, "validation": 100, "test": 200},
                "majority": 0.22,
            },
        ],
        "rows": [
            row("pretrained (linear probe)", "baseline", [0.7125, 0.5, 0.33], 0.5142, 0.72),
            row("expert: food_reviews", "expert", [0.88, None, None], None, None),
            row("expert: tweet_sentiment", "expert", [0.61, 0.69, 0.3], 0.5333, None),
            row(
                "task_arithmetic",
                "merge",
                [0.8, 0.6, 0.41],
                0.6033,
                0.8899,
                {"lambda": 0.3},
                seconds=1.25,
                memory=280.0,
                method="task_arithmetic",
            ),
            row(
                "ties",
                "merge",
                [0.84, 0.62, 0.4],
                0.62,
                0.9303,
                {"density": 0.5, "lambda": 1.0},
                grid,
                3.2,
                310.5,
                method="ties",
            ),
            row(
                "average <weights>", "merge", [0.77, 0.64, 0.39], 0.6, 0.8981, seconds=0.4, memory=None, method="linear"
            ),
            row(
                "dare_ties",
                "merge",
                [0.81, 0.58, None],
                0.695,
                0.8805,
                {"density": 0.3},
                seconds=None,
                memory=None,
                method="dare_ties",
            ),
        ],
        "expert_average": 0.785,
        "cosine": {"tasks": ["food_reviews", "tweet_sentiment"], "matrix": [[1.0, 0.12], [0.12, 1.0]]},
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One report written for the whole module: plotting is the slow part."""
    results = synthetic_results()
    run_dir = tmp_path_factory.mktemp("run") / "nested" / "run"
    paths = report.write_outputs(results, run_dir)
    return results, run_dir, paths


def test_write_outputs_writes_the_three_files_and_no_temp_files(written):
    _, run_dir, paths = written
    assert set(paths) == {"json", "csv", "html"}
    assert {p.name for p in paths.values()} == {"results.json", "results.csv", "report.html"}
    assert all(p.parent == run_dir and p.stat().st_size > 0 for p in paths.values())
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "results.csv", "results.json"]


def test_files_get_the_usual_permissions(written):
    _, _, paths = written
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in paths.values())


def test_json_round_trips_with_sorted_keys(written):
    results, _, paths = written
    text = paths["json"].read_text(encoding="utf-8")
    assert json.loads(text) == results
    assert text == json.dumps(results, sort_keys=True, indent=2) + "\n"


def test_csv_header_rows_and_values(written):
    results, _, paths = written
    with paths["csv"].open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == [
        "name",
        "kind",
        "accuracy_food_reviews",
        "accuracy_tweet_sentiment",
        "accuracy_austen",
        "average",
        "normalized",
        "merge_seconds",
        "peak_memory_mb",
        "params",
    ]
    assert len(lines) == 1 + len(results["rows"])
    assert [line[0] for line in lines[1:]] == [row["name"] for row in results["rows"]]
    ties = dict(zip(lines[0], lines[1 + 4]))
    assert (ties["kind"], float(ties["accuracy_food_reviews"]), float(ties["merge_seconds"])) == ("merge", 0.84, 3.2)
    assert json.loads(ties["params"]) == {"density": 0.5, "lambda": 1.0}
    expert = dict(zip(lines[0], lines[2]))
    assert expert["accuracy_tweet_sentiment"] == "" and expert["merge_seconds"] == ""  # null -> empty cell


def test_html_is_self_contained_with_five_png_images(written):
    _, _, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)
    assert "http://" not in page and "https://" not in page
    # Every resource reference is inline: no src/href pointing anywhere, no scripts, no stylesheet links.
    assert all(ref.startswith("data:") for ref in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page


def test_html_shows_header_and_table_values(written):
    results, _, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    for text in (
        "mini",
        "2026-11-23T19:30:00Z",
        "Test CPU @ 2.0GHz",
        "all-MiniLM-L6-v2",
        "word embeddings frozen",
        "65.8%",
        "71.2%",
        "84.0%",
        "93.0%",
        "3.2 s",
        "310 MB",
        "density=0.5 lambda=1",
        "78.5%",
    ):
        assert text in page, text
    for row in results["rows"]:
        assert f">{report.html.escape(row['name'])}<" in page
    assert "average &lt;weights&gt;" in page and "<weights>" not in page  # names are escaped
    # ties is the best merge on food_reviews (84.0%): highlighted; task_arithmetic's 80.0% is not.
    assert '<td class="best">84.0%</td>' in page and '<td class="best">80.0%</td>' not in page
    assert '<td class="best">62.0%</td>' in page and '<td class="best">69.5%</td>' not in page


def test_format_table_lists_every_method_and_formats_percentages():
    results = synthetic_results()
    table = report.format_table(results)
    for row in results["rows"]:
        assert row["name"] in table
    lines = {re.split(r"\s{2,}", line.strip())[0]: line for line in table.splitlines() if line.strip()}
    ties = lines["ties"]
    assert re.split(r"\s{2,}", ties.strip()) == [
        "ties",
        "84.0%*",
        "62.0%",
        "40.0%",
        "62.0%*",
        "93.0%*",
        "3.2 s",
        "310 MB",
        "density=0.5 lambda=1",
    ]
    assert "71.2%" in lines["pretrained (linear probe)"] and "*" not in lines["pretrained (linear probe)"]
    expert = lines["expert: food_reviews"].split()
    assert expert[2:] == ["88.0%", "-", "-", "-", "-", "-", "-", "-"]  # off-task nulls and no cost -> "-"
    # Best merge per task: average <weights> on tweet_sentiment, task_arithmetic on austen.
    assert "64.0%*" in lines["average <weights>"] and "41.0%*" in lines["task_arithmetic"]
    assert "0.40 s" in lines["average <weights>"]
    # dare_ties has the highest average, but over two of the three tasks: not comparable, so not marked.
    assert "69.5% " in lines["dare_ties"] and "*" not in lines["dare_ties"]


def test_format_table_never_marks_baselines_or_experts():
    results = synthetic_results()
    results["rows"][0]["accuracy"]["food_reviews"] = 0.99  # a baseline beating every merge is still not a merge
    table = report.format_table(results)
    assert "99.0%" in table and "99.0%*" not in table and "88.0%*" not in table and "84.0%*" in table


def test_format_table_on_a_narrow_terminal_moves_params_below_instead_of_cropping():
    results = synthetic_results()
    wide, narrow = report.format_table(results), report.format_table(results, width=100)
    assert "params:" not in wide
    assert "params:" in narrow and "  ties: density=0.5 lambda=1" in narrow
    for text in ("dare_ties", "69.5%", "310 MB", "0.40 s"):  # every other column is still there
        assert text in narrow


@pytest.mark.parametrize(
    "path, key",
    [
        ((), "rows"),
        ((), "tasks"),
        ((), "cosine"),
        (("rows", 4), "grid"),
        (("rows", 1), "accuracy"),
        (("tasks", 0), "majority"),
        (("rows", 3, "accuracy"), "austen"),
        (("rows", 4, "grid", 0), "validation_average"),
    ],
)
def test_missing_key_is_a_value_error_naming_it(path, key, tmp_path):
    results = synthetic_results()
    target = results
    for step in path:
        target = target[step]
    del target[key]
    for call in (lambda: report.format_table(results), lambda: report.write_outputs(results, tmp_path / "run")):
        with pytest.raises(ValueError, match=re.escape(f"missing required key {key!r}")):
            call()
    assert not (tmp_path / "run").exists()


def test_bad_values_are_value_errors():
    results = synthetic_results()
    results["rows"][4]["normalized"] = float("nan")
    with pytest.raises(ValueError, match=r"results\['rows'\]\[4\]\['normalized'\] is nan; use null"):
        report.validate(results)
    results = synthetic_results()
    results["rows"][2]["kind"] = "merged"
    with pytest.raises(ValueError, match="'merged'; expected one of"):
        report.validate(results)


def test_a_crash_while_writing_keeps_the_previous_report(tmp_path, monkeypatch):
    results = synthetic_results()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in report.OUTPUT_FILES.values():
        (run_dir / name).write_text("previous")
    # Crash on the third temp file (report.html): the first two temp files are already complete on disk.
    real_fdopen, calls = report.os.fdopen, []

    def failing_fdopen(fd, *args, **kwargs):
        calls.append(fd)
        if len(calls) == 3:
            report.os.close(fd)
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(report, "render_plots", lambda results: [])  # the write step is under test, not plots
    monkeypatch.setattr(report.os, "fdopen", failing_fdopen)
    with pytest.raises(report.MergesmithError, match="No space left on device"):
        report.write_outputs(results, run_dir)
    assert len(calls) == 3
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(report.OUTPUT_FILES.values())  # no temp files left
    assert all((run_dir / name).read_text() == "previous" for name in report.OUTPUT_FILES.values())


def test_plot_bytes_are_reproducible():
    results = synthetic_results()
    assert report.plot_normalized(results) == report.plot_normalized(copy.deepcopy(results))


def test_plots_without_grids_or_cosine_are_left_out():
    results = synthetic_results()
    results["rows"][4]["grid"] = []
    results["cosine"] = None
    titles = [title for title, _, _ in report.render_plots(results)]
    assert titles == ["Per-task accuracy", "Normalized accuracy", "Quality vs. merge cost"]


def test_grid_axes_choose_numeric_parameters():
    two = [{"params": {"density": d, "lambda": lam}} for d in (0.2, 0.5) for lam in (0.5, 1.0, 1.5)]
    assert report._grid_axes(two) == ("lambda", "density")
    assert report._grid_axes([{"params": {"lambda": v}} for v in (0.1, 0.3)]) == ("lambda", None)
    assert report._grid_axes([{"params": {"mode": m}} for m in ("a", "b")]) == (None, None)


def test_compact_params():
    assert report.compact_params({}) == "-"
    assert report.compact_params({"lambda": 1.0, "density": 0.5, "w": [1, 2]}) == "density=0.5 lambda=1 w=[1,2]"


def test_point_labels_cover_no_marker_and_no_other_label():
    # A tight cluster (the shape ties / dare_ties / della take on a real run) and one point near the top edge.
    anchors = [(0.40, 0.70), (0.42, 0.66), (0.45, 0.62), (0.47, 0.60), (0.9, 0.97)]
    sizes = [(0.08, 0.04)] * len(anchors)
    radius = (0.01, 0.02)
    corners = report.place_labels(anchors, sizes, radius, gap=0.01)
    labels = [(x0, y0, x0 + w, y0 + h) for (x0, y0, _), (w, h) in zip(corners, sizes)]
    markers = [(x - radius[0], y - radius[1], x + radius[0], y + radius[1]) for x, y in anchors]
    for i, box in enumerate(labels):
        assert not any(report._overlaps(box, other) for other in labels[:i] + labels[i + 1 :] + markers), i
    assert labels[-1][3] <= 1.0  # no room above the top point: its label goes beside it, inside the plot


def test_the_page_names_the_protocol_when_the_results_do():
    results = synthetic_results()
    assert "zero-shot: every row is scored" not in report.render_html(results, [])
    results["protocol"] = "zero_shot"
    assert "zero-shot: every row is scored with each task&#x27;s fixed head" in report.render_html(results, [])
    results["protocol"] = "probe"
    assert "the pretrained row is a linear probe" in report.render_html(results, [])

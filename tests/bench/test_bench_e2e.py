"""One end-to-end ``mergesmith bench --profile mini`` run: real model, real data, experts, merges, report."""

from __future__ import annotations

import csv
import json

import pytest

from mergesmith.bench.grids import TIE_TOLERANCE, choose_point
from mergesmith.bench.predictions import read_predictions
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e


def test_mini_bench(cache_dir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("bench", "--profile", "mini", "--out", run, "--cache-dir", cache_dir, "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((run / "results.json").read_text())
    tasks = [t["name"] for t in results["tasks"]]
    assert len(tasks) == 3
    kinds = [r["kind"] for r in results["rows"]]
    assert kinds.count("baseline") == 1 and kinds.count("expert") == 3 and kinds.count("merge") == 5
    majority = {t["name"]: t["majority"] for t in results["tasks"]}
    for row in results["rows"]:
        if row["kind"] == "expert":
            task = row["name"].split(": ", 1)[1]
            # every expert learned its task: clearly above the majority-class baseline
            assert row["accuracy"][task] > majority[task] + 0.05, row
        if row["kind"] == "merge":
            assert row["merge_seconds"] > 0 and row["peak_memory_mb"] is not None
            assert row["grid"] and row["params"] in [g["params"] for g in row["grid"]]
            # the chosen point is the first of the best on validation (within float noise)
            scores = [g["validation_average"] for g in row["grid"]]
            assert row["params"] == row["grid"][choose_point(scores)]["params"]
            assert max(scores) - scores[choose_point(scores)] <= TIE_TOLERANCE
            assert 0 < row["normalized"] < 1.5
    matrix = results["cosine"]["matrix"]
    assert len(matrix) == 3 and all(abs(matrix[i][i] - 1) < 1e-3 for i in range(3))
    with open(run / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(results["rows"])
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert (run / "configs" / "ties.yaml").is_file()
    # every row's paired interval against task arithmetic, from the per-example hits saved beside the results
    assert results["reference"] == "task_arithmetic"
    hits = read_predictions(run / "predictions.safetensors")
    assert list(hits) == [row["name"] for row in results["rows"]]
    for row in results["rows"]:
        field = row["vs_reference"]
        assert field["low"] <= field["difference"] <= field["high"], row["name"]
        if row["kind"] == "merge":
            assert row["memory_measure"] == "merge process peak" and row["peak_memory_mb"] > 10
            assert [float(hits[row["name"]][t].float().mean()) for t in tasks] == [row["accuracy"][t] for t in tasks]
    assert "Papers vs this bench" in html
    # the table is printed
    assert "task_arithmetic" in result.output and "normalized" in result.output.lower()

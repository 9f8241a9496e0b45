"""The MergeLock bench section's report (the run itself is measured in BENCHMARKS.md: it needs the bench pool)."""

from __future__ import annotations

import json

import pytest

from mergesmith.bench.protected import _write, format_protect_table
from tests.helpers import run_cli


def _results():
    rows = []
    for method in ("task_arithmetic", "linear"):
        for setting, acc in (("unprotected", 0.8), ("one protected", 0.3)):
            rows.append(
                {
                    "method": method,
                    "setting": setting,
                    "params": {},
                    "validation_average": acc,
                    "accuracy": {"a": acc, "b": acc + 0.05},
                    "average": acc + 0.025,
                    "normalized": acc,
                }
            )
    return {
        "protected_task": "a",
        "expert_accuracy": {"a": 0.9, "b": 0.9},
        "protected_expert_accuracy": {"a": 0.9, "b": 0.1},
        "original_expert_accuracy": {"a": 0.9, "b": 0.1},
        "rows": rows,
    }


def test_table_and_report(tmp_path):
    results = _results()
    table = format_protect_table(results)
    assert (
        "one protected" in table and "protected expert (a) alone: own-task accuracy 0.9000 (original 0.9000)" in table
    )
    _write(results, tmp_path)
    assert (tmp_path / "normalized.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["setting"] == "one protected"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--protect", "--methods", "nope"], "unknown method 'nope'"),
        (["--protect", "--profile", "nope"], "unknown profile 'nope'"),
    ],
)
def test_bad_input(tmp_path, args, message):
    result = run_cli("bench", *args, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1

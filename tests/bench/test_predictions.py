"""predictions.safetensors: every row's per-example hits, written by the bench and read back by
benchmarks/paired_difference.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergesmith.bench.predictions import FILE_NAME, read_predictions, write_predictions
from mergesmith.errors import MergesmithError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "paired_difference.py"


def _hits() -> dict:
    g = torch.Generator().manual_seed(0)
    tasks = {"a/b": 50, "c": 30}  # a task name may hold any character
    rows = {}
    for row in ("expert: a/b", "expert: c", "task_arithmetic", "ties", "pretrained (linear probe)"):
        rows[row] = {t: torch.rand(n, generator=g) < 0.7 for t, n in tasks.items()}
    rows["expert: c"]["a/b"] = None  # a task the row was not scored on
    rows["ties"] = {t: torch.ones(n, dtype=torch.bool) for t, n in tasks.items()}
    return rows


def test_round_trip(tmp_path):
    hits = _hits()
    write_predictions(tmp_path / FILE_NAME, hits)
    back = read_predictions(tmp_path / FILE_NAME)
    assert list(back) == list(hits)
    for row, tasks in hits.items():
        for task, hit in tasks.items():
            assert (back[row][task] is None) if hit is None else torch.equal(back[row][task], hit)
            assert hit is None or back[row][task].dtype == torch.bool
    assert (tmp_path / FILE_NAME).stat().st_size < 2000  # one byte per example, a small header


def test_a_foreign_or_missing_file_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MergesmithError, match="not a bench predictions file"):
        read_predictions(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(MergesmithError, match="not a readable safetensors file"):
        read_predictions(tmp_path / "junk.safetensors")
    with pytest.raises(MergesmithError, match="does not exist"):
        read_predictions(tmp_path / "none.safetensors")


def _script():
    spec = importlib.util.spec_from_file_location("paired_difference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_difference_script_reads_a_run_directory(tmp_path):
    write_predictions(tmp_path / FILE_NAME, _hits())
    results, expert = _script().from_run(tmp_path, [])
    assert list(results)[0] == "task_arithmetic" and "ties" in results and "expert: c" not in results
    assert set(expert) == {"a/b", "c"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", str(tmp_path), "--samples", "200", "task_arithmetic", "ties"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert "vs task_arithmetic" in out.stdout and "better" in out.stdout

"""What ``adapt`` and ``bench`` print, in a fresh process as a user runs them (transformers' logging and progress-bar
switches are process-wide, so an in-process run would inherit the test run's): with -q no progress bar, no
load report, no raw Python warning; a refused output prints its one error line and nothing before it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOISE = ("Loading weights", "LOAD REPORT", "it/s", "UserWarning", "Warning:", "\r", "%|")


def _mergesmith(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "mergesmith.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT
    )


def _assert_quiet(text: str) -> None:
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in:\n{text}"


@pytest.fixture(scope="module")
def pool_yaml(tmp_path_factory):
    from tests.adapt.pools import build_text_pool

    return build_text_pool(tmp_path_factory.mktemp("pool"))


def test_adapt_quiet(pool_yaml, tmp_path):
    done = _mergesmith("adapt", "fisher", "--pool", pool_yaml, tmp_path / "out", "--param", "num_examples=2", "-q")
    assert done.returncode == 0, done.stderr
    _assert_quiet(done.stdout + done.stderr)
    assert done.stderr == ""


def test_bench_quiet_turns_warnings_into_notes(pool_yaml, tmp_path):
    done = _mergesmith("bench", "--pool", pool_yaml, "--methods", "tsv_m,linear", "--out", tmp_path / "run", "-q")
    assert done.returncode == 0, done.stderr
    _assert_quiet(done.stdout + done.stderr)
    notes = done.stderr.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: tsv_m: ") and "not 2-D matrices" in notes[0], done.stderr


def test_adapt_existing_output_is_the_only_line(pool_yaml, tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = _mergesmith("adapt", "regmean", "--pool", pool_yaml, out)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "not empty" in done.stderr and (out / "keep.txt").read_text() == "mine"

"""The static checks, run with the suite so CI runs them: ruff's lint rules, its formatter and mypy, both configured in
pyproject.toml, with the interpreter's own installations (the ``test`` extra pins their versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    done = _run("ruff", "check", "--no-cache", "mergesmith", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_formatted():
    done = _run("ruff", "format", "--check", "--no-cache", "mergesmith", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing():
    # the files, the rules and the plugins come from [tool.mypy]; the cache (.mypy_cache) keeps reruns fast
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_module_is_under_500_lines():
    long = {
        str(path.relative_to(REPO)): n
        for path in sorted((REPO / "mergesmith").rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) >= 500
    }
    assert not long, f"split these modules by job: {long}"

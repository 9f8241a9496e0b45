"""One engine merge in its own process, measured the way a user running ``mergesmith merge`` would see it: the
child's wall time and its exact peak resident memory (``ru_maxrss`` from ``os.wait4``), free of whatever the bench
process holds and of what earlier rows left in its heap."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mergesmith
from mergesmith.errors import MergesmithError

# What a merge row's "peak_memory_mb" is (results.json's "memory_measure"): the peak RSS of the merge's own process.
MERGE_PROCESS_PEAK = "merge process peak"

# ru_maxrss is in kilobytes on Linux and in bytes on macOS.
_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024

# Runs the merge as its own child and prints that child's ru_maxrss and wall time. Linux carries a process's peak RSS
# across exec, and a child forked from the bench starts as a copy of it: measured directly, a merge's peak would
# be at least the bench's own RSS (measured: 774 MB for /bin/true started by a process holding 800 MB). Started
# from this launcher, which imports nothing heavy (about 11 MB), the merge process's figure is its own.
_LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(usage.ru_maxrss, time.perf_counter() - started)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


@dataclass(frozen=True)
class MergeMeasurement:
    seconds: float  # the child's wall time, interpreter start-up included
    peak_memory_mb: float  # the child's peak RSS, in MB (1e6 bytes)


def _child_env() -> dict[str, str]:
    """The environment with this process's mergesmith first on PYTHONPATH, so the child runs the same code."""
    env = dict(os.environ)
    root = str(Path(mergesmith.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error:").strip()


def measure_merge(config: Path, out: Path, *, threads: int = 2) -> MergeMeasurement:
    """Run ``mergesmith merge CONFIG OUT --threads THREADS -q`` in a child process; a child that fails raises a
    one-line MergesmithError with the child's last error line."""
    command = [sys.executable, "-m", "mergesmith", "merge", str(config), str(out), "--threads", str(threads), "-q"]
    with tempfile.TemporaryFile() as stderr:
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *command], stdout=subprocess.PIPE, stderr=stderr, env=_child_env()
        )
        if launched.returncode != 0:
            stderr.seek(0)
            line = _last_error_line(stderr.read().decode("utf-8", "replace"))
            raise MergesmithError(f"the merge of {config.name} failed in its own process: {line}")
    maxrss, seconds = launched.stdout.split()
    return MergeMeasurement(float(seconds), int(maxrss) * _MAXRSS_BYTES / 1e6)


__all__ = ["MERGE_PROCESS_PEAK", "MergeMeasurement", "measure_merge"]

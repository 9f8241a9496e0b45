#!/usr/bin/env python
"""Time and peak memory of ``mergesmith continual add`` as a sequence grows: memory must not grow with n.

Adds the offline benchmark's experts (6 MiniLM text experts, the default profile) one at a time with
``mergesmith continual add`` for each method, each step as its own child process, and reads that child's kernel
peak RSS (``ru_maxrss`` from ``os.wait4``; Linux carries the parent's peak across fork and exec, so this process
never imports torch: the pool's paths are resolved in a helper child too). Prints per method and step the wall
time and peak RSS, then the ratio of the last step's peak to the first's (1.0 = constant in the number merged).

    /work/venv/bin/python benchmarks/bench_continual.py --cache-dir /tmp/mcache --json /tmp/bench_continual.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESOLVE = """
import json, sys
from mergesmith.bench.load import load_bench_pool
pool = load_bench_pool(sys.argv[1], None, sys.argv[2], 0, False, lambda _: None)
print(json.dumps({"base": str(pool.base_dir), "experts": {k: str(v) for k, v in pool.experts.items()}}))
"""


def _run(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit code, stderr tail) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read() if proc.stderr else ""
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), err.strip()[-400:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument(
        "--cache-dir", default=os.environ.get("MERGESMITH_CACHE", str(Path.home() / ".cache/mergesmith"))
    )
    parser.add_argument("--methods", default="averaging,task_arithmetic,ties,opcm")
    parser.add_argument(
        "--param", action="append", default=[], help="KEY=VALUE passed to every add (e.g. num_steps=20 for dop)"
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    cli = str(bin_dir / "mergesmith")
    paths = json.loads(
        subprocess.run(
            [sys.executable, "-c", RESOLVE, args.profile, args.cache_dir], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    experts = list(paths["experts"].items())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-continual-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = [a for p in args.param for a in ("--param", p)]
    results = {"profile": args.profile, "experts": [n for n, _ in experts], "methods": {}}
    for method in args.methods.split(","):
        steps = []
        previous = experts[0][1]
        for k, (name, path) in enumerate(experts[1:], start=2):
            out = work / f"{method}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [cli, "continual", "add", previous, path, str(out), "-q"]
            if k == 2:
                cmd += ["--base", paths["base"], "--method", method, *extra]
            wall, peak, code, err = _run(cmd)
            if code != 0:
                raise SystemExit(f"{method} step {k} failed ({code}): {err}")
            steps.append({"step": k, "expert": name, "seconds": round(wall, 2), "peak_rss_mib": round(peak, 1)})
            print(f"{method:16s} step {k}  {name:16s} {wall:7.2f} s  peak RSS {peak:7.1f} MiB", flush=True)
            if k > 2:
                shutil.rmtree(previous, ignore_errors=True)
            previous = str(out)
        ratio = steps[-1]["peak_rss_mib"] / steps[0]["peak_rss_mib"]
        results["methods"][method] = {"steps": steps, "peak_last_over_first": round(ratio, 3)}
        print(f"{method:16s} peak RSS at step {steps[-1]['step']} / step 2: {ratio:.3f}", flush=True)
        shutil.rmtree(previous, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Peak memory of ``mergesmith merge`` under load: many experts, many tensors, one very large tensor.

What it does:

1. builds (once, cached under ``--workdir``) synthetic checkpoints, one ``model.safetensors`` each, with tensors
   from seeded torch generators (experts = base + small gaussian noise):
   - ``wide``: a base and 16 experts of four fp32 tensors, 16, 8, 4 and 4 MiB (32 MiB of weights per model), so
     memory is dominated by tensors, not by the interpreter;
   - ``many``: a base and 2 experts of 5000 small fp32 tensors (32x32, 4 KiB each; 20 MiB per model);
   - ``huge``: a base and 2 experts holding a single 256 MiB fp32 tensor (16384 x 4096).
2. runs ``mergesmith merge`` as a child process per case (linear and task_arithmetic over 2, 4, 8 and 16 experts of
   ``wide``; task_arithmetic and linear on ``many`` and ``huge``) and reads that child's kernel peak RSS
   (``ru_maxrss`` from ``os.wait4``, exact, no sampling). A ``mergesmith plan`` run (same imports, headers only)
   gives the interpreter's baseline. Linux carries a process's peak RSS across fork and exec, so the measuring
   process never imports torch: building the checkpoints and computing the engine's bound run in helper
   processes (``--build``, ``--bound``), and the parent stays a few MiB.
3. prints, per case: peak RSS, peak above the baseline, the engine's memory bound (``default_budget`` of the plan:
   the bytes of tensors the engine lets be in flight) and their ratio; then the ratios of peak at 16 experts to
   peak at 2 experts (whole RSS and above the baseline).

Run it with the project's venv, e.g.::

    /work/venv/bin/python benchmarks/bench_load.py --json /tmp/bench_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20

WIDE_SHAPES = {  # 16, 8, 4 and 4 MiB in fp32
    "layers.0.mlp.weight": (4096, 1024),
    "layers.0.attn.weight": (2048, 1024),
    "layers.1.attn.weight": (1024, 1024),
    "layers.1.mlp.weight": (1024, 1024),
}
EXPERT_COUNTS = (2, 4, 8, 16)


def _save(directory: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))


FAMILY_SIZES = {"wide": max(EXPERT_COUNTS), "many": 2, "huge": 2}


def _family_dirs(root: Path) -> dict[str, list[Path]]:
    return {
        name: [root / name / "base"] + [root / name / f"expert_{i}" for i in range(1, n + 1)]
        for name, n in FAMILY_SIZES.items()
    }


def _family(root: Path, name: str, shapes: dict[str, tuple[int, ...]], experts: int) -> list[Path]:
    """base, expert_1..expert_N under root/name; built once (a ``done`` marker guards half-built families)."""
    import torch

    family = root / name
    dirs = _family_dirs(root)[name]
    assert len(dirs) == experts + 1
    if (family / "done").exists():
        return dirs
    shutil.rmtree(family, ignore_errors=True)
    print(f"building {name}: {len(shapes)} tensors x {len(dirs)} models", file=sys.stderr, flush=True)
    for index, directory in enumerate(dirs):
        tensors = {}
        for t, (tensor_name, shape) in enumerate(shapes.items()):
            gen = torch.Generator().manual_seed(1000 * t + 7)
            base = torch.randn(shape, generator=gen)
            if index:
                noise = torch.Generator().manual_seed(1000 * t + 7 + 100_003 * index)
                base.add_(torch.randn(shape, generator=noise), alpha=0.01)
            tensors[tensor_name] = base
        _save(directory, tensors)
        del tensors
    (family / "done").touch()
    return dirs


def _config(path: Path, method: str, base: Path, experts: list[Path]) -> Path:
    import yaml

    cfg = {
        "merge_method": method,
        "models": [{"model": str(e), "parameters": {"weight": 1.0 / len(experts)}} for e in experts],
    }
    if method == "task_arithmetic":
        cfg["base_model"] = str(base)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _engine_bound(config: Path) -> int:
    """The engine's in-flight byte budget for this config, computed in a helper process (see the docstring)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--bound", str(config)], check=True, capture_output=True, text=True, env=env
    )
    return int(out.stdout.strip().splitlines()[-1])


def _print_bound(config: Path) -> None:
    from mergesmith.api import plan_merge
    from mergesmith.engine.execute import default_budget

    print(default_budget(plan_merge(config)))


def _families(work: Path) -> dict[str, list[Path]]:
    return {
        "wide": _family(work, "wide", WIDE_SHAPES, max(EXPERT_COUNTS)),
        "many": _family(work, "many", {f"blocks.{i}.weight": (32, 32) for i in range(5000)}, 2),
        "huge": _family(work, "huge", {"embed.weight": (16384, 4096)}, 2),
    }


def _peak_rss(args: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one child process, from the kernel's accounting of that child."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this source tree, whatever is installed
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""  # small: --quiet leaves notes and warnings only
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{stderr}")
    return usage.ru_maxrss * 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mergesmith-bench-load"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # helper process: build and exit
    parser.add_argument("--bound", type=Path, default=None, help=argparse.SUPPRESS)  # helper: print a plan's bound
    args = parser.parse_args()
    if args.bound is not None:
        return _print_bound(args.bound)
    if args.build:
        _families(args.workdir)
        return None

    exe = [sys.executable, "-c", "from mergesmith.cli import main; main(prog_name='mergesmith')"]
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--build", "--workdir", str(work)], check=True)
    families = {name: [Path(p) for p in paths] for name, paths in _family_dirs(work).items()}
    wide, many, huge = families["wide"], families["many"], families["huge"]

    cases = []
    for method in ("linear", "task_arithmetic"):
        for n in EXPERT_COUNTS:
            cases.append((f"wide x{n}", method, n, wide[0], wide[1 : n + 1]))
    for label, fam in (("5000 tensors", many), ("one 256 MiB tensor", huge)):
        for method in ("linear", "task_arithmetic"):
            cases.append((label, method, 2, fam[0], fam[1:]))

    baseline_cfg = _config(work / "baseline.yaml", "linear", wide[0], wide[1:3])
    baseline, _ = _peak_rss([*exe, "plan", str(baseline_cfg), "--limit", "1"])
    rows = []
    for label, method, n, base, experts in cases:
        cfg = _config(work / "case.yaml", method, base, experts)
        bound = _engine_bound(cfg)
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        peak, wall = _peak_rss([*exe, "merge", str(cfg), str(out), "--quiet", "--threads", str(args.threads)])
        shutil.rmtree(out, ignore_errors=True)
        model_mib = sum((e / "model.safetensors").stat().st_size for e in experts[:1]) / MIB
        row = {
            "case": label,
            "method": method,
            "experts": n,
            "model_MiB": round(model_mib, 1),
            "peak_MiB": round(peak / MIB, 1),
            "above_baseline_MiB": round((peak - baseline) / MIB, 1),
            "engine_bound_MiB": round(bound / MIB, 1),
            "above_baseline_vs_bound": round((peak - baseline) / bound, 2),
            "wall_s": round(wall, 2),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    print(
        f"\nbaseline (mergesmith plan, imports + headers): {baseline / MIB:.1f} MiB peak RSS; threads {args.threads}\n"
    )
    header = f"{'case':<20} {'method':<16} {'experts':>7} {'peak MiB':>9} {'above base':>10} {'bound MiB':>9} {'above/bound':>11} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<20} {r['method']:<16} {r['experts']:>7} {r['peak_MiB']:>9} {r['above_baseline_MiB']:>10} "
            f"{r['engine_bound_MiB']:>9} {r['above_baseline_vs_bound']:>11} {r['wall_s']:>7}"
        )
    ratios = {}
    for method in ("linear", "task_arithmetic"):
        by_n = {r["experts"]: r for r in rows if r["method"] == method and r["case"].startswith("wide")}
        ratios[method] = {
            "peak_16_over_2": round(by_n[16]["peak_MiB"] / by_n[2]["peak_MiB"], 3),
            "above_baseline_16_over_2": round(by_n[16]["above_baseline_MiB"] / by_n[2]["above_baseline_MiB"], 3),
        }
        print(
            f"{method}: peak at 16 experts / peak at 2 = {ratios[method]['peak_16_over_2']}; above the baseline: "
            f"{ratios[method]['above_baseline_16_over_2']}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"baseline_MiB": round(baseline / MIB, 1), "threads": args.threads, "rows": rows, "ratios": ratios},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Speed and memory of mergesmith against mergekit on a ~0.44B-parameter LLaMA in bf16.

What it does, in order:

1. builds (once, cached under ``--workdir``) a base LLaMA checkpoint and two perturbed copies (base + gaussian
   noise, different per copy) in Hugging Face layout: ``config.json``, 300 MB safetensors shards and
   ``model.safetensors.index.json``. Tensors come from torch directly with per-tensor seeds, written shard by shard,
   so building needs neither transformers' model classes nor more than a few shards of memory. ``--doubled`` /
   ``--scaling`` also build a 24-layer family (same widths) to check that mergesmith's memory does not grow with
   depth.
2. writes one mergekit-schema YAML per method (TIES density 0.5 weight 1.0 over the base; linear weight 1.0), the
   identical file for both tools.
3. runs each tool on each config as its own subprocess under ``/usr/bin/time -v`` (exact kernel peak RSS, user and
   system CPU) while a sampler thread polls the process tree with psutil every 50 ms (sum of RSS, anonymous vs
   file-backed split, a trace per run saved as CSV). Outputs are deleted between runs. Before each run it waits
   (``--wait-idle``) for the machine to be quiet, and it reports the CPU that other processes took during the run:
   on a shared machine a wall time means little without it. Inputs are read once beforehand (warm page cache for
   both tools) and each tool is started once untimed (imports and .pyc files warm).
4. compares mergesmith's outputs with mergekit's tensor by tensor (max abs difference, fraction of differing
   entries). Differences are reported, never fatal: mergesmith computes in fp32 and rounds once to bf16, mergekit
   computes in bf16 under ``dtype: bfloat16``; and at TIES' trim threshold mergesmith keeps every entry tied with
   the k-th magnitude where mergekit keeps exactly k.
5. prints a table (and ``--json``) with PASS/MISS against the targets: TIES wall <= 1/5 of mergekit's and peak RSS
   <= 1/3; linear wall <= 1/2; with ``--scaling`` mergesmith's peak RSS on 24 layers within 10 % of 12 layers;
   ``mergesmith --help`` under 1 s (median of 5).

Run it with the venv that has both tools, e.g.::

    /work/venv/bin/python benchmarks/bench_vs_mergekit.py --scaling --json /tmp/bench.json

This is a script, not a test: the full run takes ~15 min with --repeat 3 on 2 cores (mergekit's TIES ~75 s a run)
and ~8 GB of disk under --workdir.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

# ---------------------------------------------------------------------------------------------------------------
# The model: fixed shapes so that numbers are comparable from run to run and machine to machine.

HIDDEN = 1536
INTERMEDIATE = 4096
HEADS = 12
KV_HEADS = 12
VOCAB = 32000
SHARD_BYTES = 300 * 1000**2  # input shards: 300 MB, as the brief and typical Hub checkpoints
INIT_STD = 0.02  # LLaMA's initializer_range: the scale of the base weights
SPEC_FILE = "bench-spec.json"  # written last: its presence with matching content means the family is complete

TARGETS = {
    "ties_wall": 1 / 5,  # mergesmith wall / mergekit wall
    "ties_rss": 1 / 3,  # mergesmith peak RSS / mergekit peak RSS
    "linear_wall": 1 / 2,
    "scaling_rss": 1.10,  # mergesmith peak RSS, 24 layers / 12 layers
    "help_s": 1.0,  # median wall of `mergesmith --help`
}


def tensor_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of transformers' LlamaForCausalLM (untied lm_head), in the order it saves them."""
    head_dim = HIDDEN // HEADS
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (HEADS * head_dim, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * head_dim)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return shapes


def _generator(*parts: object) -> torch.Generator:
    # A seed from the tensor's name (not from its position) makes the first 12 layers of the 24-layer family equal
    # to the 12-layer family, and the build independent of shard boundaries. crc32 is stable across runs, unlike hash().
    g = torch.Generator()
    g.manual_seed(zlib.crc32(":".join(map(str, parts)).encode()))
    return g


def base_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 base weight: N(0, 0.02) for matrices, ones for RMSNorm weights (as LLaMA initialises them)."""
    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=_generator("base", name)) * INIT_STD


def plan_input_shards(shapes: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy grouping into shards of at most SHARD_BYTES of bf16 data, like transformers' save_pretrained."""
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    filled = 0
    for name, shape in shapes:
        size = math.prod(shape) * 2
        if groups[-1] and filled + size > SHARD_BYTES:
            groups.append([])
            filled = 0
        groups[-1].append((name, shape))
        filled += size
    return groups


def write_llama_config(directory: Path, layers: int) -> None:
    from transformers import LlamaConfig  # only the config class: cheap, and the file is exactly what HF writes

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],  # mergekit picks its architecture definition from this
    )
    # transformers >= 5 names the field ``dtype``, older versions ``torch_dtype``; set whichever exists.
    for attr in ("dtype", "torch_dtype"):
        try:
            setattr(config, attr, "bfloat16")
        except Exception:  # pragma: no cover - depends on the transformers version
            pass
    config.to_json_file(str(directory / "config.json"))


def build_family(root: Path, layers: int, noise_std: float) -> dict[str, Path]:
    """Base + two perturbed copies under ``root``; reuses a complete earlier build with the same spec."""
    names = ("base", "expert_a", "expert_b")
    dirs = {n: root / n for n in names}
    spec = {
        "layers": layers,
        "hidden": HIDDEN,
        "intermediate": INTERMEDIATE,
        "heads": HEADS,
        "kv_heads": KV_HEADS,
        "vocab": VOCAB,
        "shard_bytes": SHARD_BYTES,
        "init_std": INIT_STD,
        "noise_std": noise_std,
        "version": 1,
    }
    if all((d / SPEC_FILE).is_file() and json.loads((d / SPEC_FILE).read_text()) == spec for d in dirs.values()):
        return dirs
    started = time.perf_counter()
    print(f"building {layers}-layer family in {root} ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    for d in dirs.values():
        d.mkdir(parents=True)
        write_llama_config(d, layers)
    shapes = tensor_shapes(layers)
    groups = plan_input_shards(shapes)
    weight_map: dict[str, str] = {}
    for index, group in enumerate(groups, start=1):
        file_name = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        # One shard of each model at a time: the three share the base tensor, generated once.
        shards: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
        for name, shape in group:
            base = base_tensor(name, shape)
            shards["base"][name] = base.to(torch.bfloat16)
            for expert in ("expert_a", "expert_b"):
                noise = torch.randn(shape, generator=_generator(expert, name)) * noise_std
                shards[expert][name] = (base + noise).to(torch.bfloat16)
                del noise
            del base
            weight_map[name] = file_name
        for n in names:
            save_file(shards[n], str(dirs[n] / file_name), metadata={"format": "pt"})
        del shards
    total = sum(math.prod(s) * 2 for _, s in shapes)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for d in dirs.values():
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (d / SPEC_FILE).write_text(json.dumps(spec))
    params = sum(math.prod(s) for _, s in shapes)
    print(
        f"  {params / 1e9:.3f}B parameters, {len(groups)} shards per model, {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return dirs


# ---------------------------------------------------------------------------------------------------------------
# Configs: mergekit's schema, the same file for both tools.


def write_configs(directory: Path, models: dict[str, Path]) -> dict[str, Path]:
    a, b, base = models["expert_a"], models["expert_b"], models["base"]
    texts = {
        "ties": (
            "merge_method: ties\n"
            f"base_model: {base}\n"
            "models:\n"
            f"  - model: {a}\n    parameters:\n      weight: 1.0\n      density: 0.5\n"
            f"  - model: {b}\n    parameters:\n      weight: 1.0\n      density: 0.5\n"
            "dtype: bfloat16\n"
        ),
        "linear": (
            "merge_method: linear\n"
            "models:\n"
            f"  - model: {a}\n    parameters:\n      weight: 1.0\n"
            f"  - model: {b}\n    parameters:\n      weight: 1.0\n"
            "dtype: bfloat16\n"
        ),
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for method, text in texts.items():
        paths[method] = directory / f"{method}.yaml"
        paths[method].write_text(text)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Measuring one subprocess


@dataclass
class Run:
    label: str
    command: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    user_s: float | None = None
    sys_s: float | None = None
    maxrss_mb: float | None = None  # kernel peak RSS of the tool process (/usr/bin/time -v), exact
    sampled_peak_mb: float = 0.0  # peak of the psutil tree sum, sampled every 50 ms (can miss short spikes)
    sampled_anon_mb: float = 0.0  # at the sampled peak: anonymous memory (heap, tensors) ...
    sampled_file_mb: float = 0.0  # ... and file-backed pages (mmap of inputs, shared libraries)
    max_processes: int = 0  # largest number of processes seen in the tree
    other_cpu_s: float | None = None  # CPU that other processes used on the machine during the run
    idle_before: float | None = None  # % of the machine busy just before the run (after --wait-idle)
    stderr_tail: str = ""
    trace: str = ""

    @property
    def peak_mb(self) -> float:
        """The peak we report: the kernel's exact figure when the tree was one process, else the sampled sum."""
        if self.maxrss_mb is not None and self.max_processes <= 1:
            return self.maxrss_mb
        return self.sampled_peak_mb


def _gnu_time() -> str | None:
    path = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if path is None:
        return None
    probe = subprocess.run([path, "-v", "true"], capture_output=True, text=True)
    return path if probe.returncode == 0 and "Maximum resident set size" in probe.stderr else None


def _busy_cpu_s() -> float:
    """Seconds of CPU the whole machine has spent busy (not idle or waiting on I/O) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def wait_for_idle(max_wait_s: float, threshold: float = 15.0) -> float:
    """Wait (up to ``max_wait_s``) until the machine is quiet: other work running during a run would slow it down.

    Returns the busy percentage of the last 1 s sample (all cores together = 100).
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                print(
                    f"  machine still {busy:.0f}% busy after waiting {max_wait_s:.0f} s; measuring anyway", flush=True
                )
            return busy


def _status_kb(pid: int) -> tuple[int, int]:
    """RssAnon and RssFile (+RssShmem) of a process, in kB, from /proc (Linux); zeros elsewhere."""
    anon = file = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
                elif line.startswith(("RssFile:", "RssShmem:")):
                    file += int(line.split()[1])
    except OSError:
        pass
    return anon, file


def measure(label: str, command: list[str], time_bin: str | None, trace_dir: Path, env: dict[str, str]) -> Run:
    run = Run(label, command)
    time_out = trace_dir / f"{label}.time.txt"
    argv = [time_bin, "-v", "-o", str(time_out), *command] if time_bin else command
    samples: list[tuple[float, float, float, float, int]] = []
    stop = threading.Event()
    busy_before = _busy_cpu_s()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def sample() -> None:
        # The tree is the tool and its descendants; the /usr/bin/time wrapper itself (~2 MB) is not counted.
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                tree = root.children(recursive=True) if time_bin else [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss = anon = file = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
                a, f = _status_kb(p.pid)
                anon += a * 1024
                file += f * 1024
            samples.append((time.perf_counter() - started, rss / 1e6, anon / 1e6, file / 1e6, len(tree)))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    run.wall_s = time.perf_counter() - started
    busy_after = _busy_cpu_s()
    stop.set()
    sampler.join()
    run.returncode = proc.returncode
    run.stderr_tail = (err.decode(errors="replace") + out.decode(errors="replace"))[-2000:]
    if time_bin and time_out.is_file():
        text = time_out.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        run.maxrss_mb = int(m.group(1)) * 1024 / 1e6 if m else None
        m = re.search(r"User time \(seconds\): ([\d.]+)", text)
        run.user_s = float(m.group(1)) if m else None
        m = re.search(r"System time \(seconds\): ([\d.]+)", text)
        run.sys_s = float(m.group(1)) if m else None
        m = re.search(r"Exit status: (\d+)", text)
        if m:
            run.returncode = int(m.group(1))
    if run.user_s is not None:
        # Busy CPU of the whole machine minus the tool's own: what concurrent work took from the measurement.
        run.other_cpu_s = max(0.0, busy_after - busy_before - run.user_s - run.sys_s)
    if samples:
        peak = max(samples, key=lambda s: s[1])
        run.sampled_peak_mb, run.sampled_anon_mb, run.sampled_file_mb = peak[1], peak[2], peak[3]
        run.max_processes = max(s[4] for s in samples)
    run.trace = str(trace_dir / f"{label}.rss.csv")
    with open(run.trace, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb", "anon_mb", "file_mb", "processes"])
        w.writerows([(f"{t:.3f}", f"{r:.1f}", f"{a:.1f}", f"{fl:.1f}", n) for t, r, a, fl, n in samples])
    return run


# ---------------------------------------------------------------------------------------------------------------
# Comparing outputs


def _open_output(directory: Path) -> dict[str, Path]:
    """name -> shard path for an HF output directory (sharded with index, or one model.safetensors)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return {k: directory / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(directory.glob("*.safetensors"))
    names: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            names.update({k: path for k in f.keys()})
    return names


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` (bf16: 8 significant bits) at |x|: a difference within it is rounding, beyond it a
    different decision (an entry trimmed by one tool and kept by the other, or a different elected sign)."""
    bits = 1 - round(math.log2(torch.finfo(dtype).eps))  # significant bits, the implicit one included
    _, exponent = torch.frexp(x.abs().clamp_min(torch.finfo(dtype).tiny))
    return torch.ldexp(torch.ones_like(x), exponent - bits)


def compare_outputs(ours: Path, theirs: Path) -> dict:
    """Per-tensor max |ours - theirs| in fp32, one tensor in memory at a time."""
    a_map, b_map = _open_output(ours), _open_output(theirs)
    common = [n for n in a_map if n in b_map]
    result = {
        "only_mergesmith": sorted(set(a_map) - set(b_map)),
        "only_mergekit": sorted(set(b_map) - set(a_map)),
        "dtype_mismatch": [],
        "tensors": {},
    }
    differing = beyond = total = 0
    for name in common:
        with safe_open(str(a_map[name]), framework="pt") as fa, safe_open(str(b_map[name]), framework="pt") as fb:
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
        if ta.dtype != tb.dtype:
            result["dtype_mismatch"].append(f"{name}: {ta.dtype} vs {tb.dtype}")
        if ta.shape != tb.shape:
            result["tensors"][name] = {"shape_mismatch": [list(ta.shape), list(tb.shape)]}
            continue
        fa32, fb32 = ta.float(), tb.float()
        diff = (fa32 - fb32).abs_()
        n_diff = int(torch.count_nonzero(diff))
        n_beyond = int(torch.count_nonzero(diff > _ulp(torch.maximum(fa32.abs(), fb32.abs()), tb.dtype)))
        result["tensors"][name] = {
            "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
            "frac_differing": n_diff / max(1, diff.numel()),
            "frac_beyond_1ulp": n_beyond / max(1, diff.numel()),
            "max_abs_ref": float(fb32.abs().max()) if tb.numel() else 0.0,
        }
        differing += n_diff
        beyond += n_beyond
        total += diff.numel()
        del ta, tb, fa32, fb32, diff
    stats = [v for v in result["tensors"].values() if "max_abs_diff" in v]
    worst = max(result["tensors"].items(), key=lambda kv: kv[1].get("max_abs_diff", math.inf))
    result["max_abs_diff"] = max((v["max_abs_diff"] for v in stats), default=0.0)
    result["worst_tensor"] = worst[0]
    result["frac_differing"] = differing / max(1, total)
    result["frac_beyond_1ulp"] = beyond / max(1, total)
    result["identical_tensors"] = sum(1 for v in stats if v["max_abs_diff"] == 0.0)
    result["compared_tensors"] = len(common)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Main


@dataclass
class Figures:
    peak_rss_method: str = ""
    runs: dict[str, list[dict]] = field(default_factory=dict)  # "method/tool[/24L]" -> every repetition
    median: dict[str, dict] = field(default_factory=dict)  # same keys -> {"wall_s", "peak_mb", ...}
    agreement: dict[str, dict] = field(default_factory=dict)
    help_runs_s: list[float] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)


def tool_commands(args: argparse.Namespace) -> dict[str, callable]:
    shard = args.out_shard_size
    shard_bytes = _parse_bytes(shard)
    return {
        # --force replaces OUT; --quiet: no progress bar (mergekit gets its own --quiet too).
        "mergesmith": lambda cfg, out: [
            args.mergesmith,
            "merge",
            str(cfg),
            str(out),
            "--quiet",
            "--force",
            "--max-shard-size",
            shard,
        ],
        # mergekit's --out-shard-size says "parameters" but its TensorWriter compares it with tensor bytes, so the
        # same number of bytes gives the same shards. CPU defaults otherwise (no --cuda, no --lazy-unpickle, which
        # only concerns .bin inputs).
        "mergekit": lambda cfg, out: [
            args.mergekit,
            str(cfg),
            str(out),
            "--out-shard-size",
            str(shard_bytes),
            "--quiet",
        ],
    }


def _parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(|B|KB|MB|GB)\s*", text, re.I)
    if not m:
        raise SystemExit(f"--out-shard-size {text!r}: give a number with an optional unit B, KB, MB or GB")
    return int(m.group(1)) * {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9}[m.group(2).lower()]


def warm_page_cache(models: dict[str, Path]) -> None:
    """Read the inputs once so that neither tool pays (or is spared) a cold disk: both see a warm page cache."""
    for d in models.values():
        for path in sorted(d.glob("*.safetensors")):
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass


def summarize(runs: list[Run]) -> dict:
    ok = [r for r in runs if r.returncode == 0]
    if not ok:
        return {"error": runs[-1].stderr_tail if runs else "not run"}
    return {
        "wall_s": statistics.median(r.wall_s for r in ok),
        "peak_mb": statistics.median(r.peak_mb for r in ok),
        "cpu_s": statistics.median((r.user_s or 0) + (r.sys_s or 0) for r in ok) if ok[0].user_s is not None else None,
        "sampled_anon_mb": statistics.median(r.sampled_anon_mb for r in ok),
        "sampled_file_mb": statistics.median(r.sampled_file_mb for r in ok),
        "other_cpu_s": statistics.median(r.other_cpu_s for r in ok) if ok[0].other_cpu_s is not None else None,
        "runs": len(ok),
    }


def run_method(
    method: str,
    cfg: Path,
    tools: list[str],
    args,
    commands,
    time_bin,
    out_root: Path,
    trace_dir: Path,
    env: dict[str, str],
    figures: Figures,
    suffix: str = "",
    compare: bool = True,
) -> None:
    runs: dict[str, list[Run]] = {t: [] for t in tools}
    outs = {t: out_root / f"{method}{suffix}-{t}" for t in tools}
    for rep in range(args.repeat):
        # Alternate the order between repetitions so neither tool always runs right after the other.
        order = tools if rep % 2 == 0 else list(reversed(tools))
        for tool in order:
            shutil.rmtree(outs[tool], ignore_errors=True)
            label = f"{method}{suffix}-{tool}-r{rep}"
            busy = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else None
            run_env = env
            if tool == "mergesmith" and not args.warm_hash_cache:
                # mergesmith remembers input file hashes (in $XDG_CACHE_HOME/mergesmith) so that re-merging the
                # same checkpoints skips hashing them; a first merge pays for it, and that is what we measure.
                cache = out_root / "xdg-cache"
                shutil.rmtree(cache, ignore_errors=True)
                run_env = dict(env, XDG_CACHE_HOME=str(cache))
            print(f"running {label}: {' '.join(commands[tool](cfg, outs[tool]))}", flush=True)
            run = measure(label, commands[tool](cfg, outs[tool]), time_bin, trace_dir, run_env)
            run.idle_before = busy
            runs[tool].append(run)
            status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
            print(
                f"  {status}: {run.wall_s:.1f} s, peak RSS {run.peak_mb:.0f} MB "
                f"(sampled {run.sampled_peak_mb:.0f} MB: anon {run.sampled_anon_mb:.0f}, file {run.sampled_file_mb:.0f})",
                flush=True,
            )
            if run.other_cpu_s is not None and run.other_cpu_s > 0.1 * run.wall_s:
                print(
                    f"  note: other processes used {run.other_cpu_s:.1f} CPU s during this run "
                    f"({100 * run.other_cpu_s / (run.wall_s * (os.cpu_count() or 1)):.0f}% of the machine)",
                    flush=True,
                )
            if run.returncode != 0:
                print("  " + run.stderr_tail.strip().replace("\n", "\n  ")[-1500:], flush=True)
            # Keep only the last repetition's output, for the comparison below.
            if rep < args.repeat - 1:
                shutil.rmtree(outs[tool], ignore_errors=True)
    for tool in tools:
        key = f"{method}{suffix}/{tool}"
        figures.runs[key] = [asdict(r) | {"peak_mb": r.peak_mb} for r in runs[tool]]
        figures.median[key] = summarize(runs[tool])
    if compare and {"mergesmith", "mergekit"} <= set(tools) and all(runs[t][-1].returncode == 0 for t in tools):
        print(f"comparing {method} outputs ...", flush=True)
        try:
            figures.agreement[method] = compare_outputs(outs["mergesmith"], outs["mergekit"])
        except Exception as exc:  # a comparison bug must not throw away minutes of measurements
            print(f"  comparison failed: {exc!r}", flush=True)
    for tool in tools:
        shutil.rmtree(outs[tool], ignore_errors=True)


def time_help(args, env: dict[str, str], n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run([args.mergesmith, "--help"], capture_output=True, env=env, check=True)
        times.append(time.perf_counter() - started)
    return times


def evaluate_targets(figures: Figures, args) -> None:
    med = figures.median

    def ratio(method: str, what: str) -> float | None:
        a, b = med.get(f"{method}/mergesmith", {}), med.get(f"{method}/mergekit", {})
        if what not in a or what not in b or not b[what]:
            return None
        return a[what] / b[what]

    def add(name: str, value: float | None, limit: float, unit: str) -> None:
        verdict = "N/A" if value is None else ("PASS" if value <= limit else "MISS")
        figures.targets.append({"target": name, "value": value, "limit": limit, "unit": unit, "verdict": verdict})

    if "ties" in args.methods:
        add("TIES wall mergesmith/mergekit", ratio("ties", "wall_s"), TARGETS["ties_wall"], "x")
        add("TIES peak RSS mergesmith/mergekit", ratio("ties", "peak_mb"), TARGETS["ties_rss"], "x")
    if "linear" in args.methods:
        add("linear wall mergesmith/mergekit", ratio("linear", "wall_s"), TARGETS["linear_wall"], "x")
    if args.scaling:
        for method in args.methods:
            a, b = med.get(f"{method}-24L/mergesmith", {}), med.get(f"{method}/mergesmith", {})
            value = a["peak_mb"] / b["peak_mb"] if "peak_mb" in a and "peak_mb" in b else None
            add(f"{method} mergesmith peak RSS 24L/12L", value, TARGETS["scaling_rss"], "x")
    if figures.help_runs_s:
        add("mergesmith --help median", statistics.median(figures.help_runs_s), TARGETS["help_s"], "s")


def print_report(figures: Figures, args) -> None:
    print()
    print(f"peak RSS: {figures.peak_rss_method}")
    print(
        f"median of {args.repeat} run(s); output shard size {args.out_shard_size} for both tools; warm page cache; "
        f"mergesmith input-hash cache {'warm (re-merge)' if args.warm_hash_cache else 'empty (first merge)'}"
    )
    print()
    header = (
        f"{'method':<10} {'tool':<11} {'wall s':>8} {'peak RSS MB':>12} {'CPU s':>7} {'anon/file MB':>14} "
        f"{'others CPU s':>13}"
    )
    print(header)
    print("-" * len(header))
    for key, m in figures.median.items():
        method, tool = key.split("/")
        if "error" in m:
            print(f"{method:<10} {tool:<11} {'ERROR':>8}")
            continue
        cpu = f"{m['cpu_s']:.1f}" if m.get("cpu_s") is not None else "-"
        split = f"{m['sampled_anon_mb']:.0f}/{m['sampled_file_mb']:.0f}"
        others = f"{m['other_cpu_s']:.1f}" if m.get("other_cpu_s") is not None else "-"
        print(f"{method:<10} {tool:<11} {m['wall_s']:>8.1f} {m['peak_mb']:>12.0f} {cpu:>7} {split:>14} {others:>13}")
    print()
    for method in args.methods:
        a, b = figures.median.get(f"{method}/mergesmith", {}), figures.median.get(f"{method}/mergekit", {})
        if "wall_s" in a and "wall_s" in b:
            print(
                f"{method}: mergesmith/mergekit wall {a['wall_s'] / b['wall_s']:.3f}, "
                f"peak RSS {a['peak_mb'] / b['peak_mb']:.3f}"
            )
    if figures.agreement:
        print()
        for method, agr in figures.agreement.items():
            print(
                f"{method}: outputs agree to max |diff| {agr['max_abs_diff']:.3g} (worst {agr['worst_tensor']}), "
                f"{agr['frac_differing'] * 100:.3f}% of entries differ ({agr['frac_beyond_1ulp'] * 100:.3f}% by more "
                f"than 1 ulp of the output dtype), {agr['identical_tensors']}/"
                f"{agr['compared_tensors']} tensors identical"
                + (f"; only in mergesmith: {agr['only_mergesmith']}" if agr["only_mergesmith"] else "")
                + (f"; only in mergekit: {agr['only_mergekit']}" if agr["only_mergekit"] else "")
                + (f"; dtype mismatches: {agr['dtype_mismatch'][:3]}" if agr["dtype_mismatch"] else "")
            )
    if figures.help_runs_s:
        print(f"\nmergesmith --help: {', '.join(f'{t:.2f}' for t in figures.help_runs_s)} s")
    print()
    for t in figures.targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}{'' if t['unit'] == 'x' else ' ' + t['unit']}"
        limit = f"{t['limit']:.3f}{'' if t['unit'] == 'x' else ' ' + t['unit']}"
        print(f"[{t['verdict']:<4}] {t['target']:<40} {value:>10}  (target <= {limit})")


def main(argv: list[str] | None = None) -> int:
    bindir = Path(sys.executable).parent
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/mergesmith-bench"),
        help="checkpoints (cached), configs, outputs and RSS traces (default: %(default)s)",
    )
    p.add_argument("--methods", nargs="+", choices=["ties", "linear"], default=["ties", "linear"])
    p.add_argument("--tools", nargs="+", choices=["mergesmith", "mergekit"], default=["mergesmith", "mergekit"])
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="also run mergesmith on the 24-layer family and check its peak RSS stays within 10%%",
    )
    p.add_argument("--doubled", action="store_true", help="build the 24-layer family (implied by --scaling)")
    p.add_argument("--build-only", action="store_true", help="build the checkpoints and configs, run nothing")
    p.add_argument("--no-compare", action="store_true", help="skip the tensor-by-tensor output comparison")
    p.add_argument("--no-help-timing", action="store_true", help="skip timing `mergesmith --help`")
    p.add_argument(
        "--noise-std",
        type=float,
        default=0.002,
        help="std of the perturbation of each expert (base weights have std 0.02; default %(default)s)",
    )
    p.add_argument(
        "--out-shard-size",
        default="5GB",
        help="output shard size given to both tools (mergesmith's default; default %(default)s)",
    )
    p.add_argument("--mergesmith", default=str(bindir / "mergesmith"), help="mergesmith executable")
    p.add_argument("--mergekit", default=str(bindir / "mergekit-yaml"), help="mergekit-yaml executable")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        metavar="S",
        help="before each run wait up to S seconds for the machine to be < 15%% busy (0: don't); default %(default)s",
    )
    p.add_argument(
        "--warm-hash-cache",
        action="store_true",
        help="let mergesmith reuse the input hashes it remembered from earlier merges (a re-merge); by "
        "default each run starts with an empty hash cache (a first merge)",
    )
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = p.parse_args(argv)
    _parse_bytes(args.out_shard_size)
    for tool in args.tools:
        exe = getattr(args, tool)
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            p.error(f"{tool} executable not found at {exe}; pass --{tool} PATH (or `pip install -e .` for mergesmith)")

    work = args.workdir
    families = {12: build_family(work / "llama-12L", 12, args.noise_std)}
    if args.doubled or args.scaling:
        families[24] = build_family(work / "llama-24L", 24, args.noise_std)
    configs = {layers: write_configs(work / "configs" / f"{layers}L", models) for layers, models in families.items()}
    if args.build_only:
        print(f"built {', '.join(f'{k} layers' for k in families)}; configs in {work / 'configs'}")
        return 0

    time_bin = _gnu_time()
    figures = Figures()
    figures.peak_rss_method = (
        "kernel peak RSS (ru_maxrss) of the tool process from `/usr/bin/time -v`, exact; a psutil sampler (50 ms) "
        "confirms the tree is one process and splits anon/file-backed memory"
        if time_bin
        else "psutil: sum of RSS over the process tree sampled every 50 ms (GNU time not found; can miss short spikes)"
    )
    trace_dir = work / "traces"
    trace_dir.mkdir(parents=True, exist_ok=True)
    out_root = work / "out"
    out_root.mkdir(parents=True, exist_ok=True)
    # Offline: every input is local, and a tool looking up the Hub for a tokenizer must not wait on the network.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # Bytecode caching as on a normal install: without it every run recompiles the modules that have no .pyc
    # (an editable mergesmith, for one), which is start-up time no user pays twice. __pycache__ is git-ignored.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    commands = tool_commands(args)

    # Warm-up: page cache for the inputs, and one start of each tool so that neither pays for cold imports.
    for models in families.values():
        warm_page_cache(models)
    for tool in args.tools:
        subprocess.run([getattr(args, tool), "--help"], capture_output=True, env=env)
    # ... and import what each tool imports to merge, so that .pyc files exist before the first timed run.
    warm = {
        "mergesmith": "import mergesmith.api, mergesmith.cli",
        "mergekit": "import mergekit.merge, mergekit.scripts.run_yaml, mergekit.merge_methods",
    }
    for tool in args.tools:
        subprocess.run([sys.executable, "-c", warm[tool]], capture_output=True, env=env)
    if "mergesmith" in args.tools and not args.no_help_timing:
        if args.wait_idle > 0:
            wait_for_idle(args.wait_idle)
        figures.help_runs_s = time_help(args, env)

    for method in args.methods:
        run_method(
            method,
            configs[12][method],
            args.tools,
            args,
            commands,
            time_bin,
            out_root,
            trace_dir,
            env,
            figures,
            compare=not args.no_compare,
        )
    if args.scaling:
        for method in args.methods:
            run_method(
                method,
                configs[24][method],
                ["mergesmith"],
                args,
                commands,
                time_bin,
                out_root,
                trace_dir,
                env,
                figures,
                suffix="-24L",
                compare=False,
            )

    evaluate_targets(figures, args)
    print_report(figures, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(figures) | {
            "setup": {
                "argv": sys.argv,
                "cpus": os.cpu_count(),
                "ram_gb": psutil.virtual_memory().total / 1e9,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "out_shard_size": args.out_shard_size,
                "noise_std": args.noise_std,
                "families": {k: {n: str(v) for n, v in m.items()} for k, m in families.items()},
            },
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nfigures written to {args.json}")
    failed = [k for k, m in figures.median.items() if "error" in m]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

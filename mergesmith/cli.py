"""The ``mergesmith`` command: parses arguments, calls the library, prints. No merging logic lives here.

Heavy modules (torch, transformers) are imported inside the commands so ``mergesmith --help`` starts fast.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import click

from mergesmith.cli_errors import check_output_early, echo_line, pool_models, size_option, user_errors


@contextlib.contextmanager
def _library_output():
    """What the libraries print while adapt and bench run. transformers' load reports and weight-loading bars are
    about mergesmith's own loads (a base model read as an encoder reports its unused head) and are not shown; a Python
    warning becomes one line on stderr, once per message (``note:`` for mergesmith's own, ``warning:`` for the
    libraries'), instead of a ``file:line: UserWarning`` dump."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    package = str(Path(__file__).resolve().parent)
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            ours = issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(package)
            click.echo(f"{'note' if ours else 'warning'}: {text}", err=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergesmith")
def main() -> None:
    """mergesmith: merge fine-tuned models of one base model into one model.

    \b
    mergesmith merge config.yaml OUT_DIR   stream a merge of checkpoints (mergekit YAML accepted)
    mergesmith plan config.yaml            validate and print the per-tensor plan (reads headers only)
    mergesmith bench [--profile mini]      offline benchmark: experts vs merges on six real text tasks
    mergesmith bench --pool POOL.yaml      the same benchmark on your own checkpoints and data
    mergesmith methods                     list the merge methods and their parameters
    mergesmith adapt METHOD --pool P OUT   data-driven merging (fisher, regmean, bmm, adamerging, ...)
    mergesmith continual add MERGED NEW OUT  add one expert to a merge (OPCM, DOP, baselines)
    mergesmith protect MODEL OUT           MergeLock: same outputs, weights that do not merge
    mergesmith inspect BASE EXPERT...      task-vector diagnostics: cosine, sign conflicts, spectra
    mergesmith demo                        build tiny local checkpoints and merge them with several methods
    """


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option(
    "--seed", type=int, default=None, help="Seed for random methods (overrides the config's seed; default 0)."
)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=None, help="Tensors merged at once (default: cores, at most 4)."
)
@click.option(
    "--max-shard-size",
    default="5GB",
    show_default=True,
    help="Largest output shard, in bytes (e.g. 2GB, 500MiB, 1000000).",
)
@click.option(
    "--memory-budget", default=None, help="Bytes of tensors in flight (default: what the largest tensor needs)."
)
@click.option("--strict", is_flag=True, help="Refuse inputs with NaN or Inf values instead of warning.")
@click.option(
    "--allow-crimes",
    is_flag=True,
    help="Merge models whose config.json declare different architectures (mergekit's flag).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def merge(
    config: Path,
    out_dir: Path,
    force: bool,
    seed,
    threads,
    max_shard_size: str,
    memory_budget,
    strict: bool,
    allow_crimes: bool,
    quiet: bool,
) -> None:
    """Merge the checkpoints named in CONFIG into OUT_DIR."""
    from mergesmith.api import merge as run_merge
    from mergesmith.config import load_config, referenced_models

    shard_bytes = size_option(max_shard_size, "--max-shard-size")
    budget = size_option(memory_budget, "--memory-budget") if memory_budget is not None else None
    check_output_early(out_dir, force, referenced_models(load_config(config)))
    bar = _ProgressBar(disabled=quiet)
    result = run_merge(
        config,
        out_dir,
        force=force,
        seed=seed,
        threads=threads,
        max_shard_size=shard_bytes,
        memory_budget=budget,
        strict=strict,
        allow_crimes=allow_crimes,
        progress=bar.update,
        on_plan=bar.start,
    )
    bar.close()
    for note in result.plan.notes:
        echo_line(note if note.startswith("warning: ") else f"note: {note}")
    for line in result.report.nonfinite:
        echo_line(f"warning: non-finite input values: {line} (pass --strict to refuse them)")
    for line in result.report.fp16_clamped:
        echo_line(f"warning: values beyond float16 range clamped in {line}")
    click.echo(
        f"merged {result.report.tensors} tensors ({result.report.bytes_written / 1e6:.1f} MB) with "
        f"{result.plan.method.name} into {out_dir} in {result.seconds:.1f} s ({len(result.shards)} shard(s))"
    )


class _ProgressBar:
    """tqdm over output bytes, with the tensor count beside it."""

    def __init__(self, disabled: bool):
        self.disabled = disabled
        self.bar = None
        self.done = 0
        self.total = 0

    def start(self, plan) -> None:
        if self.disabled:
            return
        from tqdm import tqdm

        self.total = len(plan.jobs)
        self.bar = tqdm(
            total=sum(j.out_nbytes for j in plan.jobs),
            unit="B",
            unit_scale=True,
            desc="merging",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def update(self, job) -> None:
        if self.bar is None:
            return
        self.done += 1
        self.bar.set_postfix_str(f"{self.done}/{self.total} tensors", refresh=False)
        self.bar.update(job.out_nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--limit", type=int, default=None, help="Print at most this many tensor rows.")
@click.option(
    "--allow-crimes",
    is_flag=True,
    help="Merge models whose config.json declare different architectures (mergekit's flag).",
)
@user_errors
def plan(config: Path, limit: int | None, allow_crimes: bool) -> None:
    """Validate CONFIG against the checkpoints' headers and print the per-tensor plan (no weights are read)."""
    from mergesmith.api import plan_merge
    from mergesmith.report_plan import format_plan

    merge_plan = plan_merge(config, allow_crimes=allow_crimes)
    try:
        click.echo(format_plan(merge_plan, limit=limit))
    finally:
        for ckpt in merge_plan.checkpoints:
            ckpt.close()


@main.command()
def methods() -> None:
    """List the merge methods, their papers and parameters; then the data-driven (adapt) and continual methods."""
    from mergesmith.method_listing import format_adapt_methods, format_continual_methods
    from mergesmith.report_plan import format_methods

    click.echo(format_methods())
    click.echo("")
    click.echo(format_adapt_methods())
    click.echo("")
    click.echo(format_continual_methods())


@main.command()
@click.option("--profile", default=None, help="default (6 tasks; the default) or mini (3 small tasks, a few minutes).")
@click.option(
    "--pool",
    "pool",
    type=click.Path(path_type=Path),
    default=None,
    help="Your own pool YAML (base model, experts, heads, task data) instead of a built-in profile.",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated methods, each METHOD or METHOD:KEY=VALUE (more KEY=VALUE after commas), e.g. ties:density=0.3,lambda=1.0,regmean (default: a representative set).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (default: runs/bench-PROFILE-TIME).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where data and the expert zoo are cached (default: $MERGESMITH_CACHE or ~/.cache/mergesmith).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep-models", is_flag=True, help="Keep the merged models in the run directory.")
@click.option(
    "--protect",
    "protect_mode",
    is_flag=True,
    help="MergeLock mode: merge with and without one protected expert (methods default: task_arithmetic,linear).",
)
@click.option(
    "--protect-task", default=None, help="With --protect: the task whose expert is protected (default: the first task)."
)
@click.option(
    "--continual",
    "continual_mode",
    is_flag=True,
    help="Continual mode: add the experts one at a time in several orders and score the tasks seen after each step (methods default: averaging,task_arithmetic,ties,opcm; dop on request).",
)
@click.option(
    "--orders",
    type=int,
    default=3,
    show_default=True,
    help="With --continual: task orders (the pool's, then seeded permutations).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@user_errors
def bench(
    profile,
    pool,
    methods,
    out_dir,
    cache_dir,
    seed: int,
    keep_models: bool,
    protect_mode: bool,
    protect_task,
    continual_mode: bool,
    orders: int,
    quiet: bool,
) -> None:
    """Offline benchmark: experts vs merges on real tasks, with a table, results.json/csv and report.html.

    \b
    --pool POOL.yaml runs the same protocol on your own checkpoints and data:
      base_model: DIR        a text encoder (BERT-like) or a CLIP vision model
      tasks: [{name, expert: DIR, head: FILE, data: {format: csv|jsonl|imagefolder, train, validation, test}}]
    (full format and a complete example: docs/pools.md in the repository)
    """
    import time as _time

    from mergesmith.extras import require

    require("bench")  # before the zoo is built and the merges run: the report at the end needs every module
    from mergesmith.bench.method_args import parse_methods
    from mergesmith.bench.run import run_bench
    from mergesmith.errors import MergesmithError

    if pool is not None and profile is not None:
        raise MergesmithError(
            "--pool and --profile are mutually exclusive; pass --pool for your own pool or --profile for a built-in one"
        )
    if out_dir is None:
        label = "custom" if pool is not None else profile or "default"
        out_dir = Path("runs") / f"bench-{label}-{_time.strftime('%Y%m%d-%H%M%S')}"
    if protect_mode and continual_mode:
        raise MergesmithError("--protect and --continual are separate modes; run them one at a time")
    choices = parse_methods(methods or "")
    names = [c.name for c in choices] or None
    if (protect_mode or continual_mode) and any(c.params for c in choices):
        mode = "--protect" if protect_mode else "--continual"
        raise MergesmithError(
            f"{mode} takes method names only (their parameters are tuned or fixed by the mode); "
            f"drop the :KEY=VALUE parts of --methods"
        )
    check_output_early(out_dir, False, pool_models(pool), force_option=None, what="run directory")
    with _library_output():
        if continual_mode:
            from mergesmith.bench.continual import run_continual_bench

            run_continual_bench(
                profile=profile,
                pool=pool,
                methods=names,
                orders=orders,
                run_dir=out_dir,
                cache_dir=cache_dir,
                seed=seed,
                progress=not quiet,
                echo=click.echo,
            )
            return
        if protect_mode:
            from mergesmith.bench.protected import run_protect_bench

            run_protect_bench(
                profile=profile,
                pool=pool,
                methods=names,
                protect_task=protect_task,
                run_dir=out_dir,
                cache_dir=cache_dir,
                seed=seed,
                progress=not quiet,
                echo=click.echo,
            )
            return
        run_bench(
            profile=profile,
            pool=pool,
            methods=names,
            method_params={c.name: c.params for c in choices},
            run_dir=out_dir,
            cache_dir=cache_dir,
            seed=seed,
            keep_models=keep_models,
            progress=not quiet,
            echo=click.echo,
        )


@main.command()
@click.argument("method")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--pool",
    "pool",
    type=click.Path(path_type=Path),
    default=None,
    help="Pool YAML (the bench pool format: base, experts, heads, data).",
)
@click.option("--profile", default=None, help="A built-in bench pool instead: default or mini.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache of the built-in profiles' data and experts.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A method parameter (repeatable); the keys of the method's parameters (an unknown key lists them).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@user_errors
def adapt(method: str, out_dir: Path, pool, profile, cache_dir, params, seed: int, force: bool, quiet: bool) -> None:
    """Data-driven merging (Fisher, RegMean, BMM, AdaMerging, ...) on a task pool; writes a loadable model to OUT_DIR."""
    import json

    from mergesmith.extras import require

    require("adapt")
    from mergesmith.adapt.runner import check_adapt_args, parse_param_args, run_adapt
    from mergesmith.bench.adapt_problem import load_problem

    spec, parsed = check_adapt_args(
        method, out_dir, parse_param_args(params), force=force, inputs=pool_models(pool), quiet=quiet
    )
    echo = (lambda _: None) if quiet else click.echo
    with _library_output():
        problem = load_problem(
            pool=pool, profile=profile, cache_dir=cache_dir, seed=seed, progress=not quiet, echo=echo
        )
        result, seconds = run_adapt(spec, parsed, problem, out_dir, seed=seed, force=force, echo=echo)
    click.echo(f"{method}: {seconds:.1f} s; wrote {out_dir} (kind {result.kind}; load with mergesmith.load_merged)")
    shown = {k: v for k, v in result.info.items() if k not in ("history",)}
    click.echo("info: " + json.dumps(shown, default=str)[:2000])
    if result.info.get("warning"):
        click.echo(f"warning: {result.info['warning']}", err=True)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--force", is_flag=True, help="Replace the demo directory if it exists.")
@user_errors
def demo(out_dir: Path, force: bool) -> None:
    """Build tiny local LLaMA checkpoints (a base and three fine-tunes) and merge them with several methods."""
    from mergesmith.extras import require

    require("demo")
    from mergesmith.demo import run_demo

    run_demo(out_dir, force=force, echo=click.echo)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random per-layer transforms.")
@click.option(
    "--strength",
    type=float,
    default=2.0,
    show_default=True,
    help="Scale bound s >= 1: each transform scales directions by 1/s .. s (1 = orthogonal only).",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Check with transformers: same outputs as MODEL, and a linear merge with --merge-with collapses.",
)
@click.option(
    "--merge-with",
    type=click.Path(path_type=Path),
    default=None,
    help="Another fine-tune of the same base for --verify's merge test (default: MODEL itself).",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard, in bytes (e.g. 2GB).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def protect(
    model: Path,
    out_dir: Path,
    seed: int,
    strength: float,
    verify: bool,
    merge_with,
    max_shard_size: str,
    force: bool,
    quiet: bool,
) -> None:
    """MergeLock: write a copy of MODEL with the same outputs but weights that do not merge with other fine-tunes."""
    from mergesmith.extras import require

    if verify:
        require("protect")  # before the copy is written: --verify loads both models with transformers
    from mergesmith.protect import protect_checkpoint, verify_protection
    from mergesmith.protect.report import format_verify

    shard_bytes = size_option(max_shard_size, "--max-shard-size")
    check_output_early(out_dir, force, [model])
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:  # created on the first tensor, so an input error prints no empty bar
            from tqdm import tqdm

            bars.append(tqdm(total=total, desc="protecting", unit="tensor", file=sys.stderr, dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    result = protect_checkpoint(
        model,
        out_dir,
        seed=seed,
        strength=strength,
        force=force,
        max_shard_size=shard_bytes,
        progress=None if quiet else progress,
    )
    for bar in bars:
        bar.close()
    layout = result.layout
    click.echo(
        f"protected {len(layout.blocks)} attention layers ({layout.family}, {layout.num_heads} heads, "
        f"{layout.num_kv_heads} key/value heads{', rotary' if layout.rotary else ''}) into {out_dir}"
    )
    if verify:
        report = verify_protection(model, out_dir, merge_with=merge_with)
        click.echo(format_verify(report))


@main.group()
def continual() -> None:
    """Continual merging: add experts one at a time to a merge (OPCM, DOP, running baselines)."""


@continual.command("add")
@click.argument("merged_dir", type=click.Path(path_type=Path))
@click.argument("new_expert", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--method", default=None, help="opcm (default), dop, averaging, task_arithmetic or ties; a merge keeps its method."
)
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    default=None,
    help="The base model; needed when MERGED_DIR is a first expert (a continual merge records its base).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A method parameter (repeatable), e.g. alpha=0.5; see `mergesmith continual methods`.",
)
@click.option("--name", default=None, help="Name recorded for NEW_EXPERT (default: its directory name).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard, in bytes (e.g. 2GB).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def continual_add_command(
    merged_dir: Path,
    new_expert: Path,
    out_dir: Path,
    method,
    base,
    params,
    name,
    max_shard_size: str,
    force: bool,
    quiet: bool,
) -> None:
    """Merge NEW_EXPERT into MERGED_DIR (a continual merge, or a first expert with --base) and write OUT_DIR.

    Memory does not grow with the number of experts already merged: OUT_DIR holds the model and mergesmith.json
    (method, parameters, base fingerprint, the experts merged, the scalars the next step needs).
    """
    from mergesmith.adapt.runner import parse_param_args
    from mergesmith.continual import continual_add

    shard_bytes = size_option(max_shard_size, "--max-shard-size")
    check_output_early(out_dir, force, [merged_dir, new_expert] + ([base] if base is not None else []))
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=total, desc="continual add", unit="tensor", file=sys.stderr, dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    result = continual_add(
        merged_dir,
        new_expert,
        out_dir,
        method=method,
        base=base,
        params=parse_param_args(params),
        name=name,
        force=force,
        max_shard_size=shard_bytes,
        progress=None if quiet else progress,
    )
    for bar in bars:
        bar.close()
    for note in result.notes:
        click.echo(f"note: {note}")
    state = result.state
    extra = f", lambda {state.scale:.4f}" if state.method == "opcm" else ""
    click.echo(f"{state.method}: merged expert {state.count} ({state.experts[-1].name}) into {out_dir}{extra}")


@continual.command("methods")
def continual_methods() -> None:
    """List the continual methods and their parameters."""
    from mergesmith.method_listing import format_continual_methods

    click.echo(format_continual_methods())


@main.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("experts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write report.html, PNG plots and diagnostics.json here.",
)
@click.option("--top-k", type=int, default=8, show_default=True, help="Singular values kept per 2-D tensor.")
@click.option("--no-spectrum", is_flag=True, help="Skip the SVDs (top singular values, effective rank).")
@click.option(
    "--strict", is_flag=True, help="Refuse tensors with NaN or Inf values instead of warning and leaving them out."
)
@click.option("--force", is_flag=True, help="Replace --out if it exists and is not empty.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def inspect(
    base: Path, experts, out_dir, top_k: int, no_spectrum: bool, strict: bool, force: bool, quiet: bool
) -> None:
    """Task-vector diagnostics of EXPERTS against BASE: cosine, sign conflicts, norms, spectra, mergeability."""
    from mergesmith.extras import require

    require("inspect", ["rich", "matplotlib"] if out_dir is not None else ["rich"])  # matplotlib: the --out plots
    from mergesmith.analysis import inspect_task_vectors, summarize
    from mergesmith.analysis.report import format_tables, write_report

    if out_dir is not None:
        check_output_early(out_dir, force, [base, *experts], force_option="--force")
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=total, desc="inspecting", unit="tensor", file=sys.stderr, dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    diag = inspect_task_vectors(
        base, list(experts), top_k=top_k, spectrum=not no_spectrum, strict=strict, progress=None if quiet else progress
    )
    for bar in bars:
        bar.close()
    for line in diag.nonfinite:
        echo_line(f"warning: non-finite values, tensor left out of the diagnostics: {line} (pass --strict to refuse)")
    summary = summarize(diag)
    click.echo(format_tables(summary, width=None))
    if out_dir is not None:
        write_report(summary, out_dir, force=force, inputs=[base, *experts])
        click.echo(f"report: {out_dir / 'report.html'} (plots as PNG beside it, numbers in diagnostics.json)")


if __name__ == "__main__":  # pragma: no cover
    main()

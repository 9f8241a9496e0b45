"""The ``mergesmith`` command: parses arguments, calls the library, prints. No merging logic lives here.

Heavy modules (torch, transformers) are imported inside the commands so ``mergesmith --help`` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mergesmith.cli_errors import check_output_early, echo_line, size_option, user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergesmith")
def main() -> None:
    """mergesmith: merge fine-tuned models of one base model into one model.

    \b
    mergesmith merge config.yaml OUT_DIR   stream a merge of checkpoints (mergekit YAML accepted)
    mergesmith plan config.yaml            validate and print the per-tensor plan (reads headers only)
    mergesmith bench [--profile mini]      offline benchmark: experts vs merges on eight real text tasks
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


def _add_commands() -> None:
    from mergesmith.commands.data import adapt, bench, demo
    from mergesmith.commands.models import continual, inspect, protect

    for command in (bench, adapt, demo, protect, continual, inspect):
        main.add_command(command)


_add_commands()

if __name__ == "__main__":  # pragma: no cover
    main()

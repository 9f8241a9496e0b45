"""``mergesmith protect``, ``continual`` and ``inspect``: the commands that turn or study one model at a time."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mergesmith.cli_errors import check_output_early, echo_line, size_option, user_errors


@click.command()
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


@click.group()
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


@click.command()
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

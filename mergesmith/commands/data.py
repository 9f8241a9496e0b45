"""``mergesmith bench``, ``adapt`` and ``demo``: the commands that run models on task data."""

from __future__ import annotations

from pathlib import Path

import click

from mergesmith.cli_errors import check_output_early, pool_models, user_errors
from mergesmith.commands.library_output import library_output

# The zoo's protocol, for bench and adapt alike (the choices are mergesmith.bench.finetune.PROTOCOLS, not imported
# here so the CLI starts without torch).
protocol_option = click.option(
    "--protocol",
    type=click.Choice(["zero_shot", "probe"]),
    default=None,
    help="Built-in profiles: zero_shot (default; every row scored with fixed heads built from label descriptions, "
    "the papers' protocol) or probe (each expert with its own head, the pretrained row a linear probe). A pool file "
    "names its own.",
)


@click.command()
@click.option("--profile", default=None, help="default (8 tasks; the default) or mini (3 small tasks, a few minutes).")
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
    help="Comma-separated methods, each METHOD or METHOD:KEY=VALUE (more KEY=VALUE after commas), e.g. ties:density=0.3,lambda=1.0,regmean; or a set: default (linear, task_arithmetic, ties, tsv_m, iso_c), data-free (every tensor-wise method), papers (the papers' eight-task rows, data-driven ones included).",
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
@protocol_option
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
    protocol,
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
      protocol: probe        or zero_shot (heads built from each task's label_texts)
      tasks: [{name, expert: DIR, head: FILE (probe), label_texts: [...] (zero_shot),
               data: {format: csv|jsonl|imagefolder, train, validation, test, labels}}]
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
    with library_output():
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
                protocol=protocol,
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
                protocol=protocol,
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
            protocol=protocol,
            keep_models=keep_models,
            progress=not quiet,
            echo=click.echo,
        )


@click.command()
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
@protocol_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@user_errors
def adapt(
    method: str, out_dir: Path, pool, profile, cache_dir, params, protocol, seed: int, force: bool, quiet: bool
) -> None:
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
    with library_output():
        problem = load_problem(
            pool=pool, profile=profile, cache_dir=cache_dir, seed=seed, protocol=protocol, progress=not quiet, echo=echo
        )
        result, seconds = run_adapt(spec, parsed, problem, out_dir, seed=seed, force=force, echo=echo)
    click.echo(f"{method}: {seconds:.1f} s; wrote {out_dir} (kind {result.kind}; load with mergesmith.load_merged)")
    shown = {k: v for k, v in result.info.items() if k not in ("history",)}
    click.echo("info: " + json.dumps(shown, default=str)[:2000])
    if result.info.get("warning"):
        click.echo(f"warning: {result.info['warning']}", err=True)


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--force", is_flag=True, help="Replace the demo directory if it exists.")
@user_errors
def demo(out_dir: Path, force: bool) -> None:
    """Build tiny local LLaMA checkpoints (a base and three fine-tunes) and merge them with several methods."""
    from mergesmith.extras import require

    require("demo")
    from mergesmith.demo import run_demo

    run_demo(out_dir, force=force, echo=click.echo)

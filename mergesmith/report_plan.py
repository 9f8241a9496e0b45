"""Text renderings of a merge plan and of the method catalogue, for the CLI."""

from __future__ import annotations

import dataclasses

from mergesmith.engine.execute import default_budget
from mergesmith.engine.plan import MergePlan, TensorJob
from mergesmith.io.model_files import dtype_name
from mergesmith.methods import METHODS
from mergesmith.methods._spec import param_infos


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def _fmt_params(job: TensorJob) -> str:
    if job.params is None:
        return "copied (not a float tensor)"
    return " ".join(
        f"{f.name.rstrip('_')}={_fmt_value(getattr(job.params, f.name))}" for f in dataclasses.fields(job.params)
    )


def format_plan(plan: MergePlan, limit: int | None = None) -> str:
    method = plan.method
    lines = [f"method: {method.name} ({method.paper})"]
    base = plan.config.base_model
    for i, name in enumerate(plan.model_names):
        ckpt = plan.checkpoints[i]
        role = "base" if name == base else "model"
        lines.append(f"{role}: {name} ({len(ckpt.tensors)} tensors in {len(ckpt.weight_files)} file(s))")
    out_bytes = sum(j.out_nbytes for j in plan.jobs)
    dtypes = sorted({dtype_name(j.out_dtype) for j in plan.jobs})
    lines.append(
        f"output: {len(plan.jobs)} tensors, {out_bytes / 1e6:.1f} MB, dtype {', '.join(dtypes)}"
        + (f", {plan.out_layer_count} layers" if plan.out_layer_count is not None else "")
    )
    lines.append(f"memory budget for tensors in flight: {default_budget(plan) / 1e6:.1f} MB")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append("")
    rows = plan.jobs if limit is None else plan.jobs[:limit]
    for job in rows:
        shape = "x".join(map(str, job.shape)) or "scalar"
        sources = ", ".join(
            f"{plan.model_names[r.model]}:{r.name}" if r.name != job.out_name else plan.model_names[r.model]
            for r in job.inputs
        )
        lines.append(
            f"{job.out_name}  [{shape}] -> {dtype_name(job.out_dtype)}  t={job.t:.3g}  {_fmt_params(job)}  <- {sources}"
        )
    if limit is not None and len(plan.jobs) > limit:
        lines.append(f"... {len(plan.jobs) - limit} more tensors")
    return "\n".join(lines)


def format_methods() -> str:
    lines = []
    for name in sorted(METHODS):
        spec = METHODS[name]
        lines.append(f"{name}: {spec.description or ''} [{spec.paper}]")
        base = {"required": "needs base_model", "optional": "base_model optional", "unused": "no base model"}[spec.base]
        lines.append(f"  {base}; models: {spec.min_models}..{spec.max_models or 'any'}")
        for pname, info in param_infos(spec.params).items():
            scope = "per model" if info.per_model else "global"
            default = "required" if info.required else f"default {_fmt_value(info.default)}"
            rule = f", {info.rule()}" if info.rule() else ""
            doc = f" - {info.doc}" if info.doc else ""
            lines.append(f"  {pname} ({scope}, {default}{rule}){doc}")
        check = getattr(spec.params, "check", None)
        if check is not None and check.__doc__:
            lines.append(f"  and: {check.__doc__.strip().splitlines()[0]}")
    return "\n".join(lines)

"""The Python API: ``merge(config, out_dir)`` for checkpoints on disk, ``merge_state_dicts`` for tensors in memory."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergesmith.architectures import check_same_architecture
from mergesmith.config import MergeConfig, load_config, parameter_warnings, referenced_models
from mergesmith.engine.execute import ExecutionReport, execute
from mergesmith.engine.in_memory import merged_tensors
from mergesmith.engine.plan import MergePlan, TensorJob, build_plan
from mergesmith.engine.side_outputs import open_side_writer
from mergesmith.errors import MergesmithError
from mergesmith.io import open_checkpoint
from mergesmith.io.model_card import CardText, loading_section
from mergesmith.io.model_dir import ModelDirectory, checkpoint_source
from mergesmith.io.model_files import dtype_name
from mergesmith.io.writer import parse_size
from mergesmith.methods import METHODS, get_method


@dataclass(repr=False)
class MergeResult:
    out_dir: Path
    plan: MergePlan
    report: ExecutionReport
    seconds: float
    shards: dict[str, str]

    def __repr__(self) -> str:
        # the plan holds one job per tensor: a full dataclass repr runs to tens of kilobytes
        return (
            f"MergeResult(out_dir={str(self.out_dir)!r}, method={self.plan.method.name!r}, "
            f"tensors={self.report.tensors}, seconds={self.seconds:.2f}, shards={len(self.shards)})"
        )


def open_models(config: MergeConfig) -> dict[str, Any]:
    """Open every checkpoint the config names (headers only)."""
    opened: dict[str, Any] = {}
    try:
        for name in referenced_models(config):
            opened[name] = open_checkpoint(name)
    except BaseException:
        for ckpt in opened.values():
            ckpt.close()
        raise
    return opened


def plan_merge(config: str | Path | dict | MergeConfig, *, allow_crimes: bool = False) -> MergePlan:
    """Validate a config against the checkpoints' headers and return the per-tensor plan. Reads no weights.

    ``allow_crimes`` merges models whose config.json declare different architectures (mergekit's --allow-crimes).
    """
    cfg = load_config(config)
    checkpoints = open_models(cfg)
    try:
        return _checked_plan(cfg, checkpoints, allow_crimes)
    except BaseException:
        for ckpt in checkpoints.values():
            ckpt.close()
        raise


def _checked_plan(cfg: MergeConfig, checkpoints: dict[str, Any], allow_crimes: bool) -> MergePlan:
    """The plan, then the checks that need the whole set of models (their declared architectures)."""
    plan = _with_warnings(build_plan(cfg, checkpoints))
    check_same_architecture(checkpoints, allow_crimes=allow_crimes)
    return plan


def _with_warnings(plan: MergePlan) -> MergePlan:
    """Add warnings for settings that validate but cannot apply (filters matching nothing, over-long gradients)."""
    layers = max(plan.layer_counts.values(), default=None) if plan.config.models is not None else None
    plan.notes.extend(parameter_warnings(plan.config, [job.out_name for job in plan.jobs], layers))
    return plan


def merge(
    config: str | Path | dict | MergeConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    seed: int | None = None,
    threads: int | None = None,
    max_shard_size: str | int = "5GB",
    memory_budget: int | None = None,
    strict: bool = False,
    allow_crimes: bool = False,
    progress: Callable[[TensorJob], None] | None = None,
    on_plan: Callable[[MergePlan], None] | None = None,
) -> MergeResult:
    """Stream a merge of checkpoints into ``out_dir`` (written atomically; inputs are never modified).

    ``allow_crimes`` merges models whose config.json declare different architectures (mergekit's --allow-crimes).
    """
    started = time.perf_counter()
    cfg = load_config(config)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    shard_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    checkpoints = open_models(cfg)
    try:
        plan = _checked_plan(cfg, checkpoints, allow_crimes)
        if on_plan is not None:
            on_plan(plan)
        sources = {name: checkpoint_source(ckpt, name) for name, ckpt in zip(plan.model_names, plan.checkpoints)}
        with ModelDirectory(out_dir, sources, force=force) as out:
            entries = [(job.out_name, job.out_dtype, job.shape) for job in plan.jobs]
            writer = out.open_shards(entries, shard_bytes)
            side = open_side_writer(plan, out.path, writer.write)  # per-task parts beside the model (EMR, TALL masks)
            report = execute(
                plan,
                side.write if side else writer.write,
                seed=cfg.seed,
                threads=threads or min(4, os.cpu_count() or 1),
                budget_bytes=memory_budget,
                strict=strict,
                progress=progress,
                write_rows=None if side else writer.write_rows,
            )
            shards = out.finish_shards()
            if side:
                out.record_hashes(side.finish())
            _write_side_files(plan, out)
            _commit(plan, out, side)
        return MergeResult(Path(out_dir), plan, report, time.perf_counter() - started, shards)
    finally:
        for ckpt in checkpoints.values():
            ckpt.close()


def _write_side_files(plan: MergePlan, out: ModelDirectory) -> None:
    """config.json from the config source (the output dtype and depth), the tokenizer files from the tokenizer source."""
    cfg = plan.config
    config_model = cfg.config_source if cfg.config_source not in (None, "base") else plan.model_names[plan.reference]
    ref = plan.checkpoints[plan.model_index(config_model)]
    out_dtypes = {dtype_name(j.out_dtype) for j in plan.jobs if j.copy_from is None}
    out_dtype = out_dtypes.pop() if len(out_dtypes) == 1 else None
    out.write_config(ref.config_path and Path(ref.config_path), dtype=out_dtype, layer_count=plan.out_layer_count)
    tok_source = cfg.tokenizer_source
    tok_model = plan.model_names[plan.reference] if tok_source in (None, "base") else tok_source
    tok_root = plan.checkpoints[plan.model_index(tok_model)].root
    out.copy_side_files(Path(tok_root) if tok_root else None)


def _commit(plan: MergePlan, out: ModelDirectory, side: Any) -> None:
    cfg = plan.config
    details: dict[str, Any] = {"tensors": len(plan.jobs)}
    sections = [loading_section()]
    if side:
        details["tasks"] = side.tasks
        sections = [side.card_section()]
    out.commit(
        kind=side.kind if side else "weights",
        method=plan.method.name,
        paper=plan.method.paper,
        seed=cfg.seed,
        base_model=cfg.base_model,
        config=cfg.model_dump(mode="json"),
        details=details,
        card=CardText(sections=tuple(sections)),
    )


# ----------------------------------------------------------------------------------------------------------------
# In memory


def merge_state_dicts(
    base: Mapping[str, torch.Tensor] | None,
    experts: Sequence[Mapping[str, torch.Tensor]],
    method: str,
    *,
    seed: int = 0,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Merge state dicts with one method. Scalars apply to every expert; per-model parameters also take a list.

    >>> merge_state_dicts(base, [sd1, sd2], "ties", density=0.2, weight=[0.5, 0.5])
    Tensors are merged in fp32 (fp64 stays fp64) and returned in the experts' dtype. Every error is a
    MergesmithError: an unknown method or a bad parameter a ConfigError (before any tensor is merged), a method
    failing on a tensor one that names the tensor.
    """
    spec = get_method(method)
    if spec.side_outputs:
        raise MergesmithError(
            f"{method} gives one model per task, not one merged model; use mergesmith.merge_state_dicts_per_task"
        )
    if not experts:
        raise MergesmithError("merge_state_dicts needs at least one expert state dict")
    if spec.base == "required" and base is None:
        raise MergesmithError(f"method {method} needs the base model's state dict")
    names = list(experts[0])
    for i, sd in enumerate(experts[1:], start=1):
        if set(sd) != set(names):
            diff = sorted(set(sd) ^ set(names))[:3]
            raise MergesmithError(
                f"expert {i} has different tensor names than expert 0 (e.g. {diff}); merge models of one architecture"
            )
    out: dict[str, torch.Tensor] = {}
    non_matrix = 0
    for name, first, merged in merged_tensors(spec, base, experts, params, seed, reference=experts[0]):
        if merged is None:
            out[name] = first.clone()
            continue
        assert isinstance(merged, torch.Tensor)  # methods with per-task parts are refused above
        out[name] = merged.to(first.dtype)
        non_matrix += first.dim() != 2
    if spec.non_matrix and non_matrix:
        warnings.warn(
            f"{spec.name}: {non_matrix} tensors are not 2-D matrices (biases, norms); {spec.non_matrix}", stacklevel=2
        )
    return out


__all__ = ["merge", "merge_state_dicts", "plan_merge", "MergeResult", "METHODS"]

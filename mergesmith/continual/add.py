"""One continual step: merge ``previous`` (a continual merge, or a first expert) with a new expert.

Streams tensor by tensor: memory is the base, previous and new tensors of one weight plus the method's work on it,
whatever the model size and however many experts the previous merge holds. OPCM's lambda_t depends on the norm of
the whole unscaled merge, so its step makes two passes: the unscaled tensors go to a float32 scratch file inside the
staging directory, then are rescaled into the output. The output is written by ``io.model_dir.ModelDirectory``
(staged, renamed into place only when complete); its ``mergesmith.json`` holds the inputs and their hashes and, in
``details["state"]``, what the next step needs (``continual.state``).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from mergesmith.architectures import checkpoint_architectures, find_conflict
from mergesmith.continual.state import KIND, BaseRef, ContinualState, MergedExpert, read_state, state_record
from mergesmith.continual.step import (
    StepPlan,
    check_related,
    compute_dtype,
    finish_numbers,
    get_method,
    non_matrix_note,
    params_record,
    rescale_tensor,
    resolve_params,
    step_tensor,
)
from mergesmith.errors import ConfigError, MergesmithError


@dataclass
class ContinualResult:
    out_dir: Path | None
    state: ContinualState
    tensors: int
    shards: dict[str, str]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# In memory


def continual_add_state_dicts(
    base: Mapping[str, Tensor],
    previous: Mapping[str, Tensor],
    new: Mapping[str, Tensor],
    method: str,
    *,
    state: ContinualState | None = None,
    new_name: str = "expert",
    previous_name: str = "expert-1",
    **params: Any,
) -> tuple[dict[str, Tensor], ContinualState]:
    """One continual step on state dicts: (next merge, its state).

    ``state`` None: ``previous`` is the first expert itself, as fine-tuned (the step applies the method's start,
    e.g. theta_0 + lambda tau_1 for task arithmetic); otherwise the merge and state a previous step returned.

    >>> merged, state = continual_add_state_dicts(base, expert_a, expert_b, "opcm")
    >>> merged, state = continual_add_state_dicts(base, merged, expert_c, "opcm", state=state)
    """
    plan = _plan(method, state, params)
    _check_names(base, previous, new)
    out: dict[str, Tensor] = {}
    for name, prev in previous.items():
        out[name] = step_tensor(plan, name, base[name], prev, new[name]) if prev.is_floating_point() else prev.clone()
    check_related(plan, new_name, previous_name, "base")
    lam, norm_sum = finish_numbers(plan)
    for name, prev in previous.items():
        if prev.is_floating_point():
            merged = rescale_tensor(base[name], out[name], lam) if plan.method.rescales else out[name]
            out[name] = merged.to(prev.dtype)
    return out, _next_state(
        plan,
        state,
        lam,
        norm_sum,
        BaseRef(path="<in memory>", fingerprint=""),
        MergedExpert(name=previous_name, fingerprint=""),
        MergedExpert(name=new_name, fingerprint=""),
    )


def start_state_dict(
    base: Mapping[str, Tensor], expert: Mapping[str, Tensor], method: str, **params: Any
) -> dict[str, Tensor]:
    """The model a sequence of ``method`` holds after its first expert (task arithmetic and TIES: theta_0 + lambda
    tau_1; the others: the expert itself)."""
    spec = get_method(method)
    resolved = resolve_params(spec, params, None)
    out: dict[str, Tensor] = {}
    for name, tensor in expert.items():
        if tensor.is_floating_point():
            dtype = compute_dtype(tensor.dtype)
            out[name] = spec.start(base[name].to(dtype), tensor.to(dtype), resolved).to(tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


def _plan(method: str, state: ContinualState | None, params: Mapping[str, Any] | None) -> StepPlan:
    if state is not None and method != state.method:
        raise ConfigError(
            f"this merge was built with {state.method!r}, not {method!r}; continue it with "
            f"--method {state.method}, or start a new sequence from an expert"
        )
    spec = get_method(method)
    resolved = resolve_params(spec, params, state.params if state is not None else None)
    if state is None:
        return StepPlan(spec, resolved, count=1, scale=1.0, norm_sum=0.0, first=True)
    return StepPlan(spec, resolved, count=state.count, scale=state.scale, norm_sum=state.task_norm_sum, first=False)


def _is_float(info: Any) -> bool:
    return info.dtype.is_floating_point


def _check_names(
    base: Mapping[str, Any],
    previous: Mapping[str, Any],
    new: Mapping[str, Any],
    labels: tuple[str, str, str] = ("base", "previous merge", "new expert"),
) -> None:
    """The floating tensors of all three must match by name and shape (integer buffers such as position ids may
    be missing from some: the previous merge's are kept)."""
    shapes = [{k: tuple(v.shape) for k, v in sd.items() if _is_float(v)} for sd in (base, previous, new)]
    for label, other in zip(labels[1:], shapes[1:]):
        missing = sorted(set(shapes[0]) - set(other))
        if missing:
            raise MergesmithError(
                f"{label} lacks tensor {missing[0]!r} of the base {labels[0]}; every model of a "
                f"continual merge must share the base's architecture"
            )
        extra = sorted(set(other) - set(shapes[0]))
        if extra:
            raise MergesmithError(
                f"{label} has tensor {extra[0]!r}, which the base {labels[0]} lacks; every model "
                f"of a continual merge must share the base's architecture"
            )
        for name, shape in other.items():
            if shape != shapes[0][name]:
                raise MergesmithError(
                    f"{label}: tensor {name!r} has shape {shape}, the base {labels[0]} has "
                    f"{shapes[0][name]}; add experts fine-tuned from the same base"
                )


def _next_state(
    plan: StepPlan,
    state: ContinualState | None,
    lam: float,
    norm_sum: float,
    base: BaseRef,
    previous: MergedExpert,
    new: MergedExpert,
) -> ContinualState:
    experts = list(state.experts) if state is not None else [previous]
    return ContinualState(
        method=plan.method.name,
        params=params_record(plan.params),
        base=base,
        experts=experts + [new],
        scale=lam,
        task_norm_sum=norm_sum,
    )


# ---------------------------------------------------------------------------------------------------------------
# From and to checkpoints


def _fingerprint(ckpt) -> str:
    from mergesmith.io.hash_cache import hash_files

    hashes = hash_files([Path(p) for p in ckpt.weight_files])
    digest = hashlib.sha256()
    for path in sorted(ckpt.weight_files, key=lambda p: Path(p).name):
        digest.update(f"{Path(path).name}:{hashes[str(path)]}\n".encode())
    return digest.hexdigest()


def _resolve_base(state: ContinualState | None, base: str | Path | None, previous_root: Path) -> str:
    if base is not None:
        return str(base)
    if state is not None:
        return state.base.path
    raise MergesmithError(
        f"{previous_root} is a single model, not a continual merge; pass --base BASE_MODEL to start a sequence from it"
    )


def continual_add(
    previous: str | Path,
    new_expert: str | Path,
    out_dir: str | Path,
    *,
    method: str | None = None,
    base: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Callable[[int, int], None] | None = None,
) -> ContinualResult:
    """Write the merge of ``previous`` (a continual merge or a first expert) and ``new_expert`` to ``out_dir``."""
    from mergesmith.io import open_checkpoint
    from mergesmith.io.model_dir import ModelDirectory, checkpoint_source

    prev_ckpt = open_checkpoint(previous)
    state = read_state(prev_ckpt.root)
    if method is None:
        method = state.method if state is not None else "opcm"
    plan = _plan(method, state, params)
    base_path = _resolve_base(state, base, prev_ckpt.root)
    opened = [prev_ckpt]
    try:
        base_ckpt = open_checkpoint(base_path)
        opened.append(base_ckpt)
        new_ckpt = open_checkpoint(new_expert)
        opened.append(new_ckpt)
        _check_checkpoints(base_ckpt, prev_ckpt, new_ckpt)
        base_print = _fingerprint(base_ckpt)
        if state is not None and state.base.fingerprint != base_print:
            raise MergesmithError(
                f"{prev_ckpt.root} was merged over a base with fingerprint {state.base.fingerprint[:12]}, but "
                f"{base_ckpt.root} has {base_print[:12]}; pass the base the sequence started from with --base"
            )
        new_state_file = read_state(new_ckpt.root)
        if new_state_file is not None and new_state_file.base.fingerprint != base_print:
            raise MergesmithError(
                f"{new_ckpt.root} is a continual merge over another base ({new_state_file.base.path}); add "
                f"experts fine-tuned from {base_ckpt.root}"
            )
        _check_not_merged_yet(state, prev_ckpt, new_ckpt)
        names = list(prev_ckpt.tensors)
        entries = [(n, prev_ckpt.tensors[n].dtype, prev_ckpt.tensors[n].shape) for n in names]
        sources = {
            "base": checkpoint_source(base_ckpt, str(base_path)),
            "previous": checkpoint_source(prev_ckpt, str(previous)),
            "new": checkpoint_source(new_ckpt, str(new_expert)),
        }
        with ModelDirectory(out_dir, sources, force=force) as out:
            writer = out.open_shards(entries, max_shard_size, metadata={"mergesmith": f"continual/{plan.method.name}"})
            lam, norm_sum = _stream(plan, names, entries, base_ckpt, prev_ckpt, new_ckpt, out.path, writer, progress)
            shards = out.finish_shards()
            out.write_config(prev_ckpt.config_path)
            out.copy_side_files(prev_ckpt.root)
            previous_ref = MergedExpert(name=prev_ckpt.root.name, fingerprint=_fingerprint(prev_ckpt))
            new_ref = MergedExpert(name=name or new_ckpt.root.name, fingerprint=_fingerprint(new_ckpt))
            next_state = _next_state(
                plan,
                state,
                lam,
                norm_sum,
                BaseRef(path=str(base_ckpt.root), fingerprint=base_print),
                previous_ref,
                new_ref,
            )
            out.commit(
                kind=KIND,
                method=f"continual/{plan.method.name}",
                paper=plan.method.paper,
                base_model=str(base_path),
                config=params_record(plan.params),
                details={"step": next_state.count, "state": state_record(next_state)},
                card=_card(next_state),
            )
        return ContinualResult(Path(out_dir), next_state, len(names), shards, non_matrix_note(plan))
    finally:
        for ckpt in opened:
            ckpt.close()


def _check_checkpoints(base_ckpt, prev_ckpt, new_ckpt) -> None:
    conflict = find_conflict(checkpoint_architectures({str(c.root): c for c in (base_ckpt, prev_ckpt, new_ckpt)}))
    if conflict is not None:
        raise MergesmithError(
            f"architectures differ: {conflict.model} is {conflict.declared.describe()}, "
            f"{conflict.reference} is {conflict.reference_declared.describe()}; merge experts of "
            f"one base"
        )
    labels = (str(base_ckpt.root), str(prev_ckpt.root), str(new_ckpt.root))
    _check_names(base_ckpt.tensors, prev_ckpt.tensors, new_ckpt.tensors, labels)


def _check_not_merged_yet(state: ContinualState | None, prev_ckpt, new_ckpt) -> None:
    """Refuse an expert that is already in the merge: the previous model's own directory, or weight files with the
    same content hashes (``_fingerprint``) as an expert the sequence recorded (or as the first expert itself)."""
    if new_ckpt.root.resolve() == prev_ckpt.root.resolve():
        raise MergesmithError(
            f"{new_ckpt.root} is the model it would be added to ({prev_ckpt.root}); add a different expert"
        )
    recorded = (
        state.experts
        if state is not None
        else [MergedExpert(name=str(prev_ckpt.root), fingerprint=_fingerprint(prev_ckpt))]
    )
    new_print = _fingerprint(new_ckpt)
    for expert in recorded:
        if expert.fingerprint and expert.fingerprint == new_print:
            raise MergesmithError(
                f"{new_ckpt.root} is already in this merge: its weights are those of expert "
                f"{expert.name!r}; add each expert once"
            )


def _stream(
    plan, names, entries, base_ckpt, prev_ckpt, new_ckpt, staging: Path, writer, progress
) -> tuple[float, float]:
    """Write the step's tensors through ``writer`` (the output's shards); returns (lambda_t, sum of norms)."""
    from mergesmith.io import open_checkpoint
    from mergesmith.io.writer import ShardedWriter

    passes = 2 if plan.method.rescales else 1
    total = len(names) * passes
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    floating = {n for n in names if prev_ckpt.tensors[n].dtype.is_floating_point}
    if plan.method.rescales:
        scratch_dir = staging / ".unscaled"
        scratch_entries = [(n, compute_dtype(d), s) for n, d, s in entries if n in floating]
        scratch = ShardedWriter(scratch_dir, scratch_entries, "5GB")
        try:
            for n in names:
                if n in floating:
                    scratch.write(n, step_tensor(plan, n, base_ckpt.read(n), prev_ckpt.read(n), new_ckpt.read(n)))
                tick()
            scratch.finish()
        finally:
            scratch.close()
        check_related(plan, str(new_ckpt.root), str(prev_ckpt.root), str(base_ckpt.root))
        lam, norm_sum = finish_numbers(plan)
        with open_checkpoint(scratch_dir) as unscaled:
            for n, dtype, _ in entries:
                out = rescale_tensor(base_ckpt.read(n), unscaled.read(n), lam) if n in floating else prev_ckpt.read(n)
                writer.write(n, out.to(dtype))
                tick()
        shutil.rmtree(scratch_dir)
    else:
        for n, dtype, _ in entries:
            if n in floating:
                out = step_tensor(plan, n, base_ckpt.read(n), prev_ckpt.read(n), new_ckpt.read(n))
            else:
                out = prev_ckpt.read(n)
            writer.write(n, out.to(dtype))
            tick()
        check_related(plan, str(new_ckpt.root), str(prev_ckpt.root), str(base_ckpt.root))
        lam, norm_sum = finish_numbers(plan)
    return lam, norm_sum


def _card(state: ContinualState):
    """The model card's continual part: the sequence so far and how to continue it."""
    from mergesmith.io.model_card import CardText, loading_section

    experts = "\n".join(f"{i}. `{e.name}`" for i, e in enumerate(state.experts, start=1))
    section = (
        f"## Continual sequence\n\n{state.count} experts merged over base `{state.base.path}` with "
        f"{state.method}, in this order:\n\n{experts}\n\nAdd the next one with "
        f"`mergesmith continual add THIS_DIRECTORY NEXT_EXPERT OUT_DIR` (method, parameters and base are read "
        f"from this directory's mergesmith.json)."
    )
    return CardText(title="Continually merged model", tags=("continual",), sections=(section, loading_section()))

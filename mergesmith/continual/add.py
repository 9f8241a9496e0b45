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
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor

from mergesmith.architectures import checkpoint_architectures, find_conflict
from mergesmith.continual import opcm
from mergesmith.continual._spec import ContinualMethod, StepContext, is_linear_weight
from mergesmith.continual.catalogue import CONTINUAL_METHODS
from mergesmith.continual.state import KIND, BaseRef, ContinualState, MergedExpert, read_state, state_record
from mergesmith.errors import ConfigError, MergesmithError

# A fine-tune keeps its base's direction: over the linear weights, cos(theta, theta_0) is near 1 (0.999 for real
# fine-tunes, 0.6 for the tests' deliberately noisy tiny ones); two independent initialisations give about 0.
MIN_COSINE_TO_BASE = 0.3


@dataclass
class Totals:
    """Whole-model sums of squares gathered while stepping."""

    first: float = 0.0  # ||tau_1||^2, when the previous model is a single expert
    new: float = 0.0  # ||tau_new||^2
    unscaled: float = 0.0  # OPCM: ||lambda_{t-1} tau^m + P'(tau_t)||^2
    # over the linear weights only (norm scales, all near 1, would hide a foreign model): ||theta||^2 and
    # <theta, theta_0> of the base, the new expert and the first expert
    base_sq: float = 0.0
    new_sq: float = 0.0
    new_dot: float = 0.0
    first_sq: float = 0.0
    first_dot: float = 0.0
    non_matrix: int = 0  # floating tensors that are not linear weights


@dataclass
class StepPlan:
    """Everything a step needs besides the tensors: the method, its parameters and the carried numbers."""

    method: ContinualMethod
    params: BaseModel
    count: int  # experts in the previous merge
    scale: float  # lambda_{t-1}
    norm_sum: float  # sum of the previous experts' task-vector norms (known after pass 1 on a first step)
    first: bool  # the previous model is one expert, not yet a merge
    totals: Totals = field(default_factory=Totals)


@dataclass
class ContinualResult:
    out_dir: Path | None
    state: ContinualState
    tensors: int
    shards: dict[str, str]
    notes: list[str] = field(default_factory=list)


def non_matrix_note(plan: StepPlan) -> list[str]:
    """The one note per step on tensors outside the method's matrix rule (biases, norms, embeddings)."""
    if not plan.method.non_matrix or not plan.totals.non_matrix:
        return []
    return [
        f"{plan.method.name}: {plan.totals.non_matrix} tensors are not linear weights (biases, norms, "
        f"embeddings); they are {plan.method.non_matrix}"
    ]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sq(t: Tensor) -> float:
    return float(t.double().square().sum())


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a.double() * b.double()).sum())


def step_tensor(plan: StepPlan, name: str, base: Tensor, previous: Tensor, new: Tensor) -> Tensor:
    """The next merge of one floating tensor, in the compute dtype (OPCM: before the rescale)."""
    dtype = compute_dtype(previous.dtype)
    b, p, n = base.to(dtype), previous.to(dtype), new.to(dtype)
    t = plan.totals
    is_matrix = is_linear_weight(name, b)
    new_sq = _sq(n - b)
    t.new += new_sq
    t.non_matrix += not is_matrix
    if is_matrix:
        t.base_sq += _sq(b)
        t.new_sq += _sq(n)
        t.new_dot += _dot(n, b)
    if plan.first:
        t.first += _sq(p - b)
        if is_matrix:
            t.first_sq += _sq(p)
            t.first_dot += _dot(p, b)
        p = plan.method.start(b, p, plan.params)
    ctx = StepContext(name=name, is_matrix=is_matrix, count=plan.count, scale=plan.scale)
    out = plan.method.step(b, p, n, plan.params, ctx)
    if plan.method.rescales:
        t.unscaled += _sq(out - b)
    return out


def finish_numbers(plan: StepPlan) -> tuple[float, float]:
    """(lambda_t, sum of task-vector norms) after the step."""
    t = plan.totals
    if not all(math.isfinite(v) for v in (t.first, t.new, t.unscaled)):
        # NaN would flow into every tensor while next_lambda reads NaN as "no norm" and records lambda 1.0.
        raise MergesmithError(
            "the models of this continual step hold NaN or Inf values (their task-vector norms are "
            "not finite); fix or drop the model that holds them"
        )
    norm_sum = (math.sqrt(t.first) if plan.first else plan.norm_sum) + math.sqrt(t.new)
    if not plan.method.rescales:
        return 1.0, norm_sum
    return opcm.next_lambda(math.sqrt(t.unscaled), norm_sum / (plan.count + 1)), norm_sum


def rescale_tensor(base: Tensor, unscaled: Tensor, lam: float) -> Tensor:
    """OPCM step 3: theta_0 + (lambda_{t-1} tau^m + P'(tau_t)) / lambda_t."""
    b = base.to(unscaled.dtype)
    return b + (unscaled - b) / lam


def check_related(plan: StepPlan, new_label: str, previous_label: str, base_label: str) -> None:
    """Refuse an expert (or first model) that is not a fine-tune of the base: over the linear weights, its cosine
    to the base is below ``MIN_COSINE_TO_BASE``."""
    t = plan.totals
    checks = [(new_label, t.new_sq, t.new_dot)] + ([(previous_label, t.first_sq, t.first_dot)] if plan.first else [])
    for label, sq, dot in checks:
        if t.base_sq <= 0 or sq <= 0:
            continue
        cosine = dot / math.sqrt(sq * t.base_sq)
        if cosine < MIN_COSINE_TO_BASE:
            raise MergesmithError(
                f"{label} is not a fine-tune of base {base_label}: the cosine of their linear weights is "
                f"{cosine:.2f}; add experts fine-tuned from the same base (or pass the right --base)"
            )


def resolve_params(
    method: ContinualMethod, given: Mapping[str, Any] | None, recorded: Mapping[str, Any] | None
) -> BaseModel:
    """The method's parameters: those recorded by the sequence, which given values may repeat but not change."""
    given = dict(given or {})
    if recorded is not None:
        changed = sorted(k for k, v in given.items() if k in recorded and recorded[k] != v or k not in recorded)
        if changed:
            k = changed[0]
            raise ConfigError(
                f"parameter {k}={given[k]!r} differs from the {recorded.get(k)!r} this sequence was "
                f"started with; keep the parameters of a sequence, or start a new one from an expert"
            )
        given = dict(recorded)
    try:
        return method.params.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "parameters"
        known = ", ".join(f.alias or n for n, f in method.params.model_fields.items()) or "none"
        raise ConfigError(f"{method.name}: parameter {where}: {err['msg']} (parameters: {known})") from None


def get_method(name: str) -> ContinualMethod:
    try:
        return CONTINUAL_METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown continual method {name!r}; choose one of {', '.join(CONTINUAL_METHODS)}") from None


def params_record(params: BaseModel) -> dict[str, Any]:
    return params.model_dump(mode="json", by_alias=True)


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

"""Plan a merge: config + checkpoint headers -> one job per output tensor, every parameter resolved.

Nothing here reads a weight. Every check that headers allow happens here (tensor names and shapes agree across
models, the method's input contract, parameter values), so a bad merge fails before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mergesmith.config import (
    MergeConfig,
    OutputSlice,
    Parameters,
    referenced_models,
    resolve_setting,
)
from mergesmith.engine.layers import (
    LayerName,
    gradient_t,
    is_pre_stack,
    layer_counts,
    main_stack,
    natural_key,
    parse_layer,
    relative_depth,
)
from mergesmith.errors import ConfigError
from mergesmith.methods import METHODS, MethodSpec
from mergesmith.methods._protocol import Statistics
from mergesmith.methods._spec import param_infos, tensor_facts

DTYPE_BY_NAME = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class TensorRef:
    model: int  # index into MergePlan.models
    name: str


@dataclass(frozen=True)
class TensorJob:
    out_name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    compute_dtype: torch.dtype
    base: TensorRef | None
    experts: tuple[TensorRef, ...]
    params: Any  # the method's Params, resolved for this tensor; None for copies
    t: float
    copy_from: TensorRef | None = None  # non-float tensors (buffers) are copied, not merged
    # Methods with statistics (``MethodSpec.statistics``): each expert's statistic for this tensor, in the experts'
    # order; empty for tensors without statistics.
    statistics: tuple[TensorRef, ...] = ()

    @property
    def inputs(self) -> tuple[TensorRef, ...]:
        if self.copy_from is not None:
            return (self.copy_from,)
        return ((self.base,) if self.base is not None else ()) + self.experts + self.statistics

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def out_nbytes(self) -> int:
        return self.numel * self.out_dtype.itemsize


@dataclass
class MergePlan:
    config: MergeConfig
    method: MethodSpec
    model_names: list[str]  # as written in the config
    checkpoints: list[Any]  # io.Checkpoint, same order
    jobs: list[TensorJob]
    out_layer_count: int | None  # set when slices change the depth
    reference: int  # model whose config.json / tokenizer the output starts from
    notes: list[str] = field(default_factory=list)
    # Layers per stack prefix in the output model: where each output tensor sits (``relative_depth``).
    layer_counts: dict[str, int] = field(default_factory=dict)

    def model_index(self, name: str) -> int:
        return self.model_names.index(name)


def build_plan(config: MergeConfig, checkpoints: dict[str, Any]) -> MergePlan:
    """``checkpoints`` maps each model name in the config to its opened Checkpoint."""
    method = METHODS[config.merge_method]
    names = referenced_models(config)
    missing = [n for n in names if n not in checkpoints]
    if missing:
        raise ConfigError(f"model {missing[0]!r} was not opened")
    plan = MergePlan(
        config=config,
        method=method,
        model_names=names,
        checkpoints=[checkpoints[n] for n in names],
        jobs=[],
        out_layer_count=None,
        reference=0,
    )
    if config.base_model is None and method.base == "required":
        raise ConfigError(
            f"merge_method {method.name} needs base_model: set it to the model the others were fine-tuned from"
        )
    if config.models is not None:
        _plan_models(plan)
        if method.statistics is not None:
            _add_statistics(plan, method.statistics)
    else:
        _plan_slices(plan)
    _check_unique_outputs(plan)
    plan.notes.extend(_tied_weight_notes(plan))
    plan.notes.extend(_non_matrix_notes(plan))
    return plan


def _non_matrix_notes(plan: MergePlan) -> list[str]:
    """One note for a method defined on 2-D matrices: how its paper merges the other tensors, and how many there are."""
    if not plan.method.non_matrix:
        return []
    others = [j for j in plan.jobs if j.params is not None and len(j.shape) != 2]
    if not others:
        return []
    return [f"{plan.method.name}: {len(others)} tensors are not 2-D matrices (biases, norms); {plan.method.non_matrix}"]


def _tied_weight_notes(plan: MergePlan) -> list[str]:
    """Name the weights a model ties to others instead of storing them (they are absent from every input)."""
    ckpt = plan.checkpoints[plan.reference]
    if ckpt.config_path is None:
        return []
    config = ckpt.config()  # bounded; a broken config.json is an error naming it, never a traceback
    if config.get("tie_word_embeddings", True) is False:
        return []
    heads = [n for n in ("lm_head.weight", "cls.predictions.decoder.weight") if n not in ckpt.tensors]
    embeddings = [
        n for n in ckpt.tensors if n.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))
    ]
    if not embeddings or not config.get("architectures"):
        return []
    return [
        f"{h} is tied to {embeddings[0]} (tie_word_embeddings); not stored, the output ties it the same way"
        for h in heads[:1]
    ]


# ----------------------------------------------------------------------------------------------------------------
# models: every model contributes the same tensor names


def _plan_models(plan: MergePlan) -> None:
    config = plan.config
    entries = config.models or []
    group = [e.model for e in entries]
    params_by_model = {e.model: e.parameters for e in entries}
    base_name, experts = _split_group(plan.method, group, config.base_model, "models")
    plan.reference = plan.model_index(base_name) if base_name else plan.model_index(experts[0])
    involved = ([base_name] if base_name else []) + experts
    _check_same_tensors(plan, involved)
    ref_ckpt = plan.checkpoints[plan.reference]
    counts = layer_counts(ref_ckpt.tensors)
    plan.layer_counts = counts
    for name in sorted(ref_ckpt.tensors, key=natural_key):
        info = ref_ckpt.tensors[name]
        if not info.dtype.is_floating_point:
            # Integer buffers (position ids) are not weights, and newer saves often omit them: carried over.
            ref = TensorRef(plan.reference, name)
            plan.jobs.append(
                TensorJob(name, tuple(info.shape), info.dtype, info.dtype, None, (), None, 0.0, copy_from=ref)
            )
            continue
        layer = parse_layer(name)
        t = gradient_t(layer.index, counts[layer.prefix]) if layer else 0.0
        inputs = {m: name for m in involved}
        plan.jobs.append(
            _make_job(plan, name, base_name, experts, inputs, t, [params_by_model], [None], config.parameters)
        )


# ----------------------------------------------------------------------------------------------------------------
# slices: layer ranges of models, stacked in order (depth up-scaling, frankenmerges)


def _plan_slices(plan: MergePlan) -> None:
    config = plan.config
    slices = config.slices or []
    first_model = slices[0].sources[0].model
    plan.reference = plan.model_index(config.base_model) if config.base_model else plan.model_index(first_model)
    ref_names = list(plan.checkpoints[plan.reference].tensors)
    prefix = main_stack(ref_names)
    if prefix is None:
        raise ConfigError(
            "slices need a model with numbered layers (e.g. model.layers.N.*); none found in the tensor names"
        )
    for s, out_slice in enumerate(slices):
        for j, src in enumerate(out_slice.sources):
            count = layer_counts(plan.checkpoints[plan.model_index(src.model)].tensors).get(prefix, 0)
            if src.layer_range[1] > count:
                raise ConfigError(
                    f"slices[{s}].sources[{j}].layer_range {list(src.layer_range)} runs past {src.model!r}, "
                    f"which has {count} layers under {prefix!r}; use an end of at most {count}"
                )

    # Tensors outside the stack: embeddings from the first slice's models, the rest from the last slice's.
    parsed = [(n, parse_layer(n)) for n in ref_names]
    outside = [n for n, layer in parsed if layer is None or layer.prefix != prefix]
    layer_template = sorted({layer.rest for _, layer in parsed if layer and layer.prefix == prefix}, key=natural_key)
    spans = [s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in slices]
    plan.layer_counts = {prefix: sum(spans)}
    for name in sorted((n for n in outside if is_pre_stack(n)), key=natural_key):
        _add_slice_job(plan, slices[0], name, {src.model: name for src in slices[0].sources}, 0.0)
    out_index = 0
    for out_slice in slices:
        span = out_slice.sources[0].layer_range[1] - out_slice.sources[0].layer_range[0]
        for offset in range(span):
            t = gradient_t(offset, span)
            for rest in layer_template:
                inputs = {
                    src.model: LayerName(prefix, src.layer_range[0] + offset, rest).with_index(
                        src.layer_range[0] + offset
                    )
                    for src in out_slice.sources
                }
                _add_slice_job(plan, out_slice, LayerName(prefix, out_index, rest).with_index(out_index), inputs, t)
            out_index += 1
    for name in sorted((n for n in outside if not is_pre_stack(n)), key=natural_key):
        _add_slice_job(plan, slices[-1], name, {src.model: name for src in slices[-1].sources}, 0.0)
    plan.out_layer_count = out_index


def _add_slice_job(plan: MergePlan, out_slice: OutputSlice, out_name: str, inputs: dict[str, str], t: float) -> None:
    config = plan.config
    group = [src.model for src in out_slice.sources]
    base_name, experts = _split_group(plan.method, group, out_slice.base_model or config.base_model, "slices")
    if base_name is not None and base_name not in inputs:
        # A base outside the slice contributes the tensor at the first source's position.
        inputs = {**inputs, base_name: next(iter(inputs.values()))}
    for model, name in inputs.items():
        ckpt = plan.checkpoints[plan.model_index(model)]
        if name not in ckpt.tensors:
            raise ConfigError(
                f"tensor {name!r} is missing from {model!r}; the models in a slice must share an architecture"
            )
    params_by_model = {src.model: src.parameters for src in out_slice.sources}
    plan.jobs.append(
        _make_job(
            plan, out_name, base_name, experts, inputs, t, [params_by_model], [out_slice.parameters], config.parameters
        )
    )


# ----------------------------------------------------------------------------------------------------------------
# shared


def _split_group(method: MethodSpec, group: list[str], base: str | None, where: str) -> tuple[str | None, list[str]]:
    """Base and experts of one merge group, checked against the method's input contract."""
    if method.base == "unused":
        # As in mergekit, a base_model that is not listed is merged in as one more model.
        base_name, experts = None, list(group) + ([base] if base and base not in group else [])
    else:
        base_name = base
        experts = [m for m in group if m != base]
    if method.base == "required" and base_name is None:
        raise ConfigError(
            f"merge_method {method.name} needs base_model; set it to the model the others were fine-tuned from"
        )
    if len(experts) < method.min_models:
        extra = " besides the base model" if base_name else ""
        raise ConfigError(
            f"{where}: merge_method {method.name} needs at least {method.min_models} model(s){extra}, got {len(experts)}"
        )
    if method.max_models is not None and len(experts) > method.max_models:
        extra = " besides the base model" if base_name else ""
        raise ConfigError(
            f"{where}: merge_method {method.name} takes at most {method.max_models} model(s){extra}, got {len(experts)}"
        )
    return base_name, experts


def _check_same_tensors(plan: MergePlan, involved: list[str]) -> None:
    ref = plan.checkpoints[plan.reference]
    ref_name = plan.model_names[plan.reference]
    ref_names = {n for n, i in ref.tensors.items() if i.dtype.is_floating_point}
    for model in involved:
        ckpt = plan.checkpoints[plan.model_index(model)]
        names = {n for n, i in ckpt.tensors.items() if i.dtype.is_floating_point}
        lacking = sorted(ref_names - names, key=natural_key)
        extra = sorted(names - ref_names, key=natural_key)
        if lacking or extra:
            which, listed = ("lacks", lacking) if lacking else ("has extra", extra)
            shown = ", ".join(listed[:3]) + (f" (and {len(listed) - 3} more)" if len(listed) > 3 else "")
            raise ConfigError(
                f"{model!r} {which} tensors compared with {ref_name!r}: {shown}; merge models of the same architecture"
            )


def _make_job(
    plan: MergePlan,
    out_name: str,
    base_name: str | None,
    experts: list[str],
    inputs: dict[str, str],
    t: float,
    model_scopes: list[dict[str, Parameters | None]],
    slice_scopes: list[Parameters | None],
    global_scope: Parameters | None,
) -> TensorJob:
    config = plan.config
    involved = ([base_name] if base_name else []) + experts
    infos = {m: plan.checkpoints[plan.model_index(m)].tensors[inputs[m]] for m in involved}
    ref_model = base_name or experts[0]
    ref_info = infos[ref_model]
    for model, info in infos.items():
        if tuple(info.shape) != tuple(ref_info.shape):
            raise ConfigError(
                f"tensor {inputs[model]!r} has shape {list(info.shape)} in {model!r} but {list(ref_info.shape)} in "
                f"{ref_model!r}; merge models of the same architecture and size"
            )
        if info.dtype.is_floating_point != ref_info.dtype.is_floating_point:
            raise ConfigError(
                f"tensor {inputs[model]!r} is {info.dtype} in {model!r} but {ref_info.dtype} in {ref_model!r}; "
                "floating-point and integer tensors cannot be merged"
            )
    shape = tuple(ref_info.shape)
    ref = TensorRef(plan.model_index(ref_model), inputs[ref_model])
    if not ref_info.dtype.is_floating_point:
        # Integer buffers (position ids, masks) are not weights: carried over from the reference model.
        return TensorJob(out_name, shape, ref_info.dtype, ref_info.dtype, None, (), None, t, copy_from=ref)

    wants64 = config.dtype == "float64" or any(i.dtype == torch.float64 for i in infos.values())
    compute_dtype = torch.float64 if wants64 else torch.float32
    out_name_dtype = config.out_dtype or config.dtype
    out_dtype = DTYPE_BY_NAME[out_name_dtype] if out_name_dtype else ref_info.dtype

    params = _resolve_params(
        plan.method,
        out_name,
        experts,
        t,
        model_scopes,
        slice_scopes,
        global_scope,
        tensor_fact_values(plan.method.params, out_name, plan.layer_counts),
    )
    return TensorJob(
        out_name=out_name,
        shape=shape,
        out_dtype=out_dtype,
        compute_dtype=compute_dtype,
        base=TensorRef(plan.model_index(base_name), inputs[base_name]) if base_name else None,
        experts=tuple(TensorRef(plan.model_index(m), inputs[m]) for m in experts),
        params=params,
        t=t,
    )


def _resolve_params(
    method: MethodSpec,
    tensor_name: str,
    experts: list[str],
    t: float,
    model_scopes: list[dict[str, Parameters | None]],
    slice_scopes: list[Parameters | None],
    global_scope: Parameters | None,
    facts: dict[str, Any] | None = None,
) -> Any:
    """The tensor's Params: each parameter's setting resolved for this tensor (filters, gradients), then every
    declared rule checked by ``make_params``, so a bad value is refused here, before any weight is read."""
    values: dict[str, Any] = {}
    for info in param_infos(method.params).values():
        if info.per_model:
            values[info.name] = [
                resolve_setting(
                    info.name, [s.get(model) for s in model_scopes] + slice_scopes + [global_scope], tensor_name, t
                )
                for model in experts
            ]
        else:
            values[info.name] = resolve_setting(info.name, slice_scopes + [global_scope], tensor_name, t)
    return method.make_params(
        len(experts), values, facts=facts, where=f"{method.name} on tensor {tensor_name!r}", models=experts
    )


def tensor_fact_values(params_cls: type, name: str, counts: dict[str, int]) -> dict[str, Any]:
    """Values of the Params fields the engine fills in for tensor ``name`` (``_spec.tensor_fact``).

    Shared by the engine's plan and ``api.merge_state_dicts`` so both merge a tensor with the same facts.
    """
    values: dict[str, Any] = {}
    for field_name, kind in tensor_facts(params_cls).items():
        if kind == "depth":
            values[field_name] = relative_depth(name, counts)
        else:  # a new kind of fact must be taught here
            raise ValueError(f"unknown tensor fact {kind!r} in {params_cls.__qualname__}.{field_name}")
    return values


def _add_statistics(plan: MergePlan, statistics: Statistics) -> None:
    """Methods with statistics (fisher_combine, regmean_combine): give each job its experts' statistics for the
    tensor (each model entry's ``statistics`` file, same tensor name), checked against the shape the method expects.
    A tensor some statistics files have and others lack is an error; one that none has is merged without."""
    import dataclasses

    # the config check gave every model entry its statistics file
    entries = {e.model: e.statistics for e in plan.config.models or [] if e.statistics is not None}
    for index, job in enumerate(plan.jobs):
        if job.params is None:
            continue
        files = [entries[plan.model_names[ref.model]] for ref in job.experts]
        infos = [plan.checkpoints[plan.model_index(f)].tensors.get(job.out_name) for f in files]
        if all(i is None for i in infos):
            continue
        if any(i is None for i in infos):
            lacking = files[[i is None for i in infos].index(True)]
            raise ConfigError(
                f"{lacking}: has no statistic for {job.out_name!r} but other statistics files do; collect all of them the same way"
            )
        wanted = statistics.shape(job.shape, job.params)
        for f, info in zip(files, infos):
            if wanted is None or tuple(info.shape) != tuple(wanted):
                raise ConfigError(
                    f"{f}: the statistic {job.out_name!r} has shape {list(info.shape)} but {plan.method.name} expects "
                    f"{list(wanted) if wanted else 'none'} for a tensor of shape {list(job.shape)}"
                )
        refs = tuple(TensorRef(plan.model_index(f), job.out_name) for f in files)
        plan.jobs[index] = dataclasses.replace(job, statistics=refs)


def _check_unique_outputs(plan: MergePlan) -> None:
    seen: set[str] = set()
    for job in plan.jobs:
        if job.out_name in seen:
            raise ConfigError(f"two slices write tensor {job.out_name!r}; check the slices' layer ranges")
        seen.add(job.out_name)

"""Merge configuration: mergekit's YAML schema, validated strictly, and resolution of per-tensor parameters.

Unknown keys are errors that name their YAML path and the allowed keys. Per-tensor parameter values (filters,
layer gradients) are resolved here into plain numbers, before any weight is read, following mergekit's rules so
its configs mean the same thing:
- precedence: the model's own ``parameters`` in its ``models``/``sources`` entry, then the slice's, then the
  top-level ``parameters``; the first setting that resolves to a value wins;
- a list of numbers is a gradient over the layers of the slice, interpolated piecewise-linearly at
  t = layer / (layers - 1) (t = 1 for a one-layer slice, t = 0 for tensors outside the layer stack);
- a list of ``{filter, value}`` picks the first entry whose filter is a substring of the tensor name (``*`` or
  no filter matches everything).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mergesmith.errors import ConfigError
from mergesmith.io.parse import read_yaml
from mergesmith.methods import METHODS, MethodSpec
from mergesmith.methods._spec import MISSING, ParamInfo, param_infos

Scalar = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionalParameter(_Strict):
    value: Scalar | list[Scalar]
    filter: str | None = None


ParameterSetting = Scalar | list[ConditionalParameter] | list[Scalar] | ConditionalParameter
Parameters = dict[str, ParameterSetting]


class ModelEntry(_Strict):
    model: str
    parameters: Parameters | None = None
    # Per-model statistics (a safetensors file keyed by tensor name) for methods that read them (fisher_combine,
    # regmean_combine); written by ``mergesmith adapt fisher|regmean``.
    statistics: str | None = None


class SliceSource(_Strict):
    model: str
    layer_range: tuple[int, int]
    parameters: Parameters | None = None

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 0 or value[1] <= value[0]:
            raise ValueError(f"layer_range {list(value)} must be [start, end) with 0 <= start < end")
        return value


class OutputSlice(_Strict):
    sources: list[SliceSource] = Field(min_length=1)
    base_model: str | None = None
    parameters: Parameters | None = None


DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}


class MergeConfig(_Strict):
    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: Parameters | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    # mergesmith's own keys
    config_source: str | None = None  # whose config.json the output starts from: "base" (default) or a model
    seed: int = 0
    name: str | None = None

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; use one of float32, float16, bfloat16, float64")
        return DTYPES[value]


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _pydantic_message(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]).replace(".[", "[")
    # For unions pydantic reports one error per branch; the location up to the union is what the user needs.
    if first["type"] == "extra_forbidden":
        parent = loc.rsplit(".", 1)[0] if "." in loc else "top level"
        key = str(first["loc"][-1])
        allowed = _allowed_keys(first["loc"][:-1])
        return f"{source}: unknown key {key!r} at {loc}; allowed keys {'at ' + parent if parent != 'top level' else 'at the top level'}: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"{source}: missing required key {loc}"
    return f"{source}: {loc}: {first['msg']}"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = MergeConfig
    names = [p for p in loc if not isinstance(p, int)]
    for name in names:
        field = model.model_fields.get(str(name))
        if field is None:
            break
        ann = str(field.annotation)
        nested = next((m for m in (ModelEntry, OutputSlice, SliceSource) if m.__name__ in ann), None)
        if nested is None:
            break
        model = nested
    return sorted(model.model_fields)


class _NoPythonTagsLoader(yaml.SafeLoader):
    """Safe loading only: ``!!python/object`` and friends are refused by SafeLoader."""


def load_config(source: str | Path | dict | MergeConfig) -> MergeConfig:
    """Parse a YAML file, a YAML string's parsed dict or a MergeConfig into a validated MergeConfig."""
    if isinstance(source, MergeConfig):
        config, label = source, "config"
    else:
        if isinstance(source, dict):
            data, label = source, "config"
        else:
            path = Path(source)
            label = str(path)
            if not path.exists():
                raise ConfigError(f"{path}: config file not found; pass the path of a merge YAML file")
            # Bounded: size, nesting, aliases and number lengths are checked before anything is built.
            data = read_yaml(
                path,
                loader=_NoPythonTagsLoader,
                what="merge config",
                error=ConfigError,
                top=None,
                fix="only plain YAML is accepted (no tags); pass a merge YAML file",
            )
        if not isinstance(data, dict):
            raise ConfigError(f"{label}: expected a mapping with merge_method and models or slices at the top level")
        unsupported = {"modules", "tokenizer", "chat_template"} & set(data)
        if unsupported:
            key = sorted(unsupported)[0]
            raise ConfigError(
                f"{label}: {key!r} is not supported by mergesmith yet; remove it (use models or slices, and tokenizer_source)"
            )
        try:
            config = MergeConfig.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_pydantic_message(err, label)) from None
    check_config(config, label)
    return config


def check_config(config: MergeConfig, label: str = "config") -> None:
    """Everything that can be checked without opening a checkpoint."""
    if (config.models is None) == (config.slices is None):
        raise ConfigError(f"{label}: give exactly one of 'models' or 'slices'")
    if config.models is not None and not config.models:
        raise ConfigError(f"{label}: 'models' is empty; list at least one model to merge")
    if config.merge_method not in METHODS:
        raise ConfigError(
            f"{label}: unknown merge_method {config.merge_method!r}; known methods: {', '.join(sorted(METHODS))}"
        )
    if config.tokenizer_source == "union":
        raise ConfigError(
            f"{label}: tokenizer_source 'union' needs vocabulary alignment, which mergesmith does not do yet; "
            "use 'base' or the name of one of the models"
        )
    method = METHODS[config.merge_method]
    infos = param_infos(method.params)
    _check_parameter_block(config.parameters, "parameters", infos, method, allow_global=True, label=label)
    if config.models is not None:
        seen: dict[tuple[str, ...], str] = {}
        for i, entry in enumerate(config.models):
            key = model_identity(entry.model)
            if key in seen:
                same = "" if seen[key] == entry.model else f" (the same model as {seen[key]!r})"
                raise ConfigError(f"{label}: models[{i}]: {entry.model!r} is listed twice{same}; list each model once")
            seen[key] = entry.model
            _check_parameter_block(
                entry.parameters, f"models[{i}].parameters", infos, method, allow_global=False, label=label
            )
    else:
        for s, out_slice in enumerate(config.slices or []):
            _check_parameter_block(
                out_slice.parameters, f"slices[{s}].parameters", infos, method, allow_global=True, label=label
            )
            lengths = {src.layer_range[1] - src.layer_range[0] for src in out_slice.sources}
            if len(lengths) > 1:
                raise ConfigError(
                    f"{label}: slices[{s}]: every source of a slice must span the same number of layers, got {sorted(lengths)}"
                )
            for j, src in enumerate(out_slice.sources):
                _check_parameter_block(
                    src.parameters,
                    f"slices[{s}].sources[{j}].parameters",
                    infos,
                    method,
                    allow_global=False,
                    label=label,
                )
    _check_statistics(config, method, label)
    if config.config_source not in (None, "base") and config.config_source not in referenced_models(config):
        raise ConfigError(
            f"{label}: config_source {config.config_source!r} is not one of the models; use 'base' or a listed model"
        )
    if config.tokenizer_source not in (None, "base") and config.tokenizer_source not in referenced_models(config):
        raise ConfigError(
            f"{label}: tokenizer_source {config.tokenizer_source!r} is not one of the models; use 'base' or a listed model"
        )


def model_identity(name: str) -> tuple[str, ...]:
    """What makes two model references the same model: the resolved path of a local file or directory (so
    ``expert/``, ``./expert``, an absolute path and a symlink to it agree), else a hub id's lower-cased repo and
    revision (``main`` when none is given), else the text itself."""
    from mergesmith.io.hub import parse_repo_id

    path = Path(name).expanduser()
    if path.exists():
        return ("path", str(path.resolve()))
    parsed = parse_repo_id(name)
    if parsed is not None:
        repo, revision = parsed
        return ("hub", repo.lower(), revision or "main")
    return ("path", os.path.abspath(path))


def _check_statistics(config: MergeConfig, method: MethodSpec, label: str) -> None:
    """Methods with statistics need a ``statistics`` file for every model entry; other methods accept none."""
    if method.statistics is None:
        for i, entry in enumerate(config.models or []):
            if entry.statistics is not None:
                raise ConfigError(
                    f"{label}: models[{i}].statistics: {method.name} reads no statistics; remove it (fisher_combine and regmean_combine read them)"
                )
        return
    if config.models is None:
        raise ConfigError(
            f"{label}: {method.name} merges whole models with their statistics; use 'models', not 'slices'"
        )
    if config.base_model is not None:
        raise ConfigError(
            f"{label}: {method.name} does not use base_model; remove it and list the experts with their statistics"
        )
    for i, entry in enumerate(config.models):
        if entry.statistics is None:
            raise ConfigError(
                f"{label}: models[{i}]: {method.name} needs the model's statistics file (statistics: PATH.safetensors)"
            )


def _check_parameter_block(
    block: Parameters | None,
    where: str,
    infos: dict[str, ParamInfo],
    method: MethodSpec,
    *,
    allow_global: bool,
    label: str,
) -> None:
    for key, setting in (block or {}).items():
        if key not in infos:
            allowed = ", ".join(sorted(infos)) or "none"
            raise ConfigError(f"{label}: {where}.{key}: unknown parameter for {method.name}; allowed: {allowed}")
        if not allowed_here(infos[key], allow_global):
            raise ConfigError(
                f"{label}: {where}.{key}: {key!r} is a global parameter of {method.name}; "
                "move it to the top-level (or slice) parameters"
            )
        for value in _leaf_values(setting):
            infos[key].coerce(value, f"{label}: {where}.{key}")  # the declared type and rules (methods/_spec.py)


def allowed_here(info: ParamInfo, allow_global: bool) -> bool:
    return info.per_model or allow_global


def _leaf_values(setting: ParameterSetting) -> list[Scalar]:
    if isinstance(setting, ConditionalParameter):
        return _leaf_values(setting.value)
    if isinstance(setting, list):
        out: list[Scalar] = []
        for item in setting:
            out.extend(_leaf_values(item))
        return out
    return [setting]


def referenced_models(config: MergeConfig) -> list[str]:
    """Every model the config names, in first-mention order (base first when given)."""
    names: list[str] = []

    def add(name: str | None) -> None:
        if name and name not in names:
            names.append(name)

    add(config.base_model)
    for entry in config.models or []:
        add(entry.model)
    for entry in config.models or []:
        add(entry.statistics)  # statistics files are opened like checkpoints (safetensors keyed by tensor name)
    for out_slice in config.slices or []:
        add(out_slice.base_model)
        for src in out_slice.sources:
            add(src.model)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Per-tensor resolution


def evaluate_setting(setting: ParameterSetting, tensor_name: str, t: float) -> Scalar | None:
    """A setting's value for one tensor: None when a conditional list has no matching filter."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        conditions = [item for item in setting if isinstance(item, ConditionalParameter)]
        if len(conditions) == len(setting):
            for cond in conditions:
                if cond.filter is None or cond.filter == "*" or cond.filter in tensor_name:
                    return evaluate_setting(cond.value, tensor_name, t)
            return None
        # the schema admits no list mixing the two kinds: this one holds only scalars
        return _gradient([item for item in setting if not isinstance(item, ConditionalParameter)], t)
    return setting


def _gradient(values: list[Scalar], t: float) -> Scalar:
    numeric = [float(v) if isinstance(v, str) else v for v in values] if all(_numeric(v) for v in values) else None
    if numeric is None:
        return values[int(t * (len(values) - 1))]
    # Piecewise-linear, exactly as mergekit computes it (same float operations, for bitwise parity).
    scaled = t * (len(numeric) - 1)
    i0 = int(scaled)
    i1 = min(len(numeric) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * numeric[i0] + frac * numeric[i1]


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def resolve_setting(name: str, scopes: list[Parameters | None], tensor_name: str, t: float) -> Any:
    """The value of parameter ``name`` for one tensor: the first scope whose setting resolves wins; MISSING when
    none does (``MethodSpec.make_params`` then takes the default, or refuses a required parameter)."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate_setting(scope[name], tensor_name, t)
            if value is not None:
                return value
    return MISSING


# ----------------------------------------------------------------------------------------------------------------
# Settings that validate but cannot mean what the user wrote: reported as warnings once the tensor names are known


def parameter_warnings(config: MergeConfig, tensor_names: list[str], layers: int | None) -> list[str]:
    """``warning: ...`` lines for filters that match no tensor and gradients with more values than layers.

    ``tensor_names`` are the output tensors' names (what filters are matched against); ``layers`` the depth a
    top-level gradient spans (a slice's gradients span that slice).
    """
    out: list[str] = []

    def visit(block: Parameters | None, where: str, span: int | None) -> None:
        for key, setting in (block or {}).items():
            for cond in _conditionals(setting):
                if cond.filter not in (None, "*") and not any(cond.filter in n for n in tensor_names):
                    out.append(
                        f"warning: {where}.{key}: filter {cond.filter!r} matches no tensor name, so its value never "
                        "applies; check the spelling against the names `mergesmith plan` prints"
                    )
            for values in _gradients(setting):
                if span and len(values) > span:
                    out.append(
                        f"warning: {where}.{key}: a gradient of {len(values)} values over {span} layers; values "
                        f"between layers are interpolated and some never apply; give at most {span} values"
                    )

    if config.models is not None:
        visit(config.parameters, "parameters", layers)
        for i, entry in enumerate(config.models):
            visit(entry.parameters, f"models[{i}].parameters", layers)
    else:
        spans = [s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in config.slices or []]
        visit(config.parameters, "parameters", max(spans, default=None))
        for s, (out_slice, span) in enumerate(zip(config.slices or [], spans)):
            visit(out_slice.parameters, f"slices[{s}].parameters", span)
            for j, src in enumerate(out_slice.sources):
                visit(src.parameters, f"slices[{s}].sources[{j}].parameters", span)
    return out


def _conditionals(setting: ParameterSetting) -> list[ConditionalParameter]:
    if isinstance(setting, ConditionalParameter):
        return [setting]
    if isinstance(setting, list):
        return [item for item in setting if isinstance(item, ConditionalParameter)]
    return []


def _gradients(setting: ParameterSetting) -> list[list[Scalar]]:
    """Every list of scalars in a setting (a gradient), directly or as a conditional's value."""
    candidates = [c.value for c in _conditionals(setting)] + [setting]
    return [v for v in candidates if isinstance(v, list) and len(v) > 1 and not isinstance(v[0], ConditionalParameter)]

"""What a merge method declares about itself: its parameters and their rules, its input contract and its paper.

Every method module exposes a frozen ``Params`` dataclass and a ``SPEC = MethodSpec(...)`` (a module that holds two
variants of one method, e.g. ``dare``: dare_linear and dare_ties, exposes ``SPECS = (...)`` instead). The catalogue
in ``methods/__init__.py`` collects them.

Parameters come in two scopes, as in mergekit's YAML:
- global: one value for the tensor (``normalize``, ``lambda``, ``t``); a dataclass field declared with ``param(...)``;
- per model: one value per expert (``weight``, ``density``); a tuple field declared with ``per_model(...)``,
  ordered like ``experts``.
Each declaration carries the parameter's rules: its type (bool, int, float or str, from the field's annotation;
``| None`` lets None through), ``within=`` an interval for numbers, ``choices=`` a fixed set of values. A rule that
ties several parameters together is a ``check(self)`` method of the Params class, raising ConfigError.

``MethodSpec.make_params`` is the one way from YAML-named values to a Params object: the plan (per tensor, after
filters and gradients), ``merge_state_dicts`` and the tests all build parameters with it, so every rule is checked
before any weight is read. Method functions trust the Params they get and check only their tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from torch import Tensor

from mergesmith.errors import ConfigError
from mergesmith.methods._protocol import (
    Merge,
    MergeOutput,
    Rng,
    Statistics,
    Streaming,
    merge_in_blocks,
)

MISSING: Any = dataclasses.MISSING

BasePolicy = Literal["required", "optional", "unused"]


# ---------------------------------------------------------------------------------------------------------------
# Declaring parameters


@dataclass(frozen=True)
class Interval:
    """The numbers a parameter may take, from ``low`` to ``high``, each end open or closed."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low or self.low == -math.inf else value >= self.low
        below = value < self.high if self.open_high or self.high == math.inf else value <= self.high
        return above and below

    def __str__(self) -> str:
        left = "(" if self.open_low or self.low == -math.inf else "["
        right = ")" if self.open_high or self.high == math.inf else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Interval:
    """[low, high], with either end open: ``between(0, 1, open_low=True)`` is (0, 1]."""
    return Interval(low, high, open_low, open_high)


# An iterative method's steps: more than this is a typo rather than a setting (it would run for days per tensor).
MAX_STEPS = 100_000


def at_least(low: float) -> Interval:
    """[low, inf)."""
    return Interval(low)


def above(low: float) -> Interval:
    """(low, inf)."""
    return Interval(low, open_low=True)


def per_model(
    default: Any = MISSING, *, doc: str = "", within: Interval | None = None, choices: tuple[Any, ...] | None = None
) -> Any:
    """A per-model parameter: the dataclass holds a tuple with one value per expert.

    ``default`` is the value for one model when the config gives none (MISSING makes the parameter required).
    """
    meta = {"per_model": True, "default": default, "doc": doc, "within": within, "choices": choices}
    return field(default=(), metadata=meta)


def param(
    default: Any = MISSING,
    *,
    doc: str = "",
    alias: str | None = None,
    within: Interval | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A global parameter. ``alias`` is its YAML name when that is not a Python identifier (``lambda``)."""
    meta = {"per_model": False, "doc": doc, "alias": alias, "within": within, "choices": choices}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def tensor_fact(kind: Literal["depth"], *, doc: str = "") -> Any:
    """A fact about the tensor being merged, filled in by the engine (and ``merge_state_dicts``), never by the YAML.

    ``"depth"``: the tensor's relative depth in [0, 1] (``engine.layers.relative_depth``): 0 for embeddings and other
    tensors before the layer stack, l / (L - 1) for layer l of L, 1 for the final norm, the head and other tensors
    after the stack. ``None`` when the merge is called directly without it.
    """
    return field(default=None, metadata={"tensor_fact": kind, "doc": doc})


def tensor_facts(params_cls: type) -> dict[str, str]:
    """The Params fields the engine fills in: field name -> kind of fact (see ``tensor_fact``)."""
    return {f.name: f.metadata["tensor_fact"] for f in dataclasses.fields(params_cls) if "tensor_fact" in f.metadata}


# ---------------------------------------------------------------------------------------------------------------
# One parameter: its declaration, and a value checked against it


@dataclass(frozen=True)
class ParamInfo:
    name: str  # the YAML name
    field_name: str  # the dataclass field
    per_model: bool
    default: Any  # MISSING when required
    kind: type  # bool, int, float or str: the type of one value
    optional: bool  # None is a value (``float | None``)
    doc: str
    within: Interval | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def rule(self) -> str:
        """The declared rule in words ("in (0, 1]", "one of sum, tensor_means", "an integer"), or ""."""
        parts = []
        if self.kind is int:
            parts.append("an integer")
        if self.within is not None:
            parts.append(f"in {self.within}")
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        return " ".join(parts)

    def coerce(self, value: Any, where: str) -> Any:
        """The value as the parameter's type, checked against its rules; a ConfigError ``{where}: {name} must be
        ..., got {value}`` otherwise."""
        if value is None and self.optional:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                self._refuse(where, "true or false", _short(value))
        elif self.kind in (int, float):
            value = self._finite_number(value, where)
            if self.kind is int:
                if not isinstance(value, numbers.Integral) and float(value) != int(value):
                    self._refuse(where, "an integer", _short(value))
                value = int(value)
            else:
                value = float(value)
            if self.within is not None and value not in self.within:
                self._refuse(where, f"in {self.within}", _short(value) if isinstance(value, int) else f"{value:g}")
        elif self.kind is str and not isinstance(value, str):
            self._refuse(where, "a string", _short(value))
        if self.choices is not None and value not in self.choices:
            self._refuse(where, f"one of {', '.join(map(str, self.choices))}", _short(value))
        return value

    def _finite_number(self, value: Any, where: str) -> int | float:
        if isinstance(value, str):
            try:
                value = float(value)  # PyYAML reads 1e-3 as a string
            except ValueError:
                self._refuse(where, "a number", _short(value))
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self._refuse(where, "a number", _short(value))
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            self._refuse(where, "a finite number", _short(value))
        return value  # type: ignore[return-value]

    def _refuse(self, where: str, expected: str, shown: str) -> typing.NoReturn:
        raise ConfigError(f"{where}: {self.name} must be {expected}, got {shown}")


def _short(value: Any) -> str:
    """A value as a message shows it: huge integers by their size, long texts cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _value_type(hint: Any) -> tuple[type, bool]:
    """(kind of one value, None allowed) from a field's type hint; a per-model field is ``tuple[X, ...]``."""
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    union = typing.get_origin(hint) in (Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    kinds = [m for m in members if m is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"a parameter's values must be bool, int, float or str (optionally | None), not {hint!r}")
    return kinds[0], len(kinds) != len(members)


@functools.cache
def _declared(params_cls: type) -> tuple[ParamInfo, ...]:
    hints = typing.get_type_hints(params_cls)
    infos = []
    for f in dataclasses.fields(params_cls):
        meta = f.metadata
        if "tensor_fact" in meta:
            continue
        if meta.get("per_model"):
            default = meta.get("default", MISSING)
        else:
            default = f.default
        kind, optional = _value_type(hints[f.name])
        infos.append(
            ParamInfo(
                meta.get("alias") or f.name,
                f.name,
                bool(meta.get("per_model")),
                default,
                kind,
                optional,
                meta.get("doc", ""),
                meta.get("within"),
                meta.get("choices"),
            )
        )
    return tuple(infos)


def param_infos(params_cls: type) -> dict[str, ParamInfo]:
    """The parameters of a method's Params dataclass, keyed by their YAML name (tensor facts are not parameters)."""
    return {info.name: info for info in _declared(params_cls)}


# ---------------------------------------------------------------------------------------------------------------
# From YAML-named values to a Params object


def make_params(
    params_cls: type,
    method: str,
    n_models: int,
    values: Mapping[str, Any],
    *,
    facts: Mapping[str, Any] | None = None,
    where: str | None = None,
    models: Sequence[str] | None = None,
) -> Any:
    """``params_cls`` from YAML-named ``values``: every declared rule checked, errors one-line ConfigErrors.

    A per-model parameter takes one value for every model or a list of ``n_models`` values (an entry MISSING takes
    the default); a missing parameter takes its default. ``facts`` fills the tensor facts (by field name). ``where``
    starts every message (default: the method's name); ``models`` names the models in per-model messages.
    """
    where = where or method
    infos = param_infos(params_cls)
    unknown = sorted(set(values) - set(infos))
    if unknown:
        allowed = ", ".join(sorted(infos)) or "none"
        raise ConfigError(f"{where}: unknown parameter {unknown[0]!r} for {method}; allowed: {allowed}")
    fields: dict[str, Any] = {}
    for name, info in infos.items():
        given = values.get(name, MISSING)
        if info.per_model:
            fields[info.field_name] = _per_model_values(info, given, n_models, where, models)
        else:
            fields[info.field_name] = _value(info, given, where)
    unknown_facts = set(facts or {}) - set(tensor_facts(params_cls))
    if unknown_facts:
        raise TypeError(f"{params_cls.__qualname__} has no tensor fact {sorted(unknown_facts)[0]!r}")
    params = params_cls(**fields, **(facts or {}))
    check = getattr(params, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return params


def _value(info: ParamInfo, given: Any, where: str) -> Any:
    if given is MISSING:
        if info.required:
            scope = ", one value per model (or one for all)" if info.per_model else ""
            raise ConfigError(f"{where}: missing required parameter {info.name!r}{scope}")
        return info.default
    return info.coerce(given, where)


def _per_model_values(
    info: ParamInfo, given: Any, n_models: int, where: str, models: Sequence[str] | None
) -> tuple[Any, ...]:
    if not isinstance(given, (list, tuple)):
        return (_value(info, given, where),) * n_models  # one value (or the default) for every model
    if len(given) != n_models:
        raise ConfigError(
            f"{where}: {info.name} has {len(given)} values for {n_models} models; give one per model, "
            "or one value for all"
        )
    labels = list(models) if models is not None else [f"model {i}" for i in range(n_models)]
    return tuple(_value(info, value, f"{where}: {label}") for value, label in zip(given, labels))


def with_equal_weights(params_cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with a required per-model ``weight`` set to 1.0 when it is not given: every expert counts the same
    (what the bench and the adapt anchors merge with when the user names only the method)."""
    info = param_infos(params_cls).get("weight")
    filled = dict(values)
    if info is not None and info.per_model and info.required and "weight" not in filled:
        filled["weight"] = 1.0
    return filled


def check_model_count(method: str, params: object, n_experts: int) -> None:
    """Every per-model parameter holds one value per expert (``make_params`` builds them so)."""
    params_cls: type = type(params)
    for info in _declared(params_cls):
        if info.per_model and len(getattr(params, info.field_name)) != n_experts:
            count = len(getattr(params, info.field_name))
            raise ValueError(
                f"{method}: parameter {info.name!r} has {count} values for {n_experts} experts; build "
                "the parameters with SPEC.make_params"
            )


# ---------------------------------------------------------------------------------------------------------------
# The method


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type
    paper: str  # citation: authors, year, title, arXiv id
    base: BasePolicy  # whether the method needs the base model's tensor
    description: str = ""
    min_models: int = 1  # experts, not counting the base
    max_models: int | None = None
    randomized: bool = False  # uses the rng (DARE, DELLA); tested by distribution, not by golden values
    # Order of experts does not change the result (up to float rounding) as the paper defines the method.
    order_invariant: bool = True
    # For methods defined on 2-D weight matrices (TSV-M, Iso-C, CART): how the paper merges every other tensor
    # (biases, norms). The plan says so once per merge, not once per tensor.
    non_matrix: str = ""
    # How the tensor is merged: the module's whole-tensor function, the block protocol, or both (``_protocol``).
    # Without ``whole_tensor``, a whole tensor is merged by the block protocol over its row blocks.
    whole_tensor: Merge | None = None
    streaming: Streaming | None = None
    # Per-model statistics read beside the weights (fisher_combine, regmean_combine).
    statistics: Statistics | None = None
    # For methods that keep per-task parts instead of one merged model (EMR, TALL masks): the output's kind
    # ("emr", "tall_masks"). Their merge returns ``(tensor, methods._per_task.PerTaskParts)``; the engine writes
    # the tensor as the model and the parts beside it (engine/side_outputs.py). Empty for plain methods.
    side_outputs: str = ""

    def __post_init__(self) -> None:
        if self.whole_tensor is None and self.streaming is None:
            raise TypeError(f"{self.name}: give whole_tensor, streaming, or both")
        if self.statistics is not None and self.statistics.merge is None and self.streaming is None:
            raise TypeError(f"{self.name}: row-aligned statistics are streamed: give streaming too")

    def make_params(
        self,
        n_models: int,
        values: Mapping[str, Any],
        *,
        facts: Mapping[str, Any] | None = None,
        where: str | None = None,
        models: Sequence[str] | None = None,
    ) -> Any:
        """This method's Params from YAML-named values, every rule checked (``make_params``)."""
        return make_params(self.params, self.name, n_models, values, facts=facts, where=where, models=models)

    def merge(
        self,
        base: Tensor | None,
        experts: Sequence[Tensor],
        params: Any,
        rng: Rng | None = None,
        *,
        statistics: Sequence[Tensor] | None = None,
    ) -> MergeOutput:
        """Merge one whole tensor; ``statistics`` (one per expert) for methods that read them."""
        check_model_count(self.name, params, len(experts))
        if statistics is not None:
            return self._merge_with_statistics(base, experts, params, rng, statistics)
        if self.whole_tensor is not None:
            return self.whole_tensor(base, experts, params, rng)
        streaming = self.streaming
        assert streaming is not None

        def merge_one(b: Tensor | None, e: list[Tensor], s: list[Tensor], ctx: Any, block: int) -> Tensor:
            return streaming.merge_block(b, e, params, ctx, rng, block)

        return merge_in_blocks(
            self.name, base, experts, (), lambda blocks: streaming.context(blocks, params, rng), merge_one
        )

    def _merge_with_statistics(
        self, base: Tensor | None, experts: Sequence[Tensor], params: Any, rng: Rng | None, statistics: Sequence[Tensor]
    ) -> Tensor:
        if self.statistics is None:
            raise ValueError(f"{self.name} reads no statistics")
        if len(statistics) != len(experts):
            raise ValueError(f"{self.name}: {len(statistics)} statistics for {len(experts)} experts; give one each")
        if self.statistics.merge is not None:
            return self.statistics.merge(base, experts, params, rng, statistics=statistics)
        merge_block, streaming = self.statistics.merge_block, self.streaming
        assert merge_block is not None and streaming is not None

        def merge_one(b: Tensor | None, e: list[Tensor], s: list[Tensor], ctx: Any, block: int) -> Tensor:
            return merge_block(b, e, params, ctx, rng, block, statistics=s)

        return merge_in_blocks(
            self.name, base, experts, statistics, lambda blocks: streaming.context(blocks, params, rng), merge_one
        )

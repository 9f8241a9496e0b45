"""What a merge method declares about itself: its parameters, its input contract and its paper.

Every method module exposes a frozen ``Params`` dataclass, a pure function
``merge(base, experts, params, rng) -> Tensor`` and a ``SPEC = MethodSpec(...)``. A module that holds two variants
of one method (``dare``: dare_linear and dare_ties; ``breadcrumbs``; ``della``) exposes a Params dataclass per variant
and ``SPECS = (...)`` instead; each spec carries its ``merge`` and ``params``.
The catalogue in ``methods/__init__.py`` is a plain dict of those specs.

Parameters come in two scopes, as in mergekit's YAML:
- global: one value for the tensor (``normalize``, ``lambda``, ``t``); a plain dataclass field;
- per model: one value per expert (``weight``, ``density``); a tuple field declared with ``per_model(...)``,
  ordered like ``experts``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

MISSING = dataclasses.MISSING

BasePolicy = Literal["required", "optional", "unused"]


def per_model(default: Any = MISSING, *, doc: str = "") -> Any:
    """A per-model parameter: the dataclass holds a tuple with one value per expert.

    ``default`` is the value for one model when the config gives none (MISSING makes the parameter required).
    """
    return field(default=(), metadata={"per_model": True, "default": default, "doc": doc})


def param(default: Any = MISSING, *, doc: str = "", alias: str | None = None) -> Any:
    """A global parameter. ``alias`` is its YAML name when that is not a Python identifier (``lambda``)."""
    meta = {"per_model": False, "doc": doc, "alias": alias}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    name: str  # the YAML name
    field_name: str  # the dataclass field
    per_model: bool
    default: Any  # MISSING when required
    type: Any
    doc: str

    @property
    def required(self) -> bool:
        return self.default is MISSING


def tensor_fact(kind: Literal["depth", "statistics"], *, doc: str = "") -> Any:
    """A fact about the tensor being merged, filled in by the engine (and ``merge_state_dicts``), never by the YAML.

    ``"depth"``: the tensor's relative depth in [0, 1] (``engine.layers.relative_depth``): 0 for embeddings and other
    tensors before the layer stack, l / (L - 1) for layer l of L, 1 for the final norm, the head and other tensors
    after the stack. ``None`` when the merge is called directly without it.
    ``"statistics"``: True when the engine appended each model's statistics tensor (see ``MethodSpec.statistics``)
    to ``experts``, after the models' tensors; False for tensors without statistics.
    """
    return field(default=None, metadata={"tensor_fact": kind, "doc": doc})


def tensor_facts(params_cls: type) -> dict[str, str]:
    """The Params fields the engine fills in: field name -> kind of fact (see ``tensor_fact``)."""
    return {f.name: f.metadata["tensor_fact"] for f in dataclasses.fields(params_cls) if "tensor_fact" in f.metadata}


def param_infos(params_cls: type) -> dict[str, ParamInfo]:
    """The parameters of a method's Params dataclass, keyed by their YAML name (tensor facts are not parameters)."""
    infos: dict[str, ParamInfo] = {}
    for f in dataclasses.fields(params_cls):
        meta = f.metadata
        if "tensor_fact" in meta:
            continue
        yaml_name = meta.get("alias") or f.name
        if meta.get("per_model"):
            default = meta.get("default", MISSING)
        else:
            default = f.default if f.default is not MISSING else MISSING
        infos[yaml_name] = ParamInfo(yaml_name, f.name, bool(meta.get("per_model")), default, f.type, meta.get("doc", ""))
    return infos


@dataclass(frozen=True)
class MethodSpec:
    name: str
    merge: Callable[..., Any]
    params: type
    paper: str  # citation: authors, year, title, arXiv id
    base: BasePolicy  # whether the method needs the base model's tensor
    min_models: int = 1  # experts, not counting the base
    max_models: int | None = None
    randomized: bool = False  # uses the rng (DARE, DELLA); tested by distribution, not by golden values
    # Order of experts does not change the result (up to float rounding) as the paper defines the method.
    order_invariant: bool = True
    # Optional streaming protocol for methods whose output at a position depends only on the inputs at that
    # position plus per-tensor scalars: ``context(blocks, params, rng)`` then ``merge_block(...)`` per row block.
    context: Callable[..., Any] | None = None
    merge_block: Callable[..., Any] | None = None
    # ``merge_block`` walks ``experts`` once, in order, holding one at a time (sum-like methods): the engine then
    # reads each expert's block only when the method reaches it, so memory does not grow with the number of experts.
    one_expert_at_a_time: bool = False
    description: str = ""
    # For methods defined on 2-D weight matrices (TSV-M, Iso-C, CART): how the paper merges every other tensor
    # (biases, norms). The plan says so once per merge, not once per tensor.
    non_matrix: str = ""
    # For methods that combine weights with per-model statistics (fisher_combine, regmean_combine): maps a tensor's
    # shape (and its resolved Params) to the shape of its statistic (None: the tensor has none). Each model entry of the merge config then
    # names its statistics file (``statistics:``); the plan appends the statistics to ``experts``.
    statistics: Callable[[tuple[int, ...], Any], tuple[int, ...] | None] | None = None
    # The statistics are per parameter, shaped like the tensor (Fisher): row blocks of the weights and of their
    # statistics line up, so ``merge_block`` streams tensors with statistics too. Otherwise (RegMean's [in, in]
    # Grams) a tensor with statistics is merged whole and only the tensors without them are streamed.
    statistics_by_row: bool = False
    # For methods that keep per-task parts instead of one merged model (EMR, TALL masks): the output's kind
    # ("emr", "tall_masks"). Their ``merge`` returns ``(tensor, methods._per_task.PerTaskParts)``; the engine writes
    # the tensor as the model and the parts beside it (engine/side_outputs.py). Empty for plain methods.
    side_outputs: str = ""

"""The merged model a data-driven add-on (Surgery, SurgeryV2) sits on: any tensor-wise mergesmith method, or any adapt
method whose result is one set of weights (``WEIGHTS_METHODS``, e.g. AdaMerging).

Memory: experts are never all materialised. A tensor-wise method sees each expert as a lazy view
``theta_t[name] = theta_0[name] + tau_t[name]`` built one tensor at a time from the problem's base and its one copy
of the task vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mergesmith.adapt import adamerging, atlas, bmm, fisher, regmean
from mergesmith.adapt._spec import AdaptSpec
from mergesmith.errors import MergesmithError

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem

# The adapt methods whose result is one set of merged weights (kind "weights"), in catalogue order; the rest of the
# catalogue (``mergesmith.adapt.ADAPT_METHODS``) adds modules or routers of its own.
WEIGHTS_METHODS: dict[str, AdaptSpec] = {
    spec.name: spec
    for spec in (
        fisher.SPEC,
        regmean.SPEC,
        regmean.SPEC_PLUSPLUS,
        bmm.SPEC,
        bmm.SPEC_DATAFREE,
        *adamerging.SPECS,
        atlas.SPEC,
    )
}


class _ExpertView(Mapping):
    """Expert t's floating tensors, computed on access as base + task vector (never held as a whole)."""

    def __init__(self, base: Mapping[str, Tensor], vector: Mapping[str, Tensor]):
        self._base = base
        self._vector = vector

    def __getitem__(self, name: str) -> Tensor:
        return self._base[name] + self._vector[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


def anchor_merge(
    problem: AdaptProblem, method: str, params: Mapping[str, Any], seed: int
) -> tuple[dict[str, Tensor], dict]:
    """``(merged floating tensors, info)`` for ``method`` with ``params`` on the problem's base and experts."""
    from mergesmith.methods import METHODS

    if method in WEIGHTS_METHODS:
        from mergesmith.adapt._spec import params_dict, parse_params

        spec = WEIGHTS_METHODS[method]
        chosen = parse_params(spec, dict(params))
        result = spec.run(problem, chosen, seed)
        if result.kind != "weights":
            raise MergesmithError(
                f"merge_method {method!r} gives a {result.kind!r} model, not one set of weights; give a method that "
                "outputs plain merged weights (task_arithmetic, ties, adamerging_layerwise, ...)"
            )
        base = problem.base_state()
        return {k: result.merged[k].float() for k in base}, {
            "method": method,
            "params": params_dict(chosen),
            "info": result.info,
        }
    if method not in METHODS:
        known = sorted(set(METHODS) | set(WEIGHTS_METHODS))
        raise MergesmithError(
            f"unknown merge_method {method!r} (the merge under the modules gives one set of weights); "
            f"known: {', '.join(known)}"
        )
    from mergesmith.api import merge_state_dicts
    from mergesmith.methods._spec import with_equal_weights

    method_spec = METHODS[method]
    values = with_equal_weights(method_spec.params, params)
    base = problem.base_state()
    vectors = problem.task_vectors()
    experts = [_ExpertView(base, vectors[name]) for name in problem.expert_dirs]
    merged = merge_state_dicts(base if method_spec.base != "unused" else None, experts, method, seed=seed, **values)
    return {k: v.float() for k, v in merged.items()}, {"method": method, "params": values}


__all__ = ["WEIGHTS_METHODS", "anchor_merge"]

"""The engine's per-tensor steps on state dicts in memory: what ``merge_state_dicts`` and
``merge_state_dicts_per_task`` share with a merge of checkpoints.

Each floating tensor is merged in fp32 (fp64 stays fp64) with the Params the plan would give it (``make_params``,
with the tensor's facts) and the same per-tensor random stream, so the in-memory and on-disk merges give the same
bytes. Parameters are checked before any tensor is merged; a method failing on a tensor is a MethodFailed naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from mergesmith.engine.execute import failures_named
from mergesmith.engine.layers import layer_counts
from mergesmith.engine.plan import tensor_fact_values
from mergesmith.engine.rng import TensorRng
from mergesmith.errors import MergesmithError
from mergesmith.methods._protocol import MergeOutput
from mergesmith.methods._spec import MethodSpec

StateDict = Mapping[str, torch.Tensor]


def merged_tensors(
    spec: MethodSpec,
    base: StateDict | None,
    experts: Sequence[StateDict],
    params: Mapping[str, Any],
    seed: int,
    reference: StateDict,
) -> Iterator[tuple[str, torch.Tensor, MergeOutput | None]]:
    """``(name, the reference's tensor, merged result)`` for every tensor of ``reference`` (one of the state dicts),
    in its order; the result is None for a tensor that is not floating point (buffers are not merged)."""
    spec.make_params(len(experts), params)  # every parameter checked before any tensor is merged
    names = list(reference)
    uses_base = base is not None and spec.base != "unused"
    _check_tensors(names, ([base] if uses_base and base is not None else []) + list(experts), uses_base)
    counts = layer_counts(names)  # where each tensor sits, for depth-scaled methods (as the engine's plan)
    for name in names:
        first = reference[name]
        if not first.is_floating_point():
            yield name, first, None
            continue
        compute = torch.float64 if first.dtype == torch.float64 else torch.float32
        base_t = base[name].to(compute) if uses_base and base is not None else None
        tensors = [sd[name].to(compute) for sd in experts]
        params_t = spec.make_params(len(experts), params, facts=tensor_fact_values(spec.params, name, counts))
        with failures_named(spec.name, name):
            merged = spec.merge(base_t, tensors, params_t, TensorRng(seed, name))
        yield name, first, merged


def _check_tensors(names: list[str], state_dicts: list[StateDict], with_base: bool) -> None:
    """Every state dict holds a tensor under every name."""
    for index, sd in enumerate(state_dicts):
        which = "the base" if with_base and index == 0 else f"expert {index - 1 if with_base else index}"
        missing = [n for n in names if n not in sd]
        if missing:
            more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
            raise MergesmithError(f"{which} has no tensor {missing[0]!r}{more}; merge state dicts of one architecture")
        wrong = next((n for n in names if not isinstance(sd[n], torch.Tensor)), None)
        if wrong is not None:
            raise MergesmithError(f"{which}: {wrong!r} is a {type(sd[wrong]).__name__}, not a torch.Tensor")

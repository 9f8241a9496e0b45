"""TIES-Merging: trim, elect sign, disjoint merge.

Yadav, Tam, Choshen, Raffel, Bansal 2023, "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023,
arXiv:2306.01708. Algorithm 1: (1) trim each task vector to its top-k% entries by magnitude; (2) elect the sign of
each entry as the sign of the summed mass sgn(sum_t tau^_t); (3) disjoint merge: average only the entries that agree
with the elected sign; theta = theta_base + lambda * tau_m.

As in mergekit's ``ties``, task vectors are weighted before the sign election and the disjoint mean is weighted:
tau_m = sum_{t in A} w_t tau^_t / sum_{t in A} w_t.

Parameters (mergekit names and defaults):
- ``weight`` (per model, required): w_t.
- ``density`` (per model, default 1.0, in (0, 1]): fraction of entries kept by the trim, k = max(1, int(density *
  numel)) per tensor; entries tied with the k-th largest magnitude are all kept (mergekit keeps exactly k, breaking
  ties by sort order). 1.0 keeps everything.
- ``normalize`` (default true): divide by the agreeing weight sum (the disjoint mean); false gives the disjoint sum.
- ``rescale`` (default false): mergekit's L1 rescaling, multiply the kept entries by ||tau||_1 / ||trimmed tau||_1.
- ``lambda`` (default 1.0): scale of the merged task vector.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect (masks are boolean here).

Streaming: ``context`` finds each expert's exact magnitude threshold in two passes over the row blocks
(``_kth.kth_largest``; one pass when the tensor is a single block), plus one pass for ``rescale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._spec import MethodSpec, param, per_model

NAME = "ties"


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, doc="fraction of largest-magnitude entries kept, in (0, 1]")
    normalize: bool = param(True, doc="divide by the weight of the agreeing experts (disjoint mean)")
    rescale: bool = param(False, doc="L1-rescale the trimmed task vector to the norm of the untrimmed one")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def context(blocks, params: Params, rng) -> list[tv.Band | None]:
    values = tv.checked_values(NAME, params)
    tv.check_density(NAME, values["density"])
    # trim: each expert's magnitude threshold over the whole tensor
    return tv.magnitude_bands(blocks, values["density"], params.rescale)


def merge_block(base: Tensor, experts: Sequence[Tensor], params: Params, ctx, rng, block: int) -> Tensor:
    values = tv.block_values(NAME, params, experts)
    deltas = tv.stacked_task_vectors(tv.require_base(NAME, base), experts)
    for t, band in enumerate(ctx):
        tv.keep_band(deltas[t], band)  # trim
    # elect sign + disjoint merge
    return tv.combine(base, deltas, values["weight"], consensus="sum", normalize=params.normalize, lam=params.lambda_)


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng=None) -> Tensor:
    return tv.merge_in_blocks(context, merge_block, base, experts, params, rng, NAME)


SPEC = MethodSpec(
    name=NAME,
    merge=merge,
    params=Params,
    paper="Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models, arXiv:2306.01708",
    base="required",
    context=context,
    merge_block=merge_block,
    description="trim to top-k magnitude, elect sign by summed mass, disjoint weighted mean",
)

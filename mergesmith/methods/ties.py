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

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Blocks, Rng, Streaming
from mergesmith.methods._spec import MethodSpec, between, param, per_model

NAME = "ties"


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(
        1.0, within=between(0, 1, open_low=True), doc="fraction of largest-magnitude entries kept"
    )
    normalize: bool = param(True, doc="divide by the weight of the agreeing experts (disjoint mean)")
    rescale: bool = param(False, doc="L1-rescale the trimmed task vector to the norm of the untrimmed one")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def context(blocks: Blocks, params: Params, rng: Rng | None) -> list[tv.Band | None]:
    # trim: each expert's magnitude threshold over the whole tensor
    return tv.magnitude_bands(blocks, params.density, params.rescale)


def merge_block(
    base: Tensor | None,
    experts: Sequence[Tensor],
    params: Params,
    ctx: list[tv.Band | None],
    rng: Rng | None,
    block: int,
) -> Tensor:
    base = tv.require_base(NAME, base)
    deltas = tv.stacked_task_vectors(base, experts)
    for t, band in enumerate(ctx):
        tv.keep_band(deltas[t], band)  # trim
    # elect sign + disjoint merge
    return tv.combine(base, deltas, params.weight, consensus="sum", normalize=params.normalize, lam=params.lambda_)


SPEC = MethodSpec(
    name=NAME,
    params=Params,
    paper="Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models, arXiv:2306.01708",
    base="required",
    streaming=Streaming(merge_block, context),
    description="trim to top-k magnitude, elect sign by summed mass, disjoint weighted mean",
)

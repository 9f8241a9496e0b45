"""Linear DELLA: MagPrune (magnitude-ranked random drop and rescale), then a weighted sum of task vectors.

Deep, Bhardwaj, Majumder, Poria 2024, "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", arXiv:2406.11617. Sec. 3: Drop (MagPrune: rank each row's delta parameters by magnitude,
give larger ones a lower drop probability p_i, sample, rescale survivors by 1 / (1 - p_i)), Elect (sign of the summed
mass), Fuse (mean of the agreeing entries); theta = theta_base + lambda * tau_m.

As in mergekit's ``della_linear`` (DELLA's Drop step, then a weighted sum instead of Elect and Fuse): keep
probabilities 1 - p_i rise linearly with the rank of |tau_i| within its row (dim 1; a 1-D tensor is one row) from
density - epsilon (smallest) to density + epsilon (largest), averaging ``density``;
tau_m = sum_t w_t tau^_t, optionally divided by sum_t w_t.

Parameters (mergekit names and defaults):
- ``weight`` (per model, required): w_t.
- ``density`` (per model, default 1.0, in (0, 1]): mean keep probability. 1.0 keeps everything.
- ``epsilon`` (per model, default 0.15, >= 0): half-width of the keep probabilities; density +/- epsilon must lie
  inside (0, 1) when density < 1.
- ``rescale`` (default true): divide each kept entry by its own keep probability 1 - p_i (the paper's MagPrune
  rescaling, unbiased entry by entry). mergekit 0.1.5 instead rescales the whole pruned task vector to the L1 norm of
  the original one; this module follows the paper.
- ``normalize`` (default false): divide by sum_t w_t.
- ``lambda`` (default 1.0): scale of the merged task vector.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect.

Randomness and streaming: ranks are within rows and row blocks never split a row, so each block is merged on its own
(the context only checks parameters). The uniforms of expert t in row block b come from
``rng.generator("della", t, b)``: identical whole or streamed, shared with della, different for each tensor name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._spec import MethodSpec, param, per_model

NAME = "della_linear"
RNG_KEY = "della"


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, doc="mean keep probability, in (0, 1]")
    epsilon: tuple[float, ...] = per_model(0.15, doc="keep probabilities span density +/- epsilon by magnitude rank")
    normalize: bool = param(False, doc="divide the weighted sum by the sum of the weights")
    rescale: bool = param(True, doc="divide each kept entry by its keep probability 1 - p_i")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def context(blocks, params: Params, rng) -> None:
    values = tv.per_model_values(params, NAME)
    tv.check_finite(NAME, "weight", values["weight"])
    tv.check_finite(NAME, "lambda", [params.lambda_])
    tv.check_density(NAME, values["density"])
    tv.check_epsilon(NAME, values["density"], values["epsilon"])
    tv.check_rng(NAME, rng)
    return None


def merge_block(base: Tensor, experts: Sequence[Tensor], params: Params, ctx, rng, block: int) -> Tensor:
    values = tv.per_model_values(params, NAME)
    tv.check_experts(NAME, experts, len(values["weight"]))
    tv.check_rng(NAME, rng)
    deltas = tv.stacked_task_vectors(tv.require_base(NAME, base), experts)
    for t, (density, epsilon) in enumerate(zip(values["density"], values["epsilon"])):
        tv.magprune(deltas[t], density, epsilon, rng.generator(RNG_KEY, t, block), params.rescale)  # drop
    return tv.combine(base, deltas, values["weight"], consensus=None, normalize=params.normalize, lam=params.lambda_)


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng=None) -> Tensor:
    return tv.merge_in_blocks(context, merge_block, base, experts, params, rng, NAME)


SPEC = MethodSpec(
    name=NAME,
    merge=merge,
    params=Params,
    paper="Deep et al. 2024, DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling, "
    "arXiv:2406.11617",
    base="required",
    randomized=True,
    order_invariant=False,  # the random stream of an expert follows its position
    context=context,
    merge_block=merge_block,
    description="magnitude-ranked random drop with per-entry rescale, weighted sum of task vectors",
)

"""DARE-TIES: drop and rescale each task vector at random, then TIES' sign election and disjoint merge.

Yu, Yu, Yu, Huang, Li 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
Lunch", ICML 2024, arXiv:2311.03099. Sec. 3 (DARE): m_t ~ Bernoulli(p); tau~_t = (1 - m_t) * tau_t;
tau^_t = tau~_t / (1 - p). Merged as in mergekit's ``dare_ties`` with TIES' steps 2-3 (Yadav et al. 2023,
arXiv:2306.01708, Algorithm 1): elect sgn(sum_t w_t tau^_t) per entry, then keep only agreeing entries:
theta = theta_base + lambda * sum_{t in A} w_t tau^_t (divided by sum_{t in A} w_t when ``normalize``).

Parameters (mergekit names and defaults):
- ``weight`` (per model, required): w_t.
- ``density`` (per model, default 1.0, in (0, 1]): keep probability 1 - p of each entry. 1.0 keeps everything.
- ``rescale`` (default true): divide the kept entries by ``density`` (the paper's 1 / (1 - p)). This follows the
  paper, not mergekit 0.1.5, which instead rescales the kept task vector to the L1 norm of the original one; both
  keep the expected update, the paper's factor is exactly unbiased entry by entry.
- ``normalize`` (default false, as in mergekit): divide by the weight of the agreeing experts (disjoint mean).
- ``lambda`` (default 1.0): scale of the merged task vector.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect.

Randomness: the mask of expert t in row block b is drawn from ``rng.generator("dare", t, b)``: identical whether the
tensor is merged whole or streamed, shared with dare_linear (same seed, same drops), different for each tensor name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._spec import MethodSpec, param, per_model

NAME = "dare_ties"
RNG_KEY = "dare"


@dataclass(frozen=True)
class Params:
    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, doc="probability of keeping each entry (1 - drop rate), in (0, 1]")
    normalize: bool = param(False, doc="divide by the weight of the agreeing experts (disjoint mean)")
    rescale: bool = param(True, doc="divide kept entries by density, the paper's 1/(1-p)")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def context(blocks, params: Params, rng) -> None:
    values = tv.per_model_values(params, NAME)
    tv.check_finite(NAME, "weight", values["weight"])
    tv.check_finite(NAME, "lambda", [params.lambda_])
    tv.check_density(NAME, values["density"])
    tv.check_rng(NAME, rng)
    return None


def merge_block(base: Tensor, experts: Sequence[Tensor], params: Params, ctx, rng, block: int) -> Tensor:
    values = tv.per_model_values(params, NAME)
    tv.check_experts(NAME, experts, len(values["weight"]))
    tv.check_rng(NAME, rng)
    deltas = tv.stacked_task_vectors(tv.require_base(NAME, base), experts)
    for t, density in enumerate(values["density"]):
        tv.dare_drop(deltas[t], density, rng.generator(RNG_KEY, t, block), params.rescale)  # drop and rescale
    # elect sign + disjoint merge
    return tv.combine(base, deltas, values["weight"], consensus="sum", normalize=params.normalize, lam=params.lambda_)


def merge(base: Tensor | None, experts: Sequence[Tensor], params: Params, rng=None) -> Tensor:
    return tv.merge_in_blocks(context, merge_block, base, experts, params, rng, NAME)


SPEC = MethodSpec(
    name=NAME,
    merge=merge,
    params=Params,
    paper="Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free "
    "Lunch, arXiv:2311.03099",
    base="required",
    randomized=True,
    order_invariant=False,  # the random stream of an expert follows its position
    context=context,
    merge_block=merge_block,
    description="random drop with rescale 1/density, then TIES sign election and disjoint merge",
)

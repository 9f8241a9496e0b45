"""DARE: drop and rescale each task vector at random, then a weighted sum (``dare_linear``) or TIES' sign election and
disjoint merge (``dare_ties``).

Yu, Yu, Yu, Huang, Li 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
Lunch", ICML 2024, arXiv:2311.03099. Sec. 3 (DARE): m_t ~ Bernoulli(p); tau~_t = (1 - m_t) * tau_t;
tau^_t = tau~_t / (1 - p). The two methods drop alike and differ only in how they combine the tau^_t:
- ``dare_linear``, as mergekit's ``dare_linear``: theta = theta_base + lambda * sum_t w_t tau^_t (optionally divided by
  sum_t w_t);
- ``dare_ties``, as mergekit's ``dare_ties``, with TIES' steps 2-3 (Yadav et al. 2023, arXiv:2306.01708,
  Algorithm 1): elect sgn(sum_t w_t tau^_t) per entry, then keep only agreeing entries:
  theta = theta_base + lambda * sum_{t in A} w_t tau^_t (divided by sum_{t in A} w_t when ``normalize``).

Parameters (mergekit names and defaults, the same for both):
- ``weight`` (per model, required): w_t.
- ``density`` (per model, default 1.0, in (0, 1]): keep probability 1 - p of each entry. 1.0 keeps everything.
- ``rescale`` (default true): divide the kept entries by ``density`` (the paper's 1 / (1 - p)). This follows the
  paper, not mergekit 0.1.5, which instead rescales the kept task vector to the L1 norm of the original one; both
  keep the expected update, the paper's factor is exactly unbiased entry by entry.
- ``normalize`` (default false, as in mergekit): ``dare_linear`` divides by sum_t w_t, ``dare_ties`` by the weight of
  the agreeing experts (disjoint mean).
- ``lambda`` (default 1.0): scale of the merged task vector.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect.

Randomness: the mask of expert t in row block b is drawn from ``rng.generator("dare", t, b)``: identical whether the
tensor is merged whole or streamed, shared by dare_linear and dare_ties (same seed, same drops), different for each
tensor name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import between, param, per_model

RNG_KEY = "dare"
PAPER = (
    "Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free "
    "Lunch, arXiv:2311.03099"
)


@dataclass(frozen=True)
class LinearParams:
    """dare_linear: ``normalize`` divides by the sum of the weights."""

    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(
        1.0, within=between(0, 1, open_low=True), doc="probability of keeping each entry (1 - drop rate)"
    )
    normalize: bool = param(False, doc="divide the weighted sum by the sum of the weights")
    rescale: bool = param(True, doc="divide kept entries by density, the paper's 1/(1-p)")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


@dataclass(frozen=True)
class TiesParams:
    """dare_ties: ``normalize`` divides by the weight of the agreeing experts."""

    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(
        1.0, within=between(0, 1, open_low=True), doc="probability of keeping each entry (1 - drop rate)"
    )
    normalize: bool = param(False, doc="divide by the weight of the agreeing experts (disjoint mean)")
    rescale: bool = param(True, doc="divide kept entries by density, the paper's 1/(1-p)")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")


def _merge_block(
    method: str,
    consensus: tv.Consensus | None,
    base: Tensor | None,
    experts: Sequence[Tensor],
    params: LinearParams | TiesParams,
    ctx: None,
    rng: Rng | None,
    block: int,
) -> Tensor:
    rng = tv.require_rng(method, rng)
    base = tv.require_base(method, base)
    deltas = tv.stacked_task_vectors(base, experts)
    for t, density in enumerate(params.density):
        tv.dare_drop(deltas[t], density, rng.generator(RNG_KEY, t, block), params.rescale)  # drop and rescale
    # weighted sum (consensus None), or elect sign + disjoint merge (consensus "sum")
    return tv.combine(base, deltas, params.weight, consensus=consensus, normalize=params.normalize, lam=params.lambda_)


LINEAR_SPEC = tv.variant_spec(
    "dare_linear",
    None,
    _merge_block,
    params=LinearParams,
    paper=PAPER,
    randomized=True,
    order_invariant=False,  # the random stream of an expert follows its position
    description="random drop with rescale 1/density, then weighted sum of task vectors",
)
TIES_SPEC = tv.variant_spec(
    "dare_ties",
    "sum",
    _merge_block,
    params=TiesParams,
    paper=PAPER,
    randomized=True,
    order_invariant=False,  # the random stream of an expert follows its position
    description="random drop with rescale 1/density, then TIES sign election and disjoint merge",
)
SPECS = (LINEAR_SPEC, TIES_SPEC)

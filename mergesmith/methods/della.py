"""DELLA-Merging: MagPrune (magnitude-ranked random drop and rescale), then elect sign and fuse (``della``) or a
weighted sum of task vectors (``della_linear``).

Deep, Bhardwaj, Majumder, Poria 2024, "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", arXiv:2406.11617. Sec. 3: Drop (MagPrune: rank each row's delta parameters by magnitude,
give larger ones a lower drop probability p_i, sample, rescale survivors by 1 / (1 - p_i)), Elect (sign of the summed
mass), Fuse (mean of the agreeing entries); theta = theta_base + lambda * tau_m.

Both methods drop as mergekit's ``della``: keep probabilities 1 - p_i rise linearly with the rank of |tau_i| within
its row (dim 1; a 1-D tensor is one row) from density - epsilon (smallest) to density + epsilon (largest), averaging
``density``. They differ only in how they combine the tau^_t:
- ``della``, as mergekit's ``della``: task vectors are weighted before the election;
  tau_m = sum_{t in A} w_t tau^_t / sum_{t in A} w_t;
- ``della_linear``, as mergekit's ``della_linear`` (DELLA's Drop step, then a weighted sum instead of Elect and Fuse):
  tau_m = sum_t w_t tau^_t, optionally divided by sum_t w_t.

Parameters (mergekit names and defaults):
- ``weight`` (per model, required): w_t.
- ``density`` (per model, default 1.0, in (0, 1]): mean keep probability. 1.0 keeps everything.
- ``epsilon`` (per model, default 0.15, >= 0): half-width of the keep probabilities; density +/- epsilon must lie
  inside (0, 1) when density < 1.
- ``rescale`` (default true): divide each kept entry by its own keep probability 1 - p_i (the paper's MagPrune
  rescaling, unbiased entry by entry). mergekit 0.1.5 instead rescales the whole pruned task vector to the L1 norm of
  the original one; this module follows the paper.
- ``normalize``: ``della`` (default true) divides by the weight of the agreeing experts (disjoint mean);
  ``della_linear`` (default false) divides by sum_t w_t.
- ``lambda`` (default 1.0): scale of the merged task vector.
- ``int8_mask`` (default false): accepted for mergekit compatibility; no effect.

Randomness and streaming: ranks are within rows and row blocks never split a row, so each block is merged on its own
(no context). The uniforms of expert t in row block b come from
``rng.generator("della", t, b)``: identical whole or streamed, shared by della and della_linear, different for each
tensor name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergesmith.errors import ConfigError
from mergesmith.methods import _task_vectors as tv
from mergesmith.methods._protocol import Rng
from mergesmith.methods._spec import between, param, per_model

RNG_KEY = "della"
PAPER = (
    "Deep et al. 2024, DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling, "
    "arXiv:2406.11617"
)


def check_keep_probabilities(params: TiesParams | LinearParams) -> None:
    """density +/- epsilon inside (0, 1) for every model with density < 1 (MagPrune's keep probabilities)."""
    for density, epsilon in zip(params.density, params.epsilon):
        if density < 1.0 and not (0.0 < density - epsilon and density + epsilon < 1.0):
            raise ConfigError(
                f"density +/- epsilon must lie inside (0, 1), got density={density:g}, "
                f"epsilon={epsilon:g}; use epsilon < min(density, 1 - density)"
            )


@dataclass(frozen=True)
class TiesParams:
    """della: ``normalize`` (default true) divides by the weight of the agreeing experts."""

    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, within=between(0, 1, open_low=True), doc="mean keep probability")
    epsilon: tuple[float, ...] = per_model(
        0.15, within=between(0, 1, open_high=True), doc="keep probabilities span density +/- epsilon by magnitude rank"
    )
    normalize: bool = param(True, doc="divide by the weight of the agreeing experts (disjoint mean)")
    rescale: bool = param(True, doc="divide each kept entry by its keep probability 1 - p_i")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")

    check = check_keep_probabilities


@dataclass(frozen=True)
class LinearParams:
    """della_linear: ``normalize`` (default false) divides by the sum of the weights."""

    weight: tuple[float, ...] = per_model(doc="w_t, the coefficient of the model's task vector")
    density: tuple[float, ...] = per_model(1.0, within=between(0, 1, open_low=True), doc="mean keep probability")
    epsilon: tuple[float, ...] = per_model(
        0.15, within=between(0, 1, open_high=True), doc="keep probabilities span density +/- epsilon by magnitude rank"
    )
    normalize: bool = param(False, doc="divide the weighted sum by the sum of the weights")
    rescale: bool = param(True, doc="divide each kept entry by its keep probability 1 - p_i")
    lambda_: float = param(1.0, alias="lambda", doc="scale of the merged task vector")
    int8_mask: bool = param(False, doc="accepted for mergekit compatibility; no effect")

    check = check_keep_probabilities


def _merge_block(
    method: str,
    consensus: tv.Consensus | None,
    base: Tensor | None,
    experts: Sequence[Tensor],
    params: TiesParams | LinearParams,
    ctx: None,
    rng: Rng | None,
    block: int,
) -> Tensor:
    rng = tv.require_rng(method, rng)
    base = tv.require_base(method, base)
    deltas = tv.stacked_task_vectors(base, experts)
    for t, (density, epsilon) in enumerate(zip(params.density, params.epsilon)):
        tv.magprune(deltas[t], density, epsilon, rng.generator(RNG_KEY, t, block), params.rescale)  # drop
    # elect + fuse (consensus "sum"), or a weighted sum (consensus None)
    return tv.combine(base, deltas, params.weight, consensus=consensus, normalize=params.normalize, lam=params.lambda_)


TIES_SPEC = tv.variant_spec(
    "della",
    "sum",
    _merge_block,
    params=TiesParams,
    paper=PAPER,
    randomized=True,
    order_invariant=False,  # the random stream of an expert follows its position
    description="magnitude-ranked random drop with per-entry rescale, TIES sign election and disjoint merge",
)
LINEAR_SPEC = tv.variant_spec(
    "della_linear",
    None,
    _merge_block,
    params=LinearParams,
    paper=PAPER,
    randomized=True,
    order_invariant=False,  # the random stream of an expert follows its position
    description="magnitude-ranked random drop with per-entry rescale, weighted sum of task vectors",
)
SPECS = (TIES_SPEC, LINEAR_SPEC)

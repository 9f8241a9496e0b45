"""Which merge methods the bench runs by default, the small hyper-parameter grid each is tuned over, and which
point of a grid is chosen.

Grids follow the papers' usual ranges (task arithmetic's lambda, TIES' density and lambda, DARE's drop rate). The
point chosen on the validation split is recorded in the results with every point's validation score.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

# Validation averages closer than this are a tie. An average of accuracies is a multiple of 1 / (examples x tasks) up
# to float rounding: 0.77500001 and 0.77499998 are the same count of correct answers summed in another order, and a
# real difference (one example of a few thousand) is above 1e-5. A tie goes to the earliest point of the grid, whose
# values are listed smallest (simplest) first.
TIE_TOLERANCE = 1e-6

# method -> {parameter: [values]}; per-model parameters (weight, density, ...) apply to every expert.
GRIDS: dict[str, dict[str, list]] = {
    "linear": {"weight": [1.0]},
    "task_arithmetic": {"weight": [1.0], "lambda": [0.2, 0.3, 0.4, 0.5, 0.7]},
    "ties": {"weight": [1.0], "density": [0.2, 0.5], "lambda": [1.0, 1.5, 2.0]},
    "dare_ties": {"weight": [1.0], "density": [0.3, 0.6], "lambda": [0.7, 1.0]},
    "breadcrumbs_ties": {"weight": [1.0], "density": [0.5, 0.9], "gamma": [0.01], "lambda": [0.7, 1.0]},
    "della": {"weight": [1.0], "density": [0.3, 0.6], "epsilon": [0.1], "lambda": [0.7, 1.0]},
    "magmax": {"lambda": [0.5, 1.0]},
    "sce": {"select_topk": [0.3, 1.0]},
    "model_stock": {},
    "karcher": {},
    "multislerp": {"weight": [1.0]},
    # spectral data-free methods: two points each around the papers' defaults (the papers tune alpha /
    # lambda / beta over 0.1-2). On the zero-shot zoo, task arithmetic chooses lambda 0.5 for eight experts, TIES
    # lambda 1.5 and TSV-M / Iso-C the top of a 0.3-0.5 grid: the experts' updates through a fixed head are small,
    # so the papers' own values (TSV-M alpha 1.0, Iso-C alpha about 1.3 for eight tasks) are in the grid
    "pcb": {"density": [0.1, 0.2], "lambda": [1.0]},
    "tsv_m": {"alpha": [0.5, 1.0]},
    "iso_c": {"alpha": [1.0, 1.5]},
    "iso_cts": {"alpha": [0.3, 0.5], "common_space_fraction": [0.8]},
    "cart": {"rank_ratio": [0.08, 0.16], "lambda": [1.0]},
    "lines": {"beta": [0.2, 0.5]},
    # data-free optimisation and mask methods: WUDI and EMR have no coefficient to tune (the papers'
    # defaults); DOGE-TA at the paper's eta; consensus over alpha as task arithmetic; TALL masks over lambda_t
    # (one value for every task here; the paper picks one per task) and the scale of tau_MTL
    "wudi": {},
    "doge_ta": {"lambda": [0.07]},
    "consensus": {"weight": [1.0], "k": [2], "tall_mask_lambda": [0.4], "lambda": [0.2, 0.3, 0.5, 1.0]},
    "tall_masks": {"weight": [0.3, 1.0], "tall_mask_lambda": [0.2, 0.4, 0.6]},
    "emr": {},
}
# The per-layer optimisations (WUDI: 300 Adam steps per matrix, DOGE-TA: 400) take minutes per merge on a laptop
# CPU, and the bench merges twice (grid, then the engine): they run when asked for with --methods.
SLOW_METHODS = ("wudi", "doge_ta")
# ``--methods NAME`` of a set runs all its methods:
# - default: about five minutes on 2 cores with the zoo cached: simple averaging, task arithmetic and TIES (the
#   papers' data-free baselines) and two spectral methods (TSV-M, Iso-C), the recent state of the data-free art;
# - data-free: every tensor-wise method with a grid (about 20 minutes);
# - papers: the rows of the papers' eight-task comparison (simple averaging, task arithmetic, TIES, Fisher, RegMean,
#   layer-wise AdaMerging, AdaMerging + Surgery / SurgeryV2, WEMoE); the data-driven ones take minutes each.
METHOD_SETS: dict[str, tuple[str, ...]] = {
    "default": ("linear", "task_arithmetic", "ties", "tsv_m", "iso_c"),
    "data-free": tuple(m for m in GRIDS if m not in SLOW_METHODS),
    "papers": (
        "linear",
        "task_arithmetic",
        "ties",
        "fisher",
        "regmean",
        "adamerging_layerwise",
        "surgery",
        "surgery_v2",
        "wemoe",
    ),
}
DEFAULT_METHODS = METHOD_SETS["default"]
MINI_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "model_stock")
# Grid points are scored on at most this many validation examples per task (the first ones of each split, which is
# a seeded shuffle): a grid point's choice needs far fewer examples than a reported score, and it is the bench's
# most repeated evaluation. Data-driven methods read the whole validation split.
GRID_EXAMPLES_PER_TASK = 150


def expand_method_sets(names: list[str]) -> list[str]:
    """Method names with every set name (``METHOD_SETS``) replaced by its methods, each method once, in order."""
    expanded: list[str] = []
    for name in names:
        for method in METHOD_SETS.get(name, (name,)):
            if method not in expanded:
                expanded.append(method)
    return expanded


def grid_points(method: str) -> list[dict]:
    """Every combination of the method's grid (one empty point for methods without parameters)."""
    grid = GRIDS.get(method, {})
    if not grid:
        return [{}]
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def choose_point(scores: Sequence[float | None]) -> int:
    """Index of the chosen grid point: the first whose validation score is within ``TIE_TOLERANCE`` of the best
    (a missing or NaN score is never chosen unless every score is)."""
    valid = [-math.inf if s is None or math.isnan(s) else float(s) for s in scores]
    if not valid:
        raise ValueError("no grid point was scored")
    best = max(valid)
    return next(i for i, s in enumerate(valid) if s >= best - TIE_TOLERANCE)

"""Data-driven merging: methods that read task data (unlabeled test inputs or a small labeled validation split)
besides the weights: Fisher, RegMean/RegMean++, BMM, AdaMerging, aTLAS, Surgery, WEMoE, Twin-Merging.

Each method module exposes ``SPEC: AdaptSpec``; ``ADAPT_METHODS`` is the plain catalogue (no import-time
registration): the methods whose result is one set of weights (``base_merge.WEIGHTS_METHODS``, which Surgery can sit
on), then those that add modules or routers. A method reads the task data through an ``AdaptProblem``
(``mergesmith.adapt.problem``; the bench builds one from a pool: ``mergesmith.bench.adapt_problem``);
``save_result`` writes a result.
"""

from __future__ import annotations

from mergesmith.adapt import surgery, twin, wemoe
from mergesmith.adapt._spec import AdaptSpec
from mergesmith.adapt.base_merge import WEIGHTS_METHODS
from mergesmith.errors import MergesmithError

ADAPT_METHODS: dict[str, AdaptSpec] = {
    **WEIGHTS_METHODS,
    **{spec.name: spec for spec in (twin.SPEC, surgery.SPEC, surgery.SPEC_V2, wemoe.SPEC, wemoe.SPEC_E)},
}


def get_adapt_method(name: str) -> AdaptSpec:
    try:
        return ADAPT_METHODS[name]
    except KeyError:
        raise MergesmithError(f"unknown adapt method {name!r}; known: {', '.join(sorted(ADAPT_METHODS))}") from None


__all__ = ["ADAPT_METHODS", "AdaptSpec", "get_adapt_method"]

"""Data-driven merging (issue 4): methods that read task data (unlabeled test inputs or a small labeled validation
split) besides the weights: Fisher, RegMean/RegMean++, BMM, AdaMerging, aTLAS, Surgery, WEMoE, Twin-Merging.

Each method module exposes ``SPEC: AdaptSpec``; ``ADAPT_METHODS`` is the plain catalogue (no import-time
registration). ``problem_from_pool`` turns a bench ``Pool`` into an ``AdaptProblem``; ``save_result`` writes a result.
"""

from __future__ import annotations

from mergesmith.adapt import bmm, fisher, regmean
from mergesmith.adapt._spec import AdaptSpec
from mergesmith.adapt import surgery, wemoe
from mergesmith.adapt import adamerging, atlas, twin
from mergesmith.errors import MergesmithError

ADAPT_METHODS: dict[str, AdaptSpec] = {
    spec.name: spec
    for spec in (
        # one line per method (each helper adds its modules' specs and imports them above)
        fisher.SPEC,
        regmean.SPEC,
        regmean.SPEC_PLUSPLUS,
        bmm.SPEC,
        bmm.SPEC_DATAFREE,
        *adamerging.SPECS,
        atlas.SPEC,
        twin.SPEC,
        surgery.SPEC,
        surgery.SPEC_V2,
        wemoe.SPEC,
        wemoe.SPEC_E,
    )
}


def get_adapt_method(name: str) -> AdaptSpec:
    try:
        return ADAPT_METHODS[name]
    except KeyError:
        raise MergesmithError(f"unknown adapt method {name!r}; known: {', '.join(sorted(ADAPT_METHODS))}") from None


__all__ = ["ADAPT_METHODS", "AdaptSpec", "get_adapt_method"]

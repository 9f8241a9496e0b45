"""The catalogue of tensor-wise merge methods: a plain dict from name to MethodSpec.

No registration by import side effect: adding a method means importing its module here and listing its SPEC (or,
for a module holding two variants of one method, each of its SPECS). A test checks that every spec of every public
module in this package is listed.
"""

from __future__ import annotations

from mergesmith.methods import (
    breadcrumbs,
    dare,
    della,
    karcher,
    linear,
    magmax,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    sce,
    slerp,
    task_arithmetic,
    ties,
)
from mergesmith.methods import cart, iso, lines, pcb, tsv
from mergesmith.methods import fisher_combine, regmean_combine
from mergesmith.methods import consensus, doge_ta, emr, wudi
from mergesmith.methods._spec import MethodSpec

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        linear.SPEC,
        slerp.SPEC,
        nuslerp.SPEC,
        multislerp.SPEC,
        karcher.SPEC,
        model_stock.SPEC,
        nearswap.SPEC,
        passthrough.SPEC,
        task_arithmetic.SPEC,
        ties.SPEC,
        dare.LINEAR_SPEC,
        dare.TIES_SPEC,
        breadcrumbs.LINEAR_SPEC,
        breadcrumbs.TIES_SPEC,
        della.TIES_SPEC,
        della.LINEAR_SPEC,
        sce.SPEC,
        magmax.SPEC,
        pcb.SPEC,
        tsv.SPEC,
        iso.C_SPEC,
        iso.CTS_SPEC,
        cart.SPEC,
        lines.SPEC,
        fisher_combine.SPEC,
        regmean_combine.SPEC,
        wudi.SPEC,
        doge_ta.SPEC,
        consensus.CONSENSUS_SPEC,
        consensus.TALL_MASKS_SPEC,
        emr.SPEC,
    )
}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise KeyError(f"unknown merge method {name!r}; known methods: {known}") from None

"""The catalogue of tensor-wise merge methods: a plain dict from name to MethodSpec.

No registration by import side effect: adding a method means importing its module here and listing its SPEC.
A test checks that every module in this package is listed.
"""

from __future__ import annotations

from mergesmith.methods import (
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    slerp,
)
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
    )
}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise KeyError(f"unknown merge method {name!r}; known methods: {known}") from None

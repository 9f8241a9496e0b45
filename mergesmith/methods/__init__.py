"""The catalogue of tensor-wise merge methods: a plain dict from name to MethodSpec.

Built by a deterministic scan of this package, not by registration at import: every public module (no leading
underscore), in sorted order, contributes its ``SPEC``, or, for a module holding two variants of one method, each of
its ``SPECS``. Adding a method is adding its module. A public module without a spec, or two specs with one name, is
an error here, at import.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from mergesmith.errors import ConfigError
from mergesmith.methods._spec import MethodSpec


def module_specs(module: object) -> tuple[MethodSpec, ...]:
    """The specs a public method module exposes: its SPEC, or its SPECS (two variants of one method)."""
    spec = getattr(module, "SPEC", None)
    specs = tuple(getattr(module, "SPECS", ())) + ((spec,) if spec is not None else ())
    if not specs or not all(isinstance(spec, MethodSpec) for spec in specs):
        raise TypeError(
            f"{getattr(module, '__name__', module)} is a public method module but exposes no SPEC or SPECS "
            "of MethodSpec; give it one, or name it with a leading underscore"
        )
    return specs


def catalogue(package: str, paths: Iterable[str]) -> dict[str, MethodSpec]:
    """Every spec of every public module of ``package`` (found on ``paths``), keyed by method name."""
    found: dict[str, MethodSpec] = {}
    for info in sorted(pkgutil.iter_modules(list(paths)), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        for spec in module_specs(importlib.import_module(f"{package}.{info.name}")):
            if spec.name in found:
                raise TypeError(f"two merge methods are named {spec.name!r} ({package}.{info.name} and another)")
            found[spec.name] = spec
    return found


METHODS: dict[str, MethodSpec] = catalogue(__name__, __path__)


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(f"unknown merge method {name!r}; known methods: {known}") from None

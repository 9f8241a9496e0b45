"""``mergesmith methods``' sections for the data-driven (adapt) and continual methods: each method's summary, paper,
the data it reads and its parameters (pydantic fields: name, type, range or choices, default, description)."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

DATA_READ = {
    "validation": "a small labeled validation split",
    "unlabeled": "unlabeled test inputs (never their labels)",
}


def format_adapt_methods() -> str:
    """The adapt methods (``mergesmith adapt METHOD --pool POOL.yaml OUT``), as text."""
    from mergesmith.adapt import ADAPT_METHODS

    lines = [
        "Data-driven methods (mergesmith adapt METHOD --pool POOL.yaml OUT; --param KEY=VALUE; "
        "bench --methods METHOD:KEY=VALUE):"
    ]
    for name in sorted(ADAPT_METHODS):
        spec = ADAPT_METHODS[name]
        lines.append(f"{name}: {spec.description} [{spec.paper}]")
        reads = " and ".join(DATA_READ[kind] for kind in sorted(spec.needs)) or "no data"
        lines.append(f"  reads: {reads}")
        lines.extend(f"  {line}" for line in field_lines(spec.params))
    return "\n".join(lines)


def format_continual_methods() -> str:
    """The continual methods (``mergesmith continual add MERGED NEW OUT --method METHOD``), as text."""
    from mergesmith.continual import CONTINUAL_METHODS

    lines = ["Continual methods (mergesmith continual add MERGED NEW OUT --method METHOD --param KEY=VALUE):"]
    for spec in CONTINUAL_METHODS.values():
        lines.append(f"{spec.name}: {spec.summary} [{spec.paper}]")
        lines.extend(f"  {line}" for line in field_lines(spec.params))
    return "\n".join(lines)


def field_lines(params_cls: type[BaseModel]) -> list[str]:
    """One line per field of a pydantic params model: ``name (type, default X) - description``."""
    lines = []
    for field_name, info in params_cls.model_fields.items():
        default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
        doc = f" - {info.description}" if info.description else ""
        lines.append(f"{info.alias or field_name} ({describe_type(info.annotation, info.metadata)}, {default}){doc}")
    return lines or ["(no parameters)"]


def describe_type(annotation: Any, metadata: list) -> str:
    """``float in [0, 1]``, ``int >= 1``, ``one of sample, argmax``, ``list[float] or null`` ..."""
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(annotation))
    name = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = name or str(annotation).replace("typing.", "").replace(" | None", " or null")
    low = high = None
    for bound in metadata:
        for attr, sign in (("ge", "["), ("gt", "(")):
            if getattr(bound, attr, None) is not None:
                low = (sign, getattr(bound, attr))
        for attr, sign in (("le", "]"), ("lt", ")")):
            if getattr(bound, attr, None) is not None:
                high = (sign, getattr(bound, attr))
    if low and high:
        return f"{text} in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{text} {'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"{text} {'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return text

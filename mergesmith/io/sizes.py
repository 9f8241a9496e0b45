"""Parsing human byte sizes ("2GB", "500MiB") for --max-shard-size and friends: the one size parser.

Errors are ``SizeError``, both a ``ConfigError`` (the CLI prints one line, exit 2) and a ``ValueError`` (what
Python callers of ``parse_size`` have always caught). No installed dependency parses both unit systems the Hub
uses, so these twenty lines stay.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from mergesmith.errors import ConfigError


class SizeError(ConfigError, ValueError):
    """A size that cannot be read, or is out of range."""


_MAX_CHARS = 40  # "999999.999 TiB" is 14: a longer string is a mistake, and Decimal would take it whole

# Decimal units are powers of 1000 (as the Hub and transformers count), binary units powers of 1024.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(size: str | int, *, what: str = "size", minimum: int = 0) -> int:
    """Bytes in ``size``: a non-negative int, or a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB,
    TiB), at least ``minimum``; ``what`` names the option in messages (e.g. ``--max-shard-size``)."""
    value = _parse(size, what)
    if value < minimum:
        raise SizeError(f"{what} {size!r} is {value} bytes; it must be at least {minimum}, e.g. '5GB'")
    return value


def _parse(size: str | int, what: str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise SizeError(f"{what} {size} is negative; give a number of bytes such as 5000000000 or '5GB'")
        return size
    if not isinstance(size, str):
        raise SizeError(f"{what} {size!r} is not a number of bytes; give an int or a string such as '5GB'")
    m = _SIZE.match(size) if len(size) <= _MAX_CHARS else None
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise SizeError(
            f"cannot read {what} {size!r}; write a number with an optional unit: B, KB, MB, GB, TB (powers of 1000) "
            f"or KiB, MiB, GiB, TiB (powers of 1024), e.g. '5GB' or '500MiB'"
        )
    try:
        value = Decimal(m.group(1)) * _UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex only lets decimal numbers through
        raise SizeError(f"cannot read {what} {size!r}; give a number such as '5GB'") from None
    if value != value.to_integral_value():
        raise SizeError(f"{what} {size!r} is not a whole number of bytes ({value}); use a smaller unit")
    return int(value)

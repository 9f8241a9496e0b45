"""Parsing human byte sizes ("2GB", "500MiB") for --max-shard-size and friends."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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


def parse_size(size: str | int) -> int:
    """Bytes in ``size``: a non-negative int, or a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise ValueError(f"size {size} is negative; give a number of bytes such as 5000000000 or '5GB'")
        return size
    if not isinstance(size, str):
        raise ValueError(f"size {size!r} is not a number of bytes; give an int or a string such as '5GB'")
    m = _SIZE.match(size)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read size {size!r}; write a number with an optional unit: B, KB, MB, GB, TB (powers of 1000) "
            f"or KiB, MiB, GiB, TiB (powers of 1024), e.g. '5GB' or '500MiB'"
        )
    try:
        value = Decimal(m.group(1)) * _UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex only lets decimal numbers through
        raise ValueError(f"cannot read size {size!r}; give a number such as '5GB'") from None
    if value != value.to_integral_value():
        raise ValueError(f"size {size!r} is not a whole number of bytes ({value}); use a smaller unit")
    return int(value)

"""Read one object from an installed R package's lazy-load data base (``data/Rdata.rdx`` + ``data/Rdata.rdb``).

``rdata`` parses R's serialization format but has no lazy-load API, so the index and the blocks are read here:

- ``Rdata.rdx`` is an ordinary compressed RDS file holding a list with ``variables`` (object name -> [offset,
  length] into the .rdb), ``references`` and ``compressed`` (the block compression R used).
- each block in ``Rdata.rdb`` is a 4-byte big-endian uncompressed length, then (for ``compressed`` 2 and 3) one
  byte naming the codec, then the compressed serialization of the object.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergesmith.errors import MergesmithError

# R's lazy-load xz blocks are raw LZMA2 streams (no .xz container). The decoder only needs a dictionary at least as
# large as the encoder's; R compresses with preset 9 (64 MiB), the largest one.
_LZMA2_RAW = [{"id": lzma.FILTER_LZMA2, "dict_size": 64 << 20}]

# The codec byte of a block, for ``compressed`` = 2 (bzip2 era) and 3 (xz era).
_CODECS = {
    b"Z": lambda body: lzma.decompress(body, format=lzma.FORMAT_RAW, filters=_LZMA2_RAW),
    b"2": bz2.decompress,
    b"1": zlib.decompress,
    b"0": bytes,
}


def read_lazyload_object(package_dir: Path, name: str) -> Any:
    """The object ``name`` from the R package installed at ``package_dir``, converted by ``rdata`` (data frames to
    pandas, character vectors to numpy arrays)."""
    import rdata

    base = Path(package_dir) / "data" / "Rdata"
    index = _parse(lambda: rdata.parser.parse_file(base.with_suffix(".rdx")), base.with_suffix(".rdx"))
    variables = index["variables"]
    if name not in variables:
        raise MergesmithError(
            f"{base.with_suffix('.rdx')} has no object {name!r} (it has {sorted(map(str, variables))}); "
            "the R package version differs from the one the bench expects"
        )
    offset, length = (int(v) for v in variables[name])
    with open(base.with_suffix(".rdb"), "rb") as handle:
        handle.seek(offset)
        block = handle.read(length)
    serialized = _decompress(block, int(index["compressed"][0]), f"{name} in {base.with_suffix('.rdb')}")
    return _parse(lambda: rdata.parser.parse_data(serialized, extension=".rds"), base.with_suffix(".rdb"))


def _decompress(block: bytes, compressed: int, where: str) -> bytes:
    (expected,) = struct.unpack(">I", block[:4])
    try:
        if compressed == 1:  # the original lazy-load format: zlib straight after the length
            data = zlib.decompress(block[4:])
        elif compressed in (2, 3):
            codec = _CODECS.get(block[4:5])
            if codec is None:
                raise ValueError(f"unknown codec byte {block[4:5]!r}")
            data = codec(block[5:])
        else:
            raise ValueError(f"unknown compression {compressed}")
    except (ValueError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise MergesmithError(f"cannot decompress {where} ({exc}); delete the cached package and rerun") from None
    if len(data) != expected:
        raise MergesmithError(f"{where} decompressed to {len(data)} bytes, expected {expected}; delete it and rerun")
    return data


def _parse(parse: Callable[[], Any], where: Path) -> Any:
    import rdata

    # rdata warns about the .rdx extension, about a serialization with no file header, and about R classes it maps
    # by default (tibble's tbl_df); none of them matters here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return rdata.conversion.convert(parse())
        except Exception as exc:  # rdata raises plain exceptions for R constructs it does not know
            raise MergesmithError(f"rdata cannot read {where} ({type(exc).__name__}: {exc})") from None

"""Read and strictly validate a safetensors header, never the tensor data.

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data bytes. The JSON maps tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data start) plus an
optional ``"__metadata__"`` of string -> string.

Everything the reader later trusts (offsets, byte counts) is checked here, so a truncated download or a lying
header fails at open time with a message naming the file, instead of as a short read in the middle of a merge.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from mergesmith.errors import CheckpointError
from mergesmith.io.dtypes import SAFETENSORS_TO_TORCH
from mergesmith.io.tensor_info import TensorInfo

# The same bound the reference implementation uses: a larger header is a corrupt file or an attack.
MAX_HEADER_BYTES = 100_000_000

_FIX_CORRUPT = "the file is truncated or corrupt, re-download or re-save it"


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys silently; two tensors with one name must not pass.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _BadConstant(Exception):
    pass


def _no_constants(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON; the reference reader refuses such headers, so do we.
    raise _BadConstant(name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of a safetensors file.

    Returns ``(tensors, metadata, data_start)``: tensors keyed by name in the order of their data in the file,
    with absolute byte offsets; the ``__metadata__`` dict (empty if absent); the absolute offset of the data.
    """
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 8:
                raise CheckpointError(
                    f"{where}: only {file_size} bytes, too short for a safetensors header; {_FIX_CORRUPT}"
                )
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{where}: header claims {header_len} bytes, more than the {MAX_HEADER_BYTES}-byte limit; "
                    f"this is not a valid safetensors file, re-download or re-save it"
                )
            if header_len > file_size - 8:
                raise CheckpointError(
                    f"{where}: header claims {header_len} bytes but the file has only {file_size - 8} after the "
                    f"length prefix; {_FIX_CORRUPT}"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{where}: cannot read the file ({e.strerror or e}); check the path and permissions") from e
    if len(raw) != header_len:  # the file shrank under us
        raise CheckpointError(f"{where}: header is shorter than its length prefix; {_FIX_CORRUPT}")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: header is not valid UTF-8 (byte {e.start}); {_FIX_CORRUPT}") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _BadConstant as e:
        raise CheckpointError(f"{where}: header is not valid JSON ({e} is not a JSON value); {_FIX_CORRUPT}") from None
    except _DuplicateKey as e:
        raise CheckpointError(
            f"{where}: header names tensor '{e.key}' twice; the file is corrupt, re-save it with unique names"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: header is not valid JSON ({e.msg} at char {e.pos}); {_FIX_CORRUPT}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: header is JSON but not an object; {_FIX_CORRUPT}")

    data_start = 8 + header_len
    data_len = file_size - data_start
    metadata = _read_metadata(where, header.pop("__metadata__", None))

    # (begin, end, name) relative to the data start, validated entry by entry, then checked as a whole.
    spans: list[tuple[int, int, str]] = []
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        dtype_name, shape, begin, end = _read_entry(where, name, entry)
        dtype = SAFETENSORS_TO_TORCH[dtype_name]
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{where}: tensor '{name}' is {dtype_name} {list(shape)} ({expected} bytes) but its data_offsets "
                f"span {end - begin} bytes; {_FIX_CORRUPT}"
            )
        if end > data_len:
            raise CheckpointError(
                f"{where}: tensor '{name}' ends at byte {end} but the file has {data_len} data bytes; {_FIX_CORRUPT}"
            )
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, path, dtype, shape, data_start + begin, expected)

    _check_layout(where, spans, data_len)
    ordered = {name: infos[name] for _, _, name in sorted(spans, key=lambda s: (s[0], s[1]))}
    return ordered, metadata, data_start


def _read_metadata(where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings; {_FIX_CORRUPT}")
    return dict(value)


def _read_entry(where: str, name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: tensor '{name}' has no dtype/shape/data_offsets object; {_FIX_CORRUPT}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise CheckpointError(f"{where}: tensor '{name}' lacks {', '.join(missing)}; {_FIX_CORRUPT}")
    dtype_name = entry["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_TO_TORCH:  # a list would be unhashable
        known = ", ".join(SAFETENSORS_TO_TORCH)
        raise CheckpointError(
            f"{where}: tensor '{name}' has dtype {dtype_name!r}, which mergesmith cannot read (known: {known}); "
            f"convert the checkpoint to one of those dtypes"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(
            f"{where}: tensor '{name}' has shape {shape!r}, not a list of non-negative integers; {_FIX_CORRUPT}"
        )
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(
            f"{where}: tensor '{name}' has data_offsets {offsets!r}, not two integers; {_FIX_CORRUPT}"
        )
    begin, end = offsets
    if begin < 0 or end < 0:
        raise CheckpointError(f"{where}: tensor '{name}' has negative data_offsets {offsets}; {_FIX_CORRUPT}")
    if end < begin:
        raise CheckpointError(
            f"{where}: tensor '{name}' ends (byte {end}) before it begins (byte {begin}); {_FIX_CORRUPT}"
        )
    return dtype_name, tuple(shape), begin, end


def _check_layout(where: str, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """Tensors must tile the data exactly: no overlap (two names aliasing bytes), no gap, no trailing bytes."""
    cursor, previous = 0, None
    for begin, end, name in sorted(spans, key=lambda s: (s[0], s[1])):
        if begin < cursor:
            raise CheckpointError(
                f"{where}: tensor '{name}' starts at byte {begin}, inside tensor '{previous}' (which ends at "
                f"{cursor}); overlapping tensors mean a corrupt header, re-download or re-save the file"
            )
        if begin > cursor:
            after = f"after tensor '{previous}'" if previous is not None else "at the start of the data"
            raise CheckpointError(
                f"{where}: {begin - cursor} unused bytes {after} (tensor '{name}' starts at byte {begin}, "
                f"expected {cursor}); {_FIX_CORRUPT}"
            )
        cursor, previous = end, name
    if cursor != data_len:
        raise CheckpointError(
            f"{where}: {data_len - cursor} bytes after the last tensor's data (tensors end at byte {cursor}, the "
            f"file has {data_len} data bytes); {_FIX_CORRUPT}"
        )

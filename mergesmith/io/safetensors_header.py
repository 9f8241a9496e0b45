"""Read and strictly validate a safetensors header, never the tensor data.

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data bytes. The JSON maps tensor
names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data start) plus an
optional ``"__metadata__"`` of string -> string.

Everything the reader later trusts (offsets, byte counts) is checked here, so a truncated download or a lying
header fails at open time with a message naming the file, instead of as a short read in the middle of a merge.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

from mergesmith.errors import CheckpointError
from mergesmith.io.dtypes import SAFETENSORS_TO_TORCH
from mergesmith.io.parse import parse_json
from mergesmith.io.paths import open_regular
from mergesmith.io.tensor_info import TensorInfo, check_shape, check_tensor_name

# The same bound the reference implementation uses: a larger header is a corrupt file or an attack.
MAX_HEADER_BYTES = 100_000_000
# Objects and lists a header may hold: one entry object and two lists per tensor (a million tensors in one file).
MAX_HEADER_CONTAINERS = 3_000_001

_FIX_CORRUPT = "the file is truncated or corrupt, re-download or re-save it"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of a safetensors file.

    Returns ``(tensors, metadata, data_start)``: tensors keyed by name in the order of their data in the file,
    with absolute byte offsets; the ``__metadata__`` dict (empty if absent); the absolute offset of the data.
    """
    fd, identity = open_regular(path)
    try:
        return read_header_from(fd, identity.size, Path(path))
    finally:
        os.close(fd)


def _pread_exactly(fd: int, nbytes: int, offset: int) -> bytes:
    chunks, done = [], 0
    while done < nbytes:
        chunk = os.pread(fd, min(nbytes - done, 1 << 30), offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_header_from(fd: int, file_size: int, path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """``read_header`` on an open descriptor of the regular file ``path`` of ``file_size`` bytes."""
    where = str(path)
    if file_size < 8:
        raise CheckpointError(f"{where}: only {file_size} bytes, too short for a safetensors header; {_FIX_CORRUPT}")
    try:
        prefix = _pread_exactly(fd, 8, 0)
        if len(prefix) != 8:
            raise CheckpointError(f"{where}: the file shrank while it was read; {_FIX_CORRUPT}")
        (header_len,) = struct.unpack("<Q", prefix)
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
        raw = _pread_exactly(fd, header_len, 8)
    except OSError as e:
        raise CheckpointError(
            f"{where}: cannot read the file ({e.strerror or e}); check the path and permissions"
        ) from e
    if len(raw) != header_len:  # the file shrank under us
        raise CheckpointError(f"{where}: header is shorter than its length prefix; {_FIX_CORRUPT}")

    # Bounded parse: nesting, numbers and container count are checked before json builds anything; duplicate
    # names and NaN/Infinity (which the reference reader refuses) are refused.
    header = parse_json(
        raw,
        where,
        what="header",
        top=dict,
        constants=False,
        unique_keys=True,
        max_containers=MAX_HEADER_CONTAINERS,
        fix=_FIX_CORRUPT,
    )

    data_start = 8 + header_len
    data_len = file_size - data_start
    metadata = _read_metadata(where, header.pop("__metadata__", None))

    # (begin, end, name) relative to the data start, validated entry by entry, then checked as a whole.
    spans: list[tuple[int, int, str]] = []
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        check_tensor_name(where, name)
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
    check_shape(where, name, tuple(shape))
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

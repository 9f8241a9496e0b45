"""Streaming sharded safetensors output.

Every shard's header is computed up front from the list of (name, dtype, shape), so each tensor's bytes can go
straight to disk as it is produced: the writer never holds more than the tensor being written, and hashes
each shard as it streams (no re-reading). The byte layout matches the reference safetensors serializer (compact
JSON header, ``__metadata__`` first, tensors in data order, padded with spaces to a multiple of 8), so the
output loads with ``safetensors.safe_open`` and ``transformers``; file and index names follow transformers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from mergesmith.io.dtypes import safetensors_dtype_name
from mergesmith.io.sizes import parse_size
from mergesmith.io.tensor_info import name_problem

Entry = tuple[str, torch.dtype, tuple[int, ...]]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ShardPlan:
    file_name: str
    entries: tuple[Entry, ...]  # in data order
    nbytes: int  # tensor data bytes, without the header


def _entry_nbytes(entry: Entry) -> int:
    return math.prod(entry[2]) * entry[1].itemsize


def _normalise(entries: Sequence[tuple[str, torch.dtype, Sequence[int]]]) -> list[Entry]:
    out: list[Entry] = []
    seen: set[str] = set()
    for name, dtype, shape in entries:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor name {name!r} must be a non-empty string")
        if name in seen:
            raise ValueError(f"tensor '{name}' is listed twice; every output tensor needs a unique name")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved by the safetensors format and cannot name a tensor")
        problem = name_problem(name)  # the readers' rule: what they accept, the writer can write
        if problem is not None:
            raise ValueError(f"tensor name {ascii(name)[:80]} {problem}")
        safetensors_dtype_name(dtype)  # ValueError for unsupported dtypes
        shape = tuple(shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"tensor '{name}' has shape {shape}; dimensions must be non-negative ints")
        seen.add(name)
        out.append((name, dtype, shape))
    return out


def plan_shards(
    entries: Sequence[tuple[str, torch.dtype, Sequence[int]]], max_shard_bytes: int | str
) -> list[ShardPlan]:
    """Split tensors, in the given order, into shards of at most ``max_shard_bytes`` of tensor data.

    Greedy: a shard takes tensors until the next one would overflow it; a tensor larger than the limit gets a
    shard of its own. One shard is named ``model.safetensors``, several ``model-0000i-of-0000N.safetensors``.
    """
    limit = parse_size(max_shard_bytes, what="max_shard_size", minimum=1)
    groups: list[list[Entry]] = [[]]
    filled = 0
    for entry in _normalise(entries):
        size = _entry_nbytes(entry)
        if groups[-1] and filled + size > limit:
            groups.append([])
            filled = 0
        groups[-1].append(entry)
        filled += size
    n = len(groups)
    names = [SINGLE_FILE] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    return [ShardPlan(name, tuple(g), sum(_entry_nbytes(e) for e in g)) for name, g in zip(names, groups)]


def shard_header(shard: ShardPlan, metadata: dict[str, str]) -> bytes:
    """The 8-byte length prefix plus the JSON header of ``shard``, padded with spaces to a multiple of 8."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in shard.entries:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": safetensors_dtype_name(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    # ensure_ascii=False: names are written as UTF-8, as the reference serializer does.
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # alignment: data starts on an 8-byte boundary
    return struct.pack("<Q", len(text)) + text


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A byte view of ``tensor`` in row-major order, copying only if it is not already contiguous on the CPU."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    # safetensors is little-endian; so is every platform torch ships CPU wheels for.
    return t.reshape(-1).view(torch.uint8).numpy().data


class ShardedWriter:
    """Write tensors in plan order into sharded safetensors files under ``directory``.

    ``write(name, tensor)`` writes a whole tensor; ``write_rows(name, block)`` appends consecutive row blocks of
    one (so an engine merging block-wise need not assemble the output tensor). ``finish()`` writes the index
    (when there are several shards) and returns ``{file_name: sha256 hex}``. On an error path call ``close()``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
        max_shard_bytes: int | str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.shards = plan_shards(entries, max_shard_bytes)
        meta = {"format": "pt", **(metadata or {})}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        self._headers = [shard_header(s, meta) for s in self.shards]
        # Flat plan: (shard index, entry); tensors must arrive in exactly this order.
        self._queue = [(i, e) for i, s in enumerate(self.shards) for e in s.entries]
        self._next = 0
        self._rows_done = 0  # rows of the current tensor already written through write_rows
        self._shard: int | None = None  # index of the open shard
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._written = 0  # bytes written to the open shard
        self._digests: dict[str, str] = {}
        self._done = False

        self.directory.mkdir(parents=True, exist_ok=True)
        # A stale index or shard from an earlier run would be loaded alongside (or instead of) ours.
        targets = [s.file_name for s in self.shards] + [INDEX_FILE]
        stale = [name for name in targets if (self.directory / name).exists()]
        if stale:
            raise ValueError(f"{self.directory} already contains {', '.join(stale)}; write into an empty directory")

    @property
    def total_size(self) -> int:
        """Bytes of tensor data over all shards (the index's ``metadata.total_size``)."""
        return sum(s.nbytes for s in self.shards)

    @property
    def total_parameters(self) -> int:
        return sum(math.prod(shape) for s in self.shards for _, _, shape in s.entries)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the whole of tensor ``name``, which must be the next one in plan order."""
        shape = self._expect(name, tensor)[2]
        if self._rows_done:
            raise ValueError(f"tensor '{name}' was started with write_rows; finish it with write_rows")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"tensor '{name}' has shape {tuple(tensor.shape)} but the plan says {shape}")
        self._emit(tensor)
        self._advance()

    def write_rows(self, name: str, block: torch.Tensor) -> None:
        """Append the next rows (dim 0) of tensor ``name``; the tensor is complete when all its rows are written."""
        shape = self._expect(name, block)[2]
        if not shape:
            raise ValueError(f"tensor '{name}' is 0-d and has no rows; use write()")
        left = shape[0] - self._rows_done
        if block.dim() != len(shape) or tuple(block.shape[1:]) != shape[1:] or block.shape[0] > left:
            raise ValueError(
                f"tensor '{name}': a block of shape {tuple(block.shape)} does not fit; {left} rows of shape "
                f"{shape[1:]} remain of the planned {shape}"
            )
        self._emit(block)
        self._rows_done += block.shape[0]
        if self._rows_done == shape[0]:
            self._advance()

    def finish(self) -> dict[str, str]:
        """Close the last shard, write the index if there are several shards, return ``{file_name: sha256}``."""
        if self._done:
            raise ValueError("finish() was already called")
        if self._next < len(self._queue):
            missing = self._queue[self._next][1][0]
            raise ValueError(
                f"finish() after {self._next} of {len(self._queue)} tensors; '{missing}' and the rest are missing"
            )
        if not self._queue:  # a model without tensors still gets its (empty) file
            self._open_shard(0)
            self._close_shard()
        if len(self.shards) > 1:
            weight_map = {name: s.file_name for s in self.shards for name, _, _ in s.entries}
            metadata = {"total_parameters": self.total_parameters, "total_size": self.total_size}
            index = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        self._done = True
        return dict(self._digests)

    def close(self) -> None:
        """Abandon the write: close any open file (partial shards stay on disk for the caller to remove)."""
        self._done = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------

    def _expect(self, name: str, tensor: torch.Tensor) -> Entry:
        """Check that ``name`` is the next planned tensor with the planned dtype; open its shard."""
        if self._done:
            raise ValueError("the writer is finished or closed")
        if self._next >= len(self._queue):
            raise ValueError(f"tensor '{name}' is not in the plan: all {len(self._queue)} tensors were written")
        shard, entry = self._queue[self._next]
        if name != entry[0]:
            raise ValueError(f"expected tensor '{entry[0]}' next (plan order), got '{name}'")
        if tensor.dtype != entry[1]:
            raise ValueError(f"tensor '{name}' is {tensor.dtype} but the plan says {entry[1]}; cast it first")
        if self._shard != shard:
            self._close_shard()
            self._open_shard(shard)
        return entry

    def _emit(self, tensor: torch.Tensor) -> None:
        if tensor.numel() == 0:
            return
        data = _tensor_bytes(tensor)
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)
        self._written += data.nbytes

    def _advance(self) -> None:
        self._next += 1
        self._rows_done = 0
        # Close a shard as soon as its last tensor is in: the file is complete on disk and its hash known.
        if self._next == len(self._queue) or self._queue[self._next][0] != self._shard:
            self._close_shard()

    def _open_shard(self, index: int) -> None:
        self._shard = index
        self._file = open(self.directory / self.shards[index].file_name, "wb")
        self._hash = hashlib.sha256()
        header = self._headers[index]
        self._file.write(header)
        self._hash.update(header)
        self._written = 0

    def _close_shard(self) -> None:
        if self._file is None or self._shard is None:
            return
        shard = self.shards[self._shard]
        # Plan order guarantees this; the check guards the invariant the header depends on.
        assert self._written == shard.nbytes, (shard.file_name, self._written, shard.nbytes)
        self._file.close()
        self._file = None
        self._digests[shard.file_name] = self._hash.hexdigest()

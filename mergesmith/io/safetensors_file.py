"""Reading tensors from one safetensors file with positioned reads, never a memory map.

Memory-mapped pages that a merge touches stay resident and count against the process, so a merge over a 70B
model would "use" 140 GB. Instead each read allocates a fresh buffer, fills it with ``os.preadv`` (no shared
file position, so threads can read concurrently) and wraps it in a tensor without copying; the buffer is freed
when the caller drops the tensor.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from mergesmith.errors import CheckpointError
from mergesmith.io._rows import resolve_rows
from mergesmith.io.paths import open_regular
from mergesmith.io.safetensors_header import read_header_from
from mergesmith.io.tensor_info import TensorInfo


class SafetensorsFile:
    """One safetensors file, opened once: the header and every tensor are read through the same descriptor, so the
    file whose header was validated is the file whose bytes are read. ``identity`` is what it was when opened.

    ``root``: the model directory the file belongs to; a file resolving outside it (a symlink) is refused."""

    def __init__(self, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        fd, self.identity = open_regular(self.path, root=root)
        try:
            self.tensors, self.metadata, self.data_start = read_header_from(fd, self.identity.size, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # Platforms without pread (Windows) fall back to seek + read under a lock.
        self._seek_lock = threading.Lock()

    def read(self, info: TensorInfo, rows: slice | None = None) -> torch.Tensor:
        """The tensor (or rows ``rows`` of dim 0) in its stored dtype, in freshly allocated memory."""
        shape, offset, nbytes = info.shape, info.offset, info.nbytes
        assert offset is not None and nbytes is not None
        if rows is not None:
            start, stop = resolve_rows(info.name, shape, rows)
            if shape:  # a 0-d tensor's only row is the whole tensor
                row_bytes = nbytes // shape[0] if shape[0] else 0
                offset, nbytes = offset + start * row_bytes, (stop - start) * row_bytes
                shape = (stop - start, *shape[1:])
        if nbytes == 0:
            return torch.empty(shape, dtype=info.dtype)
        buf = self._pread(offset, nbytes, info.name)
        return buf.view(info.dtype).reshape(shape)

    def _pread(self, offset: int, nbytes: int, name: str) -> torch.Tensor:
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path} is closed")
        # torch.empty, not bytearray: the buffer is filled by the read, zeroing it first would touch it twice.
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = buf.numpy().data.cast("B")
        done = 0
        while done < nbytes:  # the kernel may return short reads (e.g. > 2 GiB on Linux)
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[done:]], offset + done)
            elif hasattr(os, "pread"):
                chunk = os.pread(fd, min(nbytes - done, 1 << 30), offset + done)
                n = len(chunk)
                view[done : done + n] = chunk
            else:
                with self._seek_lock:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    chunk = os.read(fd, min(nbytes - done, 1 << 30))
                n = len(chunk)
                view[done : done + n] = chunk
            if n == 0:
                raise CheckpointError(
                    f"{self.path}: tensor '{name}' could not be read in full (the file shrank after it was opened); "
                    f"re-download or re-save it"
                )
            done += n
        return buf

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

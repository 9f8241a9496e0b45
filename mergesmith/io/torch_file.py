"""Reading legacy PyTorch checkpoints (.bin / .pt / .pth) safely.

Only ``torch.load(weights_only=True)`` ever touches these files: it refuses pickles that call arbitrary
functions, which is how a malicious checkpoint runs code. We load with ``mmap=True`` so opening a checkpoint
reads only its pickle, not its storages.

Unlike safetensors we keep the loaded (memory-mapped) dict for the life of the file: pages a merge touches stay
resident, so memory grows with the model. That is accepted for legacy formats; convert to safetensors for
bounded memory. The dict is built once, at open, and only read afterwards, so reads need no lock.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from mergesmith.errors import CheckpointError
from mergesmith.io._rows import resolve_rows
from mergesmith.io.paths import check_unchanged, open_regular
from mergesmith.io.tensor_info import TensorInfo, check_shape, check_tensor_name

_CONVERT = "convert it to safetensors with a trusted tool, or use a safetensors copy of the model"


def _load(path: Path) -> Any:
    try:
        try:
            return torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        except RuntimeError as e:
            # Files from torch < 1.6 (or torch.save(..., _use_new_zipfile_serialization=False)) are not zip
            # archives and cannot be memory-mapped: load them whole, still with weights_only.
            if "mmap can only be used" not in str(e):
                raise
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it calls {found.group(1)}" if found else "it contains objects other than tensors"
        raise CheckpointError(
            f"{path}: refusing to load this pickle, {what}, which could run arbitrary code; {_CONVERT}"
        ) from None
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot read the file ({e.strerror or e}); check the path and permissions"
        ) from e
    except Exception as e:  # torch reports corrupt archives as RuntimeError, KeyError, EOFError, ...
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first_line}); the file is truncated "
            f"or corrupt, re-download it"
        ) from None


class TorchFile:
    """``root``: the model directory the file belongs to; a file resolving outside it (a symlink) is refused."""

    def __init__(self, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        # torch.load opens the path itself: check first that it is a regular file (a FIFO would block for ever)
        # inside the model directory, and afterwards that the file loaded is the one checked.
        fd, self.identity = open_regular(self.path, root=root)
        os.close(fd)
        loaded = _load(self.path)
        check_unchanged(self.path, self.identity)
        if not isinstance(loaded, dict):
            raise CheckpointError(
                f"{self.path}: holds a {type(loaded).__name__}, not a state dict of named tensors; save "
                f"model.state_dict() instead"
            )
        # Non-tensor entries (step counters, configs) are not weights: ignore them.
        self._tensors: dict[str, torch.Tensor] = {
            k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        if not self._tensors:
            keys = ", ".join(repr(k) for k in list(loaded)[:5]) or "none"
            raise CheckpointError(
                f"{self.path}: no tensors at the top level (keys: {keys}); save a flat state dict "
                f"(model.state_dict()) instead"
            )
        where = str(self.path)
        for name, t in self._tensors.items():
            check_tensor_name(where, name)
            check_shape(where, name, tuple(t.shape))
        self.tensors: dict[str, TensorInfo] = {
            name: TensorInfo(name, self.path, t.dtype, tuple(t.shape), None, t.numel() * t.element_size())
            for name, t in self._tensors.items()
        }

    def read(self, info: TensorInfo, rows: slice | None = None) -> torch.Tensor:
        """A contiguous copy (the stored tensor may be a view sharing storage with others), in the stored dtype."""
        if self._tensors is None:
            raise ValueError(f"{self.path} is closed")
        t = self._tensors[info.name]
        if rows is not None:
            start, stop = resolve_rows(info.name, info.shape, rows)
            if t.dim() > 0:
                t = t[start:stop]
        return t.clone(memory_format=torch.contiguous_format)

    def close(self) -> None:
        self._tensors = None  # type: ignore[assignment]  # drops the mmap once no tensor refers to it

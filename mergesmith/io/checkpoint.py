"""Opening a checkpoint in any of the layouts people publish, as one lazy name -> tensor index.

Layouts, in the order a directory is probed:
  model.safetensors.index.json + shards | model.safetensors | pytorch_model.bin.index.json + shards |
  pytorch_model.bin; or a bare .safetensors / .bin / .pt / .pth file; or a Hub repo id ``org/name[@revision]``
  that is not a local path.
Opening reads headers (and, for torch formats, the pickle) only; tensors are read on demand by ``read``.
Every file of a model directory must resolve inside it (``paths.check_inside``; Hugging Face cache snapshots point
into their repository's ``blobs/``) and be a regular file. The identity of every file read is remembered while the
checkpoint is open, so an output can check, before it is committed, that no input changed under the merge.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

import torch

from mergesmith.errors import CheckpointError
from mergesmith.io.hub import parse_repo_id, resolve_hub
from mergesmith.io.parse import read_json_with_identity
from mergesmith.io.paths import FileIdentity, check_unchanged, forget_inputs, watch_input
from mergesmith.io.safetensors_file import SafetensorsFile
from mergesmith.io.tensor_info import TensorInfo, check_tensor_name
from mergesmith.io.torch_file import TorchFile

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


class _WeightFile(Protocol):
    path: Path
    tensors: dict[str, TensorInfo]
    identity: FileIdentity

    def read(self, info: TensorInfo, rows: slice | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


class Checkpoint:
    """The tensors of one model, read on demand. Reads are thread-safe; use as a context manager or ``close()``."""

    def __init__(self, root: Path, files: list[_WeightFile], index: tuple[Path, FileIdentity] | None = None) -> None:
        self.root = root
        self._files = {f.path: f for f in files}
        self._read: dict[Path, FileIdentity] = {f.path: f.identity for f in files}  # every file read, as opened
        if index is not None:
            self._read[index[0]] = index[1]
        self._config_cache: dict[str, Any] | None = None
        self.weight_files: list[Path] = [f.path for f in files]
        self.tensors: dict[str, TensorInfo] = {}
        for f in files:
            for name, info in f.tensors.items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"{root}: tensor '{name}' is stored in both {self.tensors[name].path.name} and "
                        f"{f.path.name}; remove the stray file or re-save the checkpoint"
                    )
                self.tensors[name] = info
        self._closed = False
        self._close_lock = threading.Lock()
        self._watch = [watch_input(root, path, identity) for path, identity in self._read.items()]

    @property
    def config_path(self) -> Path | None:
        """``config.json`` beside the weights if there is one (whatever it is: reading it checks it)."""
        path = self.root / "config.json"
        return path if os.path.lexists(path) else None

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """Tensor ``name`` in its stored dtype; ``rows`` reads only that range of dim 0 (step 1)."""
        if self._closed:
            raise ValueError(f"checkpoint {self.root} is closed")
        try:
            info = self.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in checkpoint {self.root}") from None
        return self._files[info.path].read(info, rows)

    def architecture(self) -> str | None:
        """``architectures[0]`` from config.json, else its ``model_type``, else None."""
        config = self.config()
        archs = config.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        model_type = config.get("model_type")
        return model_type if isinstance(model_type, str) else None

    def config(self) -> dict[str, Any]:
        """The parsed ``config.json`` ({} when there is none), read once through the bounded JSON reader."""
        if self._config_cache is None:
            path = self.config_path
            if path is None:
                self._config_cache = {}
            else:
                config, identity = read_json_with_identity(
                    path, what="config.json", root=self.root, fix="fix or re-download config.json"
                )
                self._read[path] = identity
                self._watch.append(watch_input(self.root, path, identity))
                self._config_cache = config
        return dict(self._config_cache)

    def check_unchanged(self) -> None:
        """Refuse (CheckpointError naming the file) if a file read so far was rewritten, replaced or removed."""
        for path, identity in list(self._read.items()):
            check_unchanged(path, identity)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        forget_inputs(self._watch)
        for f in self._files.values():
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.root)!r}, {len(self.weight_files)} files, {len(self.tensors)} tensors)"


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a local checkpoint (directory or file) or a Hugging Face Hub repo id; CheckpointError if unusable."""
    p = Path(path)
    if not p.exists():
        if parse_repo_id(os.fspath(path)) is None:
            raise CheckpointError(f"{p}: no such file or directory; check the path")
        p = resolve_hub(os.fspath(path))
    if p.is_dir():
        return _open_directory(p)
    return _open_file(p)


def _open_file(path: Path) -> Checkpoint:
    # An index file stands for its sharded model (people paste the index path as often as the directory). The file
    # the user named may be a symlink (they chose it); the shards and config.json beside it must be inside its
    # directory.
    if path.name.endswith(".safetensors.index.json"):
        return _open_indexed(path.parent, path.name, SafetensorsFile, named=True)
    if path.name.endswith(".bin.index.json"):
        return _open_indexed(path.parent, path.name, TorchFile, named=True)
    if path.suffix == ".safetensors":
        return _build(path.parent, [path], SafetensorsFile, named=True)
    if path.suffix in _TORCH_SUFFIXES:
        return _build(path.parent, [path], TorchFile, named=True)
    raise CheckpointError(
        f"{path}: unknown checkpoint file type '{path.suffix}'; pass a .safetensors, .bin, .pt or .pth file or a "
        f"model directory"
    )


def _open_directory(directory: Path) -> Checkpoint:
    # lexists, not is_file: a symlink pointing away or a FIFO named like the weights is refused by the opener with
    # a message saying what it is, rather than skipped.
    if os.path.lexists(directory / SAFETENSORS_INDEX):
        return _open_indexed(directory, SAFETENSORS_INDEX, SafetensorsFile)
    if os.path.lexists(directory / SAFETENSORS_SINGLE):
        return _build(directory, [directory / SAFETENSORS_SINGLE], SafetensorsFile)
    if os.path.lexists(directory / TORCH_INDEX):
        return _open_indexed(directory, TORCH_INDEX, TorchFile)
    if os.path.lexists(directory / TORCH_SINGLE):
        return _build(directory, [directory / TORCH_SINGLE], TorchFile)
    looked_for = ", ".join((SAFETENSORS_INDEX, SAFETENSORS_SINGLE, TORCH_INDEX, TORCH_SINGLE))
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", *_TORCH_SUFFIXES))
    hint = f" (it has {', '.join(others[:5])}: pass one of those files directly)" if others else ""
    raise CheckpointError(
        f"{directory}: no model weights found; looked for {looked_for}{hint}; point at a Hugging Face model directory"
    )


def _build(
    root: Path, paths: list[Path], opener: type, *, named: bool = False, index: tuple[Path, FileIdentity] | None = None
) -> Checkpoint:
    """``named``: the single path is the file the user named, trusted where it points; other files must resolve
    inside ``root``."""
    files: list[_WeightFile] = []
    try:
        for path in paths:
            files.append(opener(path, root=None if named else root))
        return Checkpoint(root, files, index)
    except BaseException:
        for f in files:
            f.close()
        raise


def _open_indexed(directory: Path, index_name: str, opener: type, *, named: bool = False) -> Checkpoint:
    weight_map, identity = _read_weight_map(directory / index_name, named)
    shard_names = sorted(set(weight_map.values()))
    checkpoint = _build(
        directory, [directory / name for name in shard_names], opener, index=(directory / index_name, identity)
    )
    for name, shard in weight_map.items():
        info = checkpoint.tensors.get(name)
        if info is None or info.path.name != shard:
            actual = f"it is in {info.path.name}" if info is not None else "no shard has it"
            checkpoint.close()
            raise CheckpointError(
                f"{directory / index_name}: says tensor '{name}' is in {shard} but {actual}; the index does not "
                f"match the shards, re-download or re-save the model"
            )
    return checkpoint


# An index lists every tensor once: a million tensors take about 60 MB.
MAX_INDEX_BYTES = 100_000_000


def _read_weight_map(index_path: Path, named: bool = False) -> tuple[dict[str, str], FileIdentity]:
    """The index's weight_map, with every shard a plain, existing file name inside the index's directory."""
    index, identity = read_json_with_identity(
        index_path,
        what="index",
        root=None if named else index_path.parent,
        limit=MAX_INDEX_BYTES,
        fix="re-download or re-save the model",
    )
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: has no weight_map object; re-download or re-save the model")
    checked: set[str] = set()
    for name, shard in weight_map.items():
        check_tensor_name(str(index_path), name)
        if isinstance(shard, str) and shard in checked:
            continue
        # A shard path that escapes the directory could make us read any file on the machine.
        if (
            not isinstance(shard, str)
            or shard in ("", ".", "..")
            or "/" in shard
            or "\\" in shard
            or "\0" in shard
            or Path(shard).is_absolute()
        ):
            raise CheckpointError(
                f"{index_path}: tensor '{name}' maps to {shard!r}, which is not a plain file name in the model "
                f"directory; shards must sit beside the index, fix the weight_map or re-download the model"
            )
        if not os.path.lexists(index_path.parent / shard):
            raise CheckpointError(
                f"{index_path}: shard {shard} (holding tensor '{name}') does not exist; the download is incomplete, "
                f"re-download the model"
            )
        checked.add(shard)
    return weight_map, identity

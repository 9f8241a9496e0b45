"""Opening a checkpoint in any of the layouts people publish, as one lazy name -> tensor index.

Layouts, in the order a directory is probed:
  model.safetensors.index.json + shards | model.safetensors | pytorch_model.bin.index.json + shards |
  pytorch_model.bin; or a bare .safetensors / .bin / .pt / .pth file; or a Hub repo id ``org/name[@revision]``
  that is not a local path.
Opening reads headers (and, for torch formats, the pickle) only; tensors are read on demand by ``read``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import torch

from mergesmith.errors import CheckpointError
from mergesmith.io.hub import parse_repo_id, resolve_hub
from mergesmith.io.safetensors_file import SafetensorsFile
from mergesmith.io.tensor_info import TensorInfo
from mergesmith.io.torch_file import TorchFile

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


class _WeightFile(Protocol):
    path: Path
    tensors: dict[str, TensorInfo]

    def read(self, info: TensorInfo, rows: slice | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


class Checkpoint:
    """The tensors of one model, read on demand. Reads are thread-safe; use as a context manager or ``close()``."""

    def __init__(self, root: Path, files: list[_WeightFile]) -> None:
        self.root = root
        self._files = {f.path: f for f in files}
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

    @property
    def config_path(self) -> Path | None:
        path = self.root / "config.json"
        return path if path.is_file() else None

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
        config = self._config()
        archs = config.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        model_type = config.get("model_type")
        return model_type if isinstance(model_type, str) else None

    def _config(self) -> dict[str, Any]:
        path = self.config_path
        if path is None:
            return {}
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable JSON config ({e}); fix or re-download config.json") from None
        return config if isinstance(config, dict) else {}

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
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
    # An index file stands for its sharded model (people paste the index path as often as the directory).
    if path.name.endswith(".safetensors.index.json"):
        return _open_indexed(path.parent, path.name, SafetensorsFile)
    if path.name.endswith(".bin.index.json"):
        return _open_indexed(path.parent, path.name, TorchFile)
    if path.suffix == ".safetensors":
        return _build(path.parent, [path], SafetensorsFile)
    if path.suffix in _TORCH_SUFFIXES:
        return _build(path.parent, [path], TorchFile)
    raise CheckpointError(
        f"{path}: unknown checkpoint file type '{path.suffix}'; pass a .safetensors, .bin, .pt or .pth file or a "
        f"model directory"
    )


def _open_directory(directory: Path) -> Checkpoint:
    if (directory / SAFETENSORS_INDEX).is_file():
        return _open_indexed(directory, SAFETENSORS_INDEX, SafetensorsFile)
    if (directory / SAFETENSORS_SINGLE).is_file():
        return _build(directory, [directory / SAFETENSORS_SINGLE], SafetensorsFile)
    if (directory / TORCH_INDEX).is_file():
        return _open_indexed(directory, TORCH_INDEX, TorchFile)
    if (directory / TORCH_SINGLE).is_file():
        return _build(directory, [directory / TORCH_SINGLE], TorchFile)
    looked_for = ", ".join((SAFETENSORS_INDEX, SAFETENSORS_SINGLE, TORCH_INDEX, TORCH_SINGLE))
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", *_TORCH_SUFFIXES))
    hint = f" (it has {', '.join(others[:5])}: pass one of those files directly)" if others else ""
    raise CheckpointError(
        f"{directory}: no model weights found; looked for {looked_for}{hint}; point at a Hugging Face model directory"
    )


def _build(root: Path, paths: list[Path], opener: type) -> Checkpoint:
    files: list[_WeightFile] = []
    try:
        for path in paths:
            files.append(opener(path))
        return Checkpoint(root, files)
    except BaseException:
        for f in files:
            f.close()
        raise


def _open_indexed(directory: Path, index_name: str, opener: type) -> Checkpoint:
    weight_map = _read_weight_map(directory / index_name)
    shard_names = sorted(set(weight_map.values()))
    checkpoint = _build(directory, [directory / name for name in shard_names], opener)
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


def _read_weight_map(index_path: Path) -> dict[str, str]:
    """The index's weight_map, with every shard a plain, existing file name inside the index's directory."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index_path}: not a readable JSON index ({e}); re-download or re-save the model") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: has no weight_map object; re-download or re-save the model")
    checked: set[str] = set()
    for name, shard in weight_map.items():
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
        if not (index_path.parent / shard).is_file():
            raise CheckpointError(
                f"{index_path}: shard {shard} (holding tensor '{name}') does not exist; the download is incomplete, "
                f"re-download the model"
            )
        checked.add(shard)
    return weight_map

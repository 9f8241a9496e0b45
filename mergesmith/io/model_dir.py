"""The one writer of a model directory: staged, sharded, described (config, side files, card, manifest), committed.

Every output of mergesmith (merge, adapt, continual, protect) is written the same way::

    with ModelDirectory(out_dir, {"label": checkpoint_source(ckpt)}, force=force) as out:
        writer = out.open_shards(entries, max_shard_size)      # tensors stream in plan order
        ...                                                   # writer.write / write_rows; files beside: out.path
        out.finish_shards()
        out.write_config(source_config)
        out.copy_side_files(source_root)
        out.commit(kind=..., method=..., ...)                 # README.md, mergesmith.json, then the rename

Nothing that looks like a finished model exists at ``out_dir`` before ``commit`` (``StagedOutput``: a hidden
sibling renamed into place, a lock against a second writer, leftovers of killed runs removed). The input files are
hashed on a thread beside the work (they are read anyway, mostly from the page cache); ``commit`` records them and
the sha256 of every file in the directory except the manifest itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergesmith.io.atomic import StagedOutput
from mergesmith.io.hash_cache import hash_files
from mergesmith.io.manifest import MANIFEST_FILE, InputModel, Manifest, manifest_text
from mergesmith.io.model_card import CardText, render_card
from mergesmith.io.model_files import copy_side_files, sha256_file, write_config
from mergesmith.io.writer import ShardedWriter

CARD_FILE = "README.md"


@dataclass(frozen=True)
class ModelSource:
    """An input model: its path as the user gave it, its directory (no output may overlap it), the files read."""

    path: str
    root: Path
    files: tuple[Path, ...]


def checkpoint_source(checkpoint: Any, given: str | None = None) -> ModelSource:
    """A ``ModelSource`` for an open ``Checkpoint``: its weight files and config.json."""
    files = [Path(p) for p in checkpoint.weight_files]
    if checkpoint.config_path is not None:
        files.append(Path(checkpoint.config_path))
    root = Path(checkpoint.root)
    return ModelSource(str(root) if given is None else str(given), root, tuple(sorted(set(files))))


class ModelDirectory:
    """A model directory being written; ``commit`` makes it appear at ``out_dir``, leaving the block discards it."""

    def __init__(self, out_dir: str | Path, inputs: Mapping[str, ModelSource], *, force: bool = False) -> None:
        self.inputs = dict(inputs)
        self._staged = StagedOutput(out_dir, force=force, inputs=[source.root for source in self.inputs.values()])
        self.path: Path = Path()  # the staging directory, set on entry
        self.shard_hashes: dict[str, str] = {}
        self._shards: ShardedWriter | None = None
        self._shards_done = False
        self._known: dict[str, str] = {}  # hashes computed while streaming, so those files are not read again
        self._hasher: ThreadPoolExecutor | None = None
        self._input_hashes: Future[dict[str, str]] | None = None

    def __enter__(self) -> ModelDirectory:
        self.path = self._staged.__enter__()
        try:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="mergesmith-hash")
            files = sorted({f for source in self.inputs.values() for f in source.files})
            self._input_hashes = self._hasher.submit(hash_files, files)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._shards is not None:
                self._shards.close()
            if self._hasher is not None:
                self._hasher.shutdown(wait=True, cancel_futures=True)
        finally:
            self._staged.__exit__(exc_type, exc, tb)  # removes the staging directory unless committed; frees the lock

    # -- writing -------------------------------------------------------------------------------------------------

    def open_shards(
        self,
        entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
        max_shard_size: int | str,
        metadata: dict[str, str] | None = None,
    ) -> ShardedWriter:
        """The model's sharded safetensors writer (tensors in ``entries`` order; see ``ShardedWriter``)."""
        if self._shards is not None:
            raise ValueError("the model's shards are already open")
        self._shards = ShardedWriter(self.path, entries, max_shard_size, metadata)
        return self._shards

    def finish_shards(self) -> dict[str, str]:
        """Close the last shard and write the index; returns ``{shard file: sha256}``."""
        if self._shards is None:
            raise ValueError("open_shards was not called")
        self.shard_hashes = self._shards.finish()
        self._shards_done = True
        self._known.update(self.shard_hashes)
        return dict(self.shard_hashes)

    def record_hashes(self, hashes: Mapping[str, str]) -> None:
        """Hashes of files written beside the model while streaming (relative name -> sha256)."""
        self._known.update(hashes)

    def write_config(
        self,
        source: Path | None,
        *,
        dtype: str | None = None,
        layer_count: int | None = None,
        architectures: list[str] | None = None,
    ) -> bool:
        """config.json from ``source`` with the output dtype, depth and (when given) architectures."""
        return write_config(source, self.path, dtype, layer_count, architectures=architectures)

    def copy_side_files(self, source_root: Path | None) -> list[str]:
        """Tokenizer, generation and preprocessor configs from ``source_root``; returns the names copied."""
        return copy_side_files(source_root, self.path)

    # -- finishing -----------------------------------------------------------------------------------------------

    def commit(
        self,
        *,
        kind: str,
        method: str,
        paper: str = "",
        seed: int | None = None,
        base_model: str | None = None,
        config: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
        card: CardText = CardText(),
    ) -> Manifest:
        """Write the model card and the manifest, then rename the directory into place. Returns the manifest."""
        from mergesmith import __version__

        if self._shards is not None and not self._shards_done:
            raise ValueError("finish_shards() before commit(): the last shard is still open")
        assert self._input_hashes is not None
        hashes = self._input_hashes.result()
        inputs = {
            label: InputModel(path=source.path, files={_relative(f, source.root): hashes[str(f)] for f in source.files})
            for label, source in self.inputs.items()
        }
        manifest = Manifest(
            mergesmith_version=__version__,
            kind=kind,
            method=method,
            paper=paper,
            seed=seed,
            base_model=base_model,
            config=dict(config or {}),
            inputs=inputs,
            details=dict(details or {}),
        )
        (self.path / CARD_FILE).write_text(render_card(manifest, card), encoding="utf-8")
        manifest = manifest.model_copy(update={"outputs": self._output_hashes()})
        (self.path / MANIFEST_FILE).write_text(manifest_text(manifest), encoding="utf-8")
        self._staged.commit()
        return manifest

    def _output_hashes(self) -> dict[str, str]:
        """sha256 of every file in the directory but the manifest (known hashes reused, the rest read)."""
        out: dict[str, str] = {}
        for path in sorted(self.path.rglob("*")):
            name = path.relative_to(self.path).as_posix()
            if name == MANIFEST_FILE or path.is_symlink() or not path.is_file():
                continue
            out[name] = self._known.get(name) or sha256_file(path)
        return out


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


__all__ = ["CARD_FILE", "ModelDirectory", "ModelSource", "checkpoint_source"]

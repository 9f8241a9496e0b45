"""``mergesmith.load_merged(path, task=None)``: load what mergesmith wrote back into a torch module.

A plain merge is a transformers checkpoint. Every directory mergesmith writes names its ``kind`` in its manifest
(``mergesmith.json``, read by ``mergesmith.io.manifest.read_manifest``); ``LOADERS`` maps the kind to the function
that rebuilds the model from the directory and the manifest's ``details``. A plain dict: a new kind means one new
entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergesmith.errors import MergesmithError
from mergesmith.io.manifest import read_manifest


def _load_weights(directory: Path, details: dict, task: str | None) -> Any:
    """A plain checkpoint: the transformers class its config.json names (AutoModel when it names none we know)."""
    from mergesmith.model_class import load_pretrained

    if task is not None:
        raise MergesmithError(f"{directory} holds one merged model for every task; call load_merged without task=")
    return load_pretrained(directory)


def _load_surgery(directory: Path, details: dict, task: str | None) -> Any:
    """Surgery / SurgeryV2: the merged model with task ``task``'s modules (``task`` is required)."""
    from mergesmith.adapt.surgery import load_saved

    return load_saved(directory, details, task)


def _load_wemoe(directory: Path, details: dict, task: str | None) -> Any:
    """WEMoE / E-WEMoE: the merged model with routed MLP blocks (one model for every task)."""
    from mergesmith.adapt.wemoe import load_saved

    return load_saved(directory, details, task)


def _load_task_model(directory: Path, details: dict, task: str | None) -> Any:
    from mergesmith.engine.side_outputs import load_task_model

    return load_task_model(directory, details, task)


def _load_twin_merging(directory: Path, details: dict, task: str | None) -> Any:
    """Twin-Merging: the shared weights plus SVD factors and a router (``mergesmith.adapt.twin``)."""
    from mergesmith.adapt.twin import load_twin

    return load_twin(directory, details, task)


LOADERS: dict[str, Callable[[Path, dict, str | None], Any]] = {
    "weights": _load_weights,
    "continual": _load_weights,  # a continual step's merge (its state rides in the manifest's details)
    "protected": _load_weights,  # a MergeLock copy: same architecture, transformed attention weights
    "twin_merging": _load_twin_merging,
    "emr": _load_task_model,  # one model per task: base + rescaler * (mask * task vector) (engine/side_outputs.py)
    "tall_masks": _load_task_model,
    "surgery": _load_surgery,
    "wemoe": _load_wemoe,
}


def read_kind(directory: Path) -> tuple[str, dict]:
    """The directory's kind and its manifest's details; "weights" for a directory without a manifest."""
    manifest = read_manifest(directory)
    return ("weights", {}) if manifest is None else (manifest.kind, manifest.details)


def load_merged(path: str | Path, task: str | None = None) -> Any:
    """Load a merged model; ``task`` picks a task's model where the merge keeps per-task parts (EMR, Surgery, ...)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise MergesmithError(f"{directory}: no config.json here; pass the directory that mergesmith merge/adapt wrote")
    kind, details = read_kind(directory)
    loader = LOADERS.get(kind)
    if loader is None:
        raise MergesmithError(
            f"{directory}: unknown kind {kind!r}; known: {', '.join(sorted(LOADERS))} (a newer mergesmith wrote it?)"
        )
    return loader(directory, details, task)

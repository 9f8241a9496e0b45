"""``mergesmith.json``: what every directory mergesmith writes says about itself, and its one reader.

One shape for every kind of output (a merge, a per-task merge, an adapt result, a continual step, a protected
copy): the inputs (each model's path as given and the sha256 of every file read from it), the outputs (the sha256
of every file written beside the manifest), the method, its paper, the seed, the resolved configuration, and the
``kind`` that ``mergesmith.load_merged`` dispatches on. What only one kind needs lives in ``details``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from mergesmith.errors import CheckpointError
from mergesmith.io.legacy_manifest import LEGACY_ADAPT_FILE, upgrade_legacy
from mergesmith.io.parse import read_json

MANIFEST_FILE = "mergesmith.json"
FORMAT = "mergesmith-manifest/1"
# A manifest is a few kB (adapt results with per-layer coefficients: tens of kB); refuse before reading anything huge.
MAX_MANIFEST_BYTES = 16 << 20

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class InputModel(BaseModel):
    """One input model: its path as the user gave it and the sha256 of each file read (relative name -> hash)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    files: dict[str, Sha256] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["mergesmith-manifest/1"] = "mergesmith-manifest/1"  # FORMAT
    mergesmith_version: str
    kind: str = "weights"  # the loader mergesmith.load_merged uses (mergesmith.loading.LOADERS)
    method: str
    paper: str = ""
    seed: int | None = None
    base_model: str | None = None  # the base's path as given, when there is one
    config: dict[str, Any] = Field(default_factory=dict)  # the resolved merge config, or the method's parameters
    inputs: dict[str, InputModel] = Field(default_factory=dict)  # label (model name, or role) -> input
    outputs: dict[str, Sha256] = Field(default_factory=dict)  # every file written except this one -> sha256
    details: dict[str, Any] = Field(default_factory=dict)  # what one kind needs (tasks, adapt spec, continual state)


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def read_manifest(directory: str | Path) -> Manifest | None:
    """The manifest of a directory mergesmith wrote, or None for a directory without one (a plain checkpoint).

    Outputs of earlier versions (``adapt.json``, or a ``mergesmith.json`` without ``format``) are read through
    ``upgrade_legacy``. Every failure is one ``CheckpointError`` line naming the file.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not _exists(path):
        legacy = directory / LEGACY_ADAPT_FILE
        return validate_manifest(legacy, upgrade_legacy(legacy, _read_json(legacy))) if _exists(legacy) else None
    data = _read_json(path)
    if "format" not in data:
        return validate_manifest(path, upgrade_legacy(path, data))
    if data["format"] != FORMAT:
        raise CheckpointError(
            f"{path}: format {data['format']!r} is not {FORMAT!r}; a newer mergesmith wrote it, "
            f"upgrade mergesmith to read it"
        )
    return validate_manifest(path, data)


def validate_manifest(path: Path, data: dict[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the document"
        raise CheckpointError(
            f"{path}: {where}: {_one_line(err['msg'])}; restore the file or write the output again"
        ) from None


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror}); check the directory's permissions") from None
    return True


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``: a regular file of bounded size and nesting (``io.parse``)."""
    return read_json(
        path,
        what="manifest",
        root=path.parent,
        limit=MAX_MANIFEST_BYTES,
        fix="restore the file or write the output again",
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


__all__ = ["FORMAT", "MANIFEST_FILE", "InputModel", "Manifest", "manifest_text", "read_manifest"]

"""``predictions.safetensors`` in a bench run directory: every row's per-example hits on every task's test split, so
any two rows can be compared later (``mergesmith.bench.paired``, ``benchmarks/paired_difference.py``) without
re-running a merge.

Format: a safetensors file (no pickle). Tensor ``"{r}.{t}"`` is a uint8 vector, 1 where row ``r``'s head prediction
was right on test example i of task ``t``, where ``r`` and ``t`` index the JSON lists in the header's metadata
``"rows"`` (row names, in the results table's order) and ``"tasks"`` (task names); a (row, task) pair without a
tensor was not scored (a task without a head). Metadata ``"format"`` is ``FORMAT``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from mergesmith.errors import MergesmithError
from mergesmith.io.parse import parse_json

FILE_NAME = "predictions.safetensors"
FORMAT = "mergesmith-bench-predictions/1"
MAX_ROWS = 10_000  # far above any bench run: bounds what a crafted header can make the reader build


def write_predictions(path: str | os.PathLike, hits: Mapping[str, Mapping[str, torch.Tensor | None]]) -> None:
    """Write ``hits`` (row name -> task -> bool [n] or None) to ``path``."""
    from safetensors.torch import save_file

    rows = list(hits)
    tasks = list(dict.fromkeys(task for row in hits.values() for task in row))
    tensors = {}
    for r, row in enumerate(rows):
        for t, task in enumerate(tasks):
            hit = hits[row].get(task)
            if hit is not None:
                tensors[f"{r}.{t}"] = hit.detach().to(torch.uint8).contiguous()
    metadata = {"format": FORMAT, "rows": json.dumps(rows), "tasks": json.dumps(tasks)}
    save_file(tensors, str(path), metadata=metadata)


def _names(metadata: Mapping[str, str], key: str, path: Path) -> list[str]:
    names = parse_json(
        metadata.get(key, "null"),
        f"{path}: header {key!r}",
        what="the list of names",
        error=MergesmithError,
        top=None,
        fix="is it a bench predictions file?",
    )
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_ROWS:
        raise MergesmithError(f"{path}: the header's {key!r} is not a list of names; is it a bench predictions file?")
    return names


def read_predictions(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor | None]]:
    """Row name -> task -> bool [n] (None where the row was not scored); a missing or foreign file is a one-line
    MergesmithError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MergesmithError(f"{path} does not exist; a bench run writes {FILE_NAME} into its --out directory")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise MergesmithError(f"{path} is not a bench predictions file (format {metadata.get('format')!r})")
            rows, tasks = _names(metadata, "rows", path), _names(metadata, "tasks", path)
            keys = set(handle.keys())
            out: dict[str, dict[str, torch.Tensor | None]] = {}
            for r, row in enumerate(rows):
                out[row] = {}
                for t, task in enumerate(tasks):
                    key = f"{r}.{t}"
                    out[row][task] = handle.get_tensor(key).to(torch.bool) if key in keys else None
    except SafetensorError as exc:
        raise MergesmithError(f"{path} is not a readable safetensors file: {exc}") from None
    return out


__all__ = ["FILE_NAME", "FORMAT", "read_predictions", "write_predictions"]

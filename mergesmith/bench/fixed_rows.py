"""The rows that do not depend on any merge (the pretrained model, every expert), scored once per zoo.

Their per-example test hits depend only on the zoo (its directory name hashes the base model, every task's data and
label descriptions, the recipe and the seed), on how a split is scored and on the heads, all fixed by the zoo. So a
built-in pool keeps them in ``<zoo>/scores/`` and later runs read them back instead of scoring nine models again.
A user pool's checkpoints can change on disk between runs, so its fixed rows are always scored.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from mergesmith.bench.predictions import read_predictions, write_predictions
from mergesmith.errors import MergesmithError

# Bump when the meaning of a test score changes (tokenization length, pooling, head arithmetic): cached hits of an
# older version are then never read.
SCORES_VERSION = 1

Hits = dict[str, torch.Tensor | None]


def cache_file(pool, tag: str) -> Path | None:
    """Where a built-in pool's fixed-row hits live (None for a user pool); ``tag`` names how they were scored."""
    zoo = pool.provenance.get("zoo") if pool.provenance else None
    return None if zoo is None else Path(zoo) / "scores" / f"test-v{SCORES_VERSION}-{tag}.safetensors"


def fixed_row_hits(
    path: Path | None,
    models: Mapping[str, Callable[[], Hits]],
    sizes: Mapping[str, int],
    echo: Callable[[str], None] = print,
) -> tuple[dict[str, Hits], dict[str, float | None]]:
    """Row name -> task -> hits for every row of ``models`` (row name -> a function scoring it), read from ``path``
    when it holds every row with the test splits' sizes ``sizes``; else scored and written there. Also the seconds
    each row took to score (None when read back)."""
    cached = _read(path, list(models), sizes)
    if cached is not None:
        echo(f"the pretrained and expert rows' test scores come from {path}")
        return cached, dict.fromkeys(models)
    hits: dict[str, Hits] = {}
    seconds: dict[str, float | None] = {}
    for name, score in models.items():
        started = time.perf_counter()
        hits[name] = score()
        seconds[name] = time.perf_counter() - started
    if path is not None:
        _write(path, hits)
    return hits, seconds


def _read(path: Path | None, names: list[str], sizes: Mapping[str, int]) -> dict[str, Hits] | None:
    if path is None or not path.is_file():
        return None
    try:
        stored = read_predictions(path)
    except MergesmithError:
        return None  # a damaged cache file is rescored and replaced, never trusted
    for name in names:
        row = stored.get(name)
        if row is None or set(row) != set(sizes):
            return None
        for task, hit in row.items():
            if hit is not None and len(hit) != sizes[task]:
                return None
    return {name: stored[name] for name in names}


def _write(path: Path, hits: Mapping[str, Hits]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write_predictions(partial, hits)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise

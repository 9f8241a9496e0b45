"""A tiny text pool for the adapt tests: a tiny base (BERT by default; GPT-2 or LLaMA with ``arch=``), 2 perturbed
experts, heads, CSV splits."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers import write_yaml

TASKS = (("reviews", ("neg", "pos")), ("topics", ("a", "b", "c")))
WIDTH = 64  # the hidden size of every tiny architecture (mergesmith.tiny_models) = the pooled feature width


def sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(x)}" for x in torch.randint(2, 200, (6,), generator=g)) for _ in range(n)]


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    return path


def save_head(path: Path, rows: int, width: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"weight": torch.randn(rows, width, generator=g), "bias": torch.randn(rows, generator=g) * 0.1}, str(path)
    )
    return path


def build_text_pool(
    root: Path, *, n_validation: int = 8, n_test: int = 10, noise: float = 0.02, arch: str = "bert", n_train: int = 0
) -> Path:
    """Write the pool under ``root`` and return the pool YAML's path; ``arch`` is a ``mergesmith.tiny_models`` architecture.
    ``n_train`` > 0 gives every task a train split too (only the bench's pretrained row reads it)."""
    from mergesmith.tiny_models import build_tiny_family, tiny_config

    build_tiny_family(root / "models", arch, len(TASKS), noise=noise)
    width = int(tiny_config(arch).hidden_size)  # the heads read the pooled features: the model's hidden size
    tasks = []
    for i, (name, labels) in enumerate(TASKS):
        splits = (
            ("train", n_train, 10 * i + 3),
            ("validation", n_validation, 10 * i + 1),
            ("test", n_test, 10 * i + 2),
        )
        for split, n, seed in splits:
            if n:
                write_csv(
                    root / "data" / f"{name}_{split}.csv",
                    [(t, labels[k % len(labels)]) for k, t in enumerate(sentences(n, seed))],
                )
        save_head(root / "heads" / f"{name}.safetensors", len(labels), width, seed=i)
        data = {
            "format": "csv",
            **{split: f"data/{name}_{split}.csv" for split, n, _ in splits if n},
            "labels": list(labels),
        }
        tasks.append({"name": name, "expert": f"models/expert_{i}", "head": f"heads/{name}.safetensors", "data": data})
    return write_yaml(root / "pool.yaml", {"base_model": "models/base", "tasks": tasks})

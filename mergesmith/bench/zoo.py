"""The expert zoo: one fine-tuned encoder (plus its head) per task, and linear-probe heads on the base.

Built once and cached under ``<cache>/zoo/<recipe hash>/``, where the hash covers the base model, the task data
fingerprints, the fine-tuning recipe and the seed. Each expert is written into a hidden temporary directory and
renamed into place when complete, so an interrupted build resumes with the experts that finished and rebuilds the
one that did not; a half-written expert is never used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergesmith.bench.data import TaskData
from mergesmith.bench.encoder import (
    EncodedSplit,
    FineTuneRecipe,
    encode_split,
    fine_tune,
    split_features,
    train_probe,
)
from mergesmith.bench.heads import HEAD_FILE, Head, load_head, save_head
from mergesmith.io.parse import read_json

ZOO_VERSION = 2  # 2: probes give constant feature dimensions weight zero (bench.encoder.train_probe)
DONE_FILE = "expert.json"


@dataclass
class Zoo:
    directory: Path
    base_dir: Path
    experts: dict[str, Path]  # task -> HF directory of the fine-tuned encoder (with its head file)
    recipe: FineTuneRecipe
    train_seconds: dict[str, float]

    def head(self, task: str) -> Head:
        return load_head(self.experts[task] / HEAD_FILE)

    def probe(self, task: str) -> Head:
        return load_head(self.directory / "probes" / f"{task}.safetensors")


def recipe_key(base_dir: Path, tasks: list[TaskData], recipe: FineTuneRecipe, seed: int) -> str:
    base_files = sorted(p.name for p in base_dir.iterdir() if p.is_file())
    payload = {
        "version": ZOO_VERSION,
        "base": [base_dir.name, base_files, (base_dir / "config.json").read_text(encoding="utf-8")],
        "tasks": [t.fingerprint() for t in tasks],
        "recipe": dataclasses.asdict(recipe),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _advance(bar: Any, examples: int, loss: float) -> None:
    bar.update(examples)
    bar.set_postfix(loss=f"{loss:.3f}")


def build_zoo(
    base_dir: Path,
    tasks: list[TaskData],
    cache_dir: Path,
    *,
    recipe: FineTuneRecipe = FineTuneRecipe(),
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Zoo:
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    directory = cache_dir / "zoo" / recipe_key(base_dir, tasks, recipe, seed)
    (directory / "experts").mkdir(parents=True, exist_ok=True)
    (directory / "probes").mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id
    experts: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    base = None
    for index, task in enumerate(tasks):
        target = directory / "experts" / task.name
        probe_path = directory / "probes" / f"{task.name}.safetensors"
        if (target / DONE_FILE).is_file() and probe_path.is_file():
            experts[task.name] = target
            seconds[task.name] = read_json(target / DONE_FILE, what="zoo marker")["train_seconds"]
            continue
        for stale in target.parent.glob(f".{task.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted build; never used
        train = encode_split(tokenizer, task.train)
        if base is None:
            base = AutoModel.from_pretrained(base_dir).eval()
        if not probe_path.is_file():
            _atomic_save_head(
                train_probe(split_features(base, train, pad_id), train.labels, task.num_labels, seed), probe_path
            )
        echo(f"fine-tuning the {task.name} expert on {len(train)} examples (cached in {directory})")
        started = time.perf_counter()
        torch.manual_seed(seed + index)  # weights the checkpoint lacks (e.g. a pooler) initialise reproducibly
        encoder = AutoModel.from_pretrained(base_dir)
        head = load_head(probe_path)  # linear probe, then fine-tune (LP-FT): a better start for the head
        bar = tqdm(
            total=len(train) * recipe.epochs,
            desc=f"expert {index + 1}/{len(tasks)} {task.name}",
            unit="ex",
            disable=not progress,
        )
        fine_tune(
            encoder,
            head,
            train,
            pad_id,
            recipe,
            seed + index,
            progress=functools.partial(_advance, bar),
        )
        bar.close()
        elapsed = time.perf_counter() - started
        _publish_expert(
            encoder, head, tokenizer, target, {"task": task.name, "train_seconds": elapsed, "examples": len(train)}
        )
        experts[task.name] = target
        seconds[task.name] = elapsed
    return Zoo(directory, base_dir, experts, recipe, seconds)


def _atomic_save_head(head: Head, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    save_head(head, partial)
    os.replace(partial, path)


def _publish_expert(encoder, head: Head, tokenizer, target: Path, info: dict) -> None:
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    encoder.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    save_head(head, partial / HEAD_FILE)
    (partial / DONE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)  # an incomplete expert from an interrupted build
    os.rename(partial, target)


def encode_tasks(tokenizer, tasks: list[TaskData], split: str) -> dict[str, EncodedSplit]:
    return {t.name: encode_split(tokenizer, getattr(t, split)) for t in tasks}

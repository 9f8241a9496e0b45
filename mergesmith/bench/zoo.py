"""The expert zoo: one fine-tuned encoder (plus its head) per task, and the heads made from the pretrained encoder.

Under the zero-shot protocol each task's head is built once from its label descriptions by the base encoder
(``heads/``) and every expert is trained through it; under the probe protocol a linear probe of the frozen base
(``probes/``) starts each expert's own head (``bench.finetune``). Built once and cached under
``<cache>/zoo/<recipe hash>/``, where the hash covers the zoo version, the base model, the task data fingerprints
(label descriptions included), the recipe (its protocol included) and the seed, so a zoo of another protocol or an
older version is never reused; each expert's marker also records its protocol. Each expert is written into a hidden temporary directory and
renamed into place when complete, so an interrupted build resumes with the experts that finished and rebuilds the
one that did not; a half-written expert is never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mergesmith.bench.data import Example, TaskData
from mergesmith.bench.encoder import EncodedSplit, encode_split, train_probe
from mergesmith.bench.finetune import RECIPES, FineTuneRecipe, fine_tune
from mergesmith.bench.heads import HEAD_FILE, Head, check_label_texts, load_head, save_head, zero_shot_head
from mergesmith.errors import MergesmithError
from mergesmith.io.parse import read_json

ZOO_VERSION = 3  # 3: two protocols (zero-shot heads; probe LP-FT), length-bucketed batches, one thread per expert
DONE_FILE = "expert.json"
START_HEADS = {"zero_shot": "heads", "probe": "probes"}  # the directory of each protocol's heads made from the base


@dataclass
class Zoo:
    directory: Path
    base_dir: Path
    experts: dict[str, Path]  # task -> HF directory of the fine-tuned encoder (with its head file)
    recipe: FineTuneRecipe
    train_seconds: dict[str, float]

    @property
    def protocol(self) -> str:
        return self.recipe.protocol

    def head(self, task: str) -> Head:
        """The head every row is scored with on ``task``: the fixed zero-shot head, or the expert's own head."""
        return load_head(self.experts[task] / HEAD_FILE)

    def probe(self, task: str) -> Head | None:
        """The probe protocol's linear probe of the frozen base (the pretrained row's head); None under zero-shot."""
        path = self.directory / "probes" / f"{task}.safetensors"
        return load_head(path) if self.protocol == "probe" else None


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


def build_zoo(
    base_dir: Path,
    tasks: list[TaskData],
    cache_dir: Path,
    *,
    recipe: FineTuneRecipe = RECIPES["zero_shot"],
    seed: int = 0,
    jobs: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Zoo:
    """The zoo for ``tasks`` under ``recipe`` (its protocol), built where missing. Experts train in ``jobs`` processes
    (default: up to 2, one per core), each with one thread, so an expert's bytes never depend on ``jobs``."""
    from tqdm import tqdm

    if recipe.protocol == "zero_shot":
        for task in tasks:  # every task's descriptions are checked before any work
            check_label_texts(task.name, task.label_names, task.label_texts)
    directory = cache_dir / "zoo" / recipe_key(base_dir, tasks, recipe, seed)
    (directory / "experts").mkdir(parents=True, exist_ok=True)
    start_heads = directory / START_HEADS[recipe.protocol]
    start_heads.mkdir(parents=True, exist_ok=True)
    _make_start_heads(base_dir, tasks, recipe.protocol, start_heads, seed)

    experts: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    todo: list[_ExpertJob] = []
    for index, task in enumerate(tasks):
        target = directory / "experts" / task.name
        experts[task.name] = target
        marker = _read_marker(target)
        if marker is not None and marker.get("protocol") == recipe.protocol:
            seconds[task.name] = float(marker["train_seconds"])
            continue
        todo.append(
            _ExpertJob(
                base_dir, target, task.name, task.train, start_heads / f"{task.name}.safetensors", recipe, seed + index
            )
        )
    workers = max(1, min(jobs or min(2, os.cpu_count() or 1), len(todo) or 1))
    if todo:
        echo(
            f"fine-tuning {len(todo)} expert(s) in {workers} process(es) (cached in {directory}): "
            + ", ".join(f"the {job.task} expert on {len(job.train)} examples" for job in todo)
        )
    with tqdm(total=len(todo), desc="experts", unit="expert", disable=not progress or not todo) as bar:
        for name, elapsed in _run_jobs(todo, workers):
            seconds[name] = elapsed
            bar.update(1)
            bar.set_postfix_str(f"{name} {elapsed:.0f} s")
    return Zoo(directory, base_dir, experts, recipe, seconds)


def _read_marker(target: Path) -> dict | None:
    if not (target / DONE_FILE).is_file():
        return None
    try:
        return read_json(target / DONE_FILE, what="zoo marker")
    except (OSError, ValueError, MergesmithError):
        return None


def _make_start_heads(base_dir: Path, tasks: list[TaskData], protocol: str, directory: Path, seed: int) -> None:
    """The heads made from the pretrained encoder: zero-shot heads from the label descriptions, or linear probes."""
    from mergesmith.bench.features import TextFeaturizer

    missing = [t for t in tasks if not (directory / f"{t.name}.safetensors").is_file()]
    if not missing:
        return
    featurizer = TextFeaturizer.from_base(base_dir)
    base = featurizer.load(base_dir)
    for task in missing:
        if protocol == "zero_shot":
            head: Head = zero_shot_head(base, featurizer, task.label_texts)
        else:
            train = featurizer.encode(task.train)
            head = train_probe(featurizer(base, train), train.labels, task.num_labels, seed)
        _atomic_save_head(head, directory / f"{task.name}.safetensors")


@dataclass(frozen=True)
class _ExpertJob:
    base_dir: Path
    target: Path
    task: str
    train: tuple[Example, ...]
    start_head: Path
    recipe: FineTuneRecipe
    seed: int


def _run_jobs(todo: list[_ExpertJob], workers: int) -> Iterator[tuple[str, float]]:
    if workers == 1:
        for job in todo:
            yield job.task, _train_expert(job)
        return
    import multiprocessing

    # spawn: a forked child would inherit the parent's torch thread pool and whatever it holds
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        yield from pool.imap_unordered(_train_named_expert, todo)
        pool.close()
    except BaseException:
        # an error, Ctrl-C or SIGTERM: stop the other experts now rather than let them train to the end; their
        # half-written directories are never used (``_publish_expert``)
        pool.terminate()
        raise
    finally:
        pool.join()


def _train_named_expert(job: _ExpertJob) -> tuple[str, float]:
    return job.task, _train_expert(job)


def _train_expert(job: _ExpertJob) -> float:
    """Fine-tune one expert with one thread and publish it atomically; returns the wall seconds it took."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the expert's bytes must not depend on how many experts train at once
    try:
        for stale in job.target.parent.glob(f".{job.task}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted build; never used
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(job.base_dir)
        train = encode_split(tokenizer, job.train)
        torch.manual_seed(job.seed)  # weights the checkpoint lacks (e.g. a pooler) initialise reproducibly
        encoder = AutoModel.from_pretrained(job.base_dir)
        head = load_head(job.start_head)
        fine_tune(encoder, head, train, tokenizer.pad_token_id, job.recipe, job.seed)
        elapsed = time.perf_counter() - started
        info = {
            "task": job.task,
            "protocol": job.recipe.protocol,
            "recipe": dataclasses.asdict(job.recipe),
            "train_seconds": elapsed,
            "examples": len(train),
        }
        _publish_expert(encoder, head, tokenizer, job.target, info)
        return elapsed
    finally:
        torch.set_num_threads(threads)


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

"""Task data for the bench: labeled text examples in fixed train / validation / test splits, and their JSON cache.

A split depends only on the examples and the seed: the input is sorted before the seeded shuffle, so the order in
which a builder happened to read files never changes which example lands in which split.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import MergesmithError
from mergesmith.io.parse import read_json

# A label description is a short phrase embedded by the encoder, which reads at most 64 tokens of it.
MAX_LABEL_TEXT_CHARS = 300

# Bump when the JSON layout or the split procedure changes: it is part of every cache key.
DATA_FORMAT_VERSION = 2


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class SplitSizes:
    """Caps on each split; a split holds fewer examples when the task has fewer to give."""

    train: int
    validation: int
    test: int

    def __post_init__(self) -> None:
        for field, value in (("train", self.train), ("validation", self.validation), ("test", self.test)):
            if not isinstance(value, int) or value < 1:
                raise MergesmithError(f"split size {field}={value!r} must be a positive integer")


SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskData:
    name: str
    label_names: tuple[str, ...]
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    # One short a-priori description per class, in label order ("a positive review of a food product"): the text a
    # zero-shot head embeds. Empty when the task has none; then only the linear-probe protocol can score it.
    label_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.label_names) < 2:
            raise MergesmithError(f"task {self.name}: needs at least 2 labels, got {list(self.label_names)}")
        if len(set(self.label_names)) != len(self.label_names):
            raise MergesmithError(f"task {self.name}: label names repeat: {list(self.label_names)}")
        for split in SPLITS:
            examples = getattr(self, split)
            if not examples:
                raise MergesmithError(f"task {self.name}: the {split} split is empty; give the task more examples")
            for example in examples:
                # bool is an int subclass; a True label is almost certainly a parsing slip, so refuse it too.
                if type(example.label) is not int or not 0 <= example.label < len(self.label_names):
                    raise MergesmithError(
                        f"task {self.name}: {split} example labelled {example.label!r}, outside its "
                        f"{len(self.label_names)} labels {list(self.label_names)}; fix the label or the label list"
                    )
        if self.label_texts:
            check_label_texts(self.name, self.label_names, self.label_texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def splits(self) -> dict[str, tuple[Example, ...]]:
        return {split: getattr(self, split) for split in SPLITS}

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "label_names": list(self.label_names),
            "label_texts": list(self.label_texts),
            **{split: [[e.text, e.label] for e in examples] for split, examples in self.splits().items()},
        }

    @classmethod
    def from_json(cls, payload: dict) -> TaskData:
        train, validation, test = (tuple(Example(text, label) for text, label in payload[s]) for s in SPLITS)
        return cls(
            name=payload["name"],
            label_names=tuple(payload["label_names"]),
            train=train,
            validation=validation,
            test=test,
            label_texts=tuple(payload["label_texts"]),
        )

    def fingerprint(self) -> str:
        """sha256 of the name, labels, label texts and every split's content in order; equal fingerprints, equal data."""
        canonical = json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def label_counts(self, split: str) -> list[int]:
        counts = [0] * self.num_labels
        for example in getattr(self, split):
            counts[example.label] += 1
        return counts


def check_label_texts(task: str, label_names: Sequence[str], label_texts: Sequence[object]) -> None:
    """One non-blank description per class, no two alike once case and whitespace are ignored: two classes with
    the same description would get the same zero-shot head row, and the head could not tell them apart."""
    for index, name in enumerate(label_names):
        if index >= len(label_texts):
            raise MergesmithError(
                f"task {task}: class {name!r} has no label description ({len(label_texts)} texts for "
                f"{len(label_names)} classes); give one text per class, in label order"
            )
        text = label_texts[index]
        if not isinstance(text, str):
            raise MergesmithError(f"task {task}: class {name!r} has label description {text!r}, not a text")
        if not text.strip():
            raise MergesmithError(f"task {task}: class {name!r} has a blank label description; give one text per class")
        if len(text) > MAX_LABEL_TEXT_CHARS:
            raise MergesmithError(
                f"task {task}: class {name!r} has a label description of {len(text)} characters; write a short "
                f"phrase (at most {MAX_LABEL_TEXT_CHARS} characters: the encoder reads only its first 64 tokens)"
            )
    if len(label_texts) > len(label_names):
        raise MergesmithError(
            f"task {task}: {len(label_texts)} label descriptions for {len(label_names)} classes "
            f"{list(label_names)}; the extra one is {label_texts[len(label_names)]!r}; give one text per class"
        )
    owner: dict[str, str] = {}
    for name, text in zip(label_names, label_texts):
        key = " ".join(str(text).lower().split())
        if key in owner:
            raise MergesmithError(
                f"task {task}: classes {owner[key]!r} and {name!r} have the same label description {text!r}; "
                "give each class its own"
            )
        owner[key] = name


def unique_examples(examples: Iterable[Example]) -> list[Example]:
    """One copy of each text; a text that appears with two different labels is dropped altogether.

    Duplicates would otherwise land in two splits (a test example seen in training), and a text with two labels
    has no right answer.
    """
    labels: dict[str, set[int]] = {}
    for example in examples:
        labels.setdefault(example.text, set()).add(example.label)
    return [Example(text, next(iter(found))) for text, found in labels.items() if len(found) == 1]


def split(
    examples: Sequence[Example],
    sizes: SplitSizes,
    seed: int,
    *,
    test: Sequence[Example] | None = None,
) -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]:
    """Seeded (train, validation, test), each capped by ``sizes``.

    Without ``test``, all three come from ``examples``: test first, then validation, then train, so raising the
    train cap never moves an example out of validation or test. With ``test`` (a task's official test split),
    ``examples`` supplies train and validation only, and the official test examples are subsampled to the cap.
    """
    if test is None:
        return split_groups([[example] for example in examples], sizes, seed)
    rng = random.Random(seed)
    pool = _shuffled(examples, rng)
    test_part = _shuffled(test, rng)[: sizes.test]
    validation, train = _fill([[example] for example in pool], (sizes.validation, sizes.train))
    return train, validation, tuple(test_part)


def split_groups(
    groups: Sequence[Sequence[Example]], sizes: SplitSizes, seed: int
) -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]:
    """Like ``split``, but the examples of one group (e.g. the snippets of one source file) all land in one split.

    Whole groups are dealt in seeded order to test, then validation, then train; the group that reaches a split's
    cap gives that split what fits and the rest of it is dropped, never passed to the next split. So a test example
    never shares a group with a training example, and each split is still filled to its cap. With one example per
    group this is exactly ``split``'s shuffle.
    """
    rng = random.Random(seed)
    ordered = sorted(
        (sorted(group, key=_sort_key) for group in groups if group), key=lambda g: [_sort_key(e) for e in g]
    )
    rng.shuffle(ordered)
    test, validation, train = _fill(ordered, (sizes.test, sizes.validation, sizes.train))
    return train, validation, test


def _fill(groups: Sequence[Sequence[Example]], caps: Sequence[int]) -> list[tuple[Example, ...]]:
    """Deal ``groups`` in order into one part per cap; a group never spans two parts."""
    parts: list[tuple[Example, ...]] = []
    remaining = iter(groups)
    for cap in caps:
        part: list[Example] = []
        while len(part) < cap:
            group = next(remaining, None)
            if group is None:
                break
            part += group[: cap - len(part)]
        parts.append(tuple(part))
    return parts


def _sort_key(example: Example) -> tuple[str, int]:
    return (example.text, example.label)


def _shuffled(examples: Sequence[Example], rng: random.Random) -> list[Example]:
    ordered = sorted(examples, key=_sort_key)
    rng.shuffle(ordered)
    return ordered


# --- JSON cache of built tasks -----------------------------------------------------------------------------------


def cache_key(task: str, sizes: SplitSizes, seed: int, builder_version: int) -> str:
    recipe = {
        "task": task,
        "sizes": [sizes.train, sizes.validation, sizes.test],
        "seed": seed,
        "builder_version": builder_version,
        "format": DATA_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached_task_path(cache_dir: Path, task: str, key: str) -> Path:
    return Path(cache_dir) / "tasks" / f"{task}-{key}.json"


def load_cached_task(path: Path) -> TaskData | None:
    """The task stored at ``path``, or None if it is missing, unreadable, or its content does not match its
    fingerprint (a truncated or hand-edited file is rebuilt, never trusted)."""
    try:
        payload = read_json(path, what="cached task", limit=1 << 30)
        task = TaskData.from_json(payload["task"])
    except (OSError, ValueError, KeyError, TypeError, MergesmithError):
        return None
    return task if task.fingerprint() == payload.get("fingerprint") else None


def save_cached_task(path: Path, task: TaskData) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": task.fingerprint(), "task": task.to_json()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

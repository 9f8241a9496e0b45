"""Scoring a merged encoder the way the bench does: each task's split through the pool's featurizer and the task's
head (``Evaluator``), the average and normalized accuracy of a row, and the peak memory a merge adds (``PeakRss``).

Text features of all the Evaluator's splits are computed in one pass over length buckets (``bench.buckets``), built
once per Evaluator since they depend only on the token ids; other featurizers (images) score split by split."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from mergesmith.bench.buckets import LengthBuckets, bucket_by_length, bucketed_features
from mergesmith.bench.encoder import split_features
from mergesmith.bench.heads import Head
from mergesmith.errors import MergesmithError


@dataclass
class Evaluator:
    """Scores an encoder on every task's split with the task's head.

    ``features(encoder, split) -> [N, width]`` is the pool's featurizer; an int stands for the pad id of a text
    tokenizer (the text features of ``mergesmith.bench.encoder``), as the bench was first written for text only.
    Text features (a pad id, or a featurizer with ``length_buckets``) of every task are computed in one bucketed pass.

    ``precision``: ``"fp32"`` (default), or ``"bf16"`` to run the text encoder under bf16 autocast: several times
    faster on CPUs with AMX, but features move by ~1e-2 and accuracies by up to half a point, so scores are not
    comparable with fp32 ones.
    """

    tasks: list  # objects with a ``.name``
    splits: dict
    heads: Mapping[str, Head | None]
    features: Callable[..., torch.Tensor] | int
    precision: str = "fp32"
    _buckets: tuple[tuple[str, ...], LengthBuckets] | None = field(default=None, init=False, repr=False, compare=False)

    def _features(self, encoder, split) -> torch.Tensor:
        if isinstance(self.features, int):
            return split_features(encoder, split, self.features)
        return self.features(encoder, split)

    def _length_buckets(self, names: tuple[str, ...]) -> LengthBuckets | None:
        """The length buckets over the splits of ``names`` (cached), or None when the features are not text."""
        if self._buckets is not None and self._buckets[0] == names:
            return self._buckets[1]
        splits = {name: self.splits[name] for name in names}
        make = getattr(self.features, "length_buckets", None)
        if isinstance(self.features, int):
            buckets = bucket_by_length(splits, self.features)
        elif make is not None:
            buckets = make(splits)
        else:
            return None
        self._buckets = (names, buckets)
        return buckets

    def features_by_task(self, encoder, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The encoder's features of the splits of the tasks ``names``, each in its split's order."""
        buckets = self._length_buckets(names)
        if buckets is None:
            if self.precision != "fp32":
                raise MergesmithError(f"precision {self.precision!r} applies to text encoders only")
            return {name: self._features(encoder, self.splits[name]) for name in names}
        return bucketed_features(encoder, buckets, self.precision)

    def correct(self, encoder) -> dict[str, torch.Tensor | None]:
        """Per task, a bool per example of its split: did the head's top class match the label (what paired
        comparisons of two rows resample)."""
        # A task without a head (a user pool's task without a train split for the probe) is not scored.
        scored = tuple(task.name for task in self.tasks if self.heads[task.name] is not None)
        features = self.features_by_task(encoder, scored)
        hits: dict[str, torch.Tensor | None] = {}
        for task in self.tasks:
            head = self.heads[task.name]
            if head is None:
                hits[task.name] = None
                continue
            with torch.no_grad():
                hits[task.name] = head(features[task.name]).argmax(-1) == self.splits[task.name].labels
        return hits

    def __call__(self, encoder) -> dict[str, float | None]:
        return {name: None if hit is None else float(hit.float().mean()) for name, hit in self.correct(encoder).items()}


def average(scores: Mapping[str, float | None]) -> float:
    values = [v for v in scores.values() if v is not None]
    return sum(values) / len(values)


def normalized(scores: Mapping[str, float | None], expert: Mapping[str, float | None]) -> float | None:
    # A user's expert may get nothing right on its own task; the ratio is then undefined, not a division error.
    # So is it when a task has no score (a task without a head).
    ratios = []
    for task, own in expert.items():
        score = scores[task]
        if own is None or own == 0 or score is None:
            return None
        ratios.append(score / own)
    return sum(ratios) / len(ratios)


class PeakRss:
    """Samples the process's resident memory in a thread; ``peak_mb`` is the rise above the starting level."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.start_rss = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.start_rss = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start_rss) / 1e6


__all__ = ["Evaluator", "PeakRss", "average", "normalized"]

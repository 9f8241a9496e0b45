"""Scoring a merged encoder the way the bench does: each task's split through the pool's featurizer and the task's
head (``Evaluator``), the average and normalized accuracy of a row, and the peak memory a merge adds (``PeakRss``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mergesmith.bench.encoder import split_features


@dataclass
class Evaluator:
    """Scores an encoder on every task's split with the task's head.

    ``features(encoder, split) -> [N, width]`` is the pool's featurizer; an int stands for the pad id of a text
    tokenizer (the text features of ``mergesmith.bench.encoder``), as the bench was first written for text only.
    """

    tasks: list  # objects with a ``.name``
    splits: dict
    heads: dict[str, torch.nn.Linear | None]
    features: Callable | int

    def __post_init__(self) -> None:
        if isinstance(self.features, int):
            pad_id = self.features
            self.features = lambda encoder, split: split_features(encoder, split, pad_id)

    def __call__(self, encoder) -> dict[str, float | None]:
        scores = {}
        for task in self.tasks:
            head = self.heads[task.name]
            if head is None:  # no head for this task (a user pool's task without a train split for the probe)
                scores[task.name] = None
                continue
            split = self.splits[task.name]
            feats = self.features(encoder, split)
            with torch.no_grad():
                scores[task.name] = float((head(feats).argmax(-1) == split.labels).float().mean())
        return scores


def average(scores: dict[str, float | None]) -> float:
    values = [v for v in scores.values() if v is not None]
    return sum(values) / len(values)


def normalized(scores: dict[str, float], expert: dict[str, float]) -> float | None:
    # A user's expert may get nothing right on its own task; the ratio is then undefined, not a division error.
    if any(expert[t] == 0 for t in expert):
        return None
    return sum(scores[t] / expert[t] for t in expert) / len(expert)


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

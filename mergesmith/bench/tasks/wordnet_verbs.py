"""WordNet verb supersense: gloss -> one of the 15 verb lexicographer files (verb.body ... verb.weather)."""

from __future__ import annotations

from pathlib import Path

from mergesmith.bench.data import SplitSizes, TaskData
from mergesmith.bench.tasks import _wordnet

NAME = "wordnet_verbs"
VERSION = _wordnet.VERSION
LABEL_NAMES = _wordnet.label_names("verb")


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    return _wordnet.build_supersense(NAME, "verb", cache_dir, sizes, seed)

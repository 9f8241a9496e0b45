"""WordNet noun supersense: gloss -> one of the 26 noun lexicographer files (noun.Tops ... noun.time)."""

from __future__ import annotations

from pathlib import Path

from mergesmith.bench.data import SplitSizes, TaskData
from mergesmith.bench.tasks import _wordnet

NAME = "wordnet_nouns"
VERSION = _wordnet.VERSION
LABEL_NAMES = _wordnet.label_names("noun")


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    return _wordnet.build_supersense(NAME, "noun", cache_dir, sizes, seed)

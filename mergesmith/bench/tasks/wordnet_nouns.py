"""WordNet noun supersense: gloss -> one of the 26 noun lexicographer files (noun.Tops ... noun.time)."""

from __future__ import annotations

from pathlib import Path

from mergesmith.bench.data import SplitSizes, TaskData
from mergesmith.bench.tasks import _wordnet

NAME = "wordnet_nouns"
VERSION = _wordnet.VERSION
SOURCE = _wordnet.SOURCE
LICENCE = _wordnet.LICENCE
LABEL_NAMES = _wordnet.label_names("noun")
# lexnames(5WN)'s description of each file, lightly shortened, in LABEL_NAMES order.
LABEL_TEXTS = (
    "a noun for a very general concept",
    "a noun for acts or actions",
    "a noun for animals",
    "a noun for man-made objects",
    "a noun for attributes of people and objects",
    "a noun for body parts",
    "a noun for cognitive processes and contents",
    "a noun for communicative processes and contents",
    "a noun for natural events",
    "a noun for feelings and emotions",
    "a noun for foods and drinks",
    "a noun for groupings of people or objects",
    "a noun for spatial position",
    "a noun for goals",
    "a noun for natural objects (not man-made)",
    "a noun for people",
    "a noun for natural phenomena",
    "a noun for plants",
    "a noun for possession and transfer of possession",
    "a noun for natural processes",
    "a noun for quantities and units of measure",
    "a noun for relations between people or things or ideas",
    "a noun for two and three dimensional shapes",
    "a noun for stable states of affairs",
    "a noun for substances",
    "a noun for time and temporal relations",
)


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    return _wordnet.build_supersense(NAME, "noun", LABEL_TEXTS, cache_dir, sizes, seed)

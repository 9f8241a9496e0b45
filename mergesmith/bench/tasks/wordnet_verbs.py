"""WordNet verb supersense: gloss -> one of the 15 verb lexicographer files (verb.body ... verb.weather)."""

from __future__ import annotations

from pathlib import Path

from mergesmith.bench.data import SplitSizes, TaskData
from mergesmith.bench.tasks import _wordnet

NAME = "wordnet_verbs"
VERSION = _wordnet.VERSION
SOURCE = _wordnet.SOURCE
LICENCE = _wordnet.LICENCE
LABEL_NAMES = _wordnet.label_names("verb")
# lexnames(5WN)'s description of each file, in LABEL_NAMES order.
LABEL_TEXTS = (
    "verbs of grooming, dressing and bodily care",
    "verbs of size, temperature change, intensifying",
    "verbs of thinking, judging, analyzing, doubting",
    "verbs of telling, asking, ordering, singing",
    "verbs of fighting, athletic activities",
    "verbs of eating and drinking",
    "verbs of touching, hitting, tying, digging",
    "verbs of sewing, baking, painting, performing",
    "verbs of feeling",
    "verbs of walking, flying, swimming",
    "verbs of seeing, hearing, feeling",
    "verbs of buying, selling, owning",
    "verbs of political and social activities and events",
    "verbs of being, having, spatial relations",
    "verbs of raining, snowing, thawing, thundering",
)


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    return _wordnet.build_supersense(NAME, "verb", LABEL_TEXTS, cache_dir, sizes, seed)

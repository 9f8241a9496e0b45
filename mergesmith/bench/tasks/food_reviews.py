"""Food-review sentiment: Amazon fine-food reviews labelled great / other, from R's modeldata package.

``small_fine_foods`` is two data frames, ``training_data`` (4000 reviews) and ``testing_data`` (1000), with
columns product, review, score. The official test split is the test split here; validation is carved from the
official training split with the seed.
"""

from __future__ import annotations

from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split, unique_examples
from mergesmith.bench.sources import debian_package
from mergesmith.bench.tasks._rlazyload import read_lazyload_object
from mergesmith.errors import MergesmithError

NAME = "food_reviews"
VERSION = 1
DEBIAN_PACKAGE = "r-cran-modeldata"
R_PACKAGE_DIR = "usr/lib/R/site-library/modeldata"
SOURCE = f"Debian {DEBIAN_PACKAGE} (R package modeldata: small_fine_foods)"
LICENCE = "MIT"
LABEL_NAMES = ("great", "other")
LABEL_TEXTS = ("a great review of a food product", "a review of a food product that is not great")


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    package = debian_package(DEBIAN_PACKAGE, cache_dir) / R_PACKAGE_DIR
    official_train = unique_examples(_examples(read_lazyload_object(package, "training_data")))
    official_test = unique_examples(_examples(read_lazyload_object(package, "testing_data")))
    # A few reviews appear in both official splits; keeping them in training would score the model on text it
    # was trained on.
    test_texts = {example.text for example in official_test}
    train_pool = [example for example in official_train if example.text not in test_texts]
    train, validation, test = split(train_pool, sizes, seed, test=official_test)
    return TaskData(NAME, LABEL_NAMES, train, validation, test, LABEL_TEXTS)


def _examples(frame) -> list[Example]:
    examples = []
    for review, score in zip(frame["review"], frame["score"]):
        if score not in LABEL_NAMES:
            raise MergesmithError(
                f"task {NAME}: score {score!r} is not one of {list(LABEL_NAMES)}; {DEBIAN_PACKAGE} has changed"
            )
        # Collapse runs of spaces (the reviews have many) so duplicates compare equal; the tokenizer ignores
        # whitespace anyway.
        text = " ".join(str(review).split())
        if text:
            examples.append(Example(text, LABEL_NAMES.index(score)))
    return examples

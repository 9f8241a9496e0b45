"""Jane Austen novel attribution: which of the six novels a 3-line passage comes from (R's janeaustenr package).

Each novel is a character vector of text lines. Passages are consecutive non-overlapping runs of 3 non-empty lines
(paragraph breaks are crossed, so dialogue-heavy stretches are kept). Chapter and volume headings, the front matter
before the first heading and end markers are dropped: their formatting differs per novel ("CHAPTER 1",
"Chapter 1", "CHAPTER I") and would name the novel without any reading.
"""

from __future__ import annotations

import re
from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split, unique_examples
from mergesmith.bench.sources import debian_package
from mergesmith.bench.tasks._rlazyload import read_lazyload_object

NAME = "austen"
VERSION = 1
DEBIAN_PACKAGE = "r-cran-janeaustenr"
R_PACKAGE_DIR = "usr/lib/R/site-library/janeaustenr"
LINES_PER_PASSAGE = 3

# (R object name, label) in publication order, as janeaustenr::austen_books() lists them.
NOVELS = (
    ("sensesensibility", "Sense & Sensibility"),
    ("prideprejudice", "Pride & Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
)
SOURCE = f"Debian {DEBIAN_PACKAGE} (R package janeaustenr)"
LICENCE = "MIT (the novels are in the public domain)"
LABEL_NAMES = tuple(label for _, label in NOVELS)
# The titles only, written out. Listing each novel's main characters would double zero-shot accuracy, because the
# names occur in the passages, but that is tuning the head to the test rather than describing the class a priori.
LABEL_TEXTS = tuple(
    f"a passage from Jane Austen's novel {title}"
    for title in (
        "Sense and Sensibility",
        "Pride and Prejudice",
        "Mansfield Park",
        "Emma",
        "Northanger Abbey",
        "Persuasion",
    )
)

_HEADING = re.compile(r"^(chapter|volume)\s+([0-9]+|[ivxlc]+)\.?$", re.IGNORECASE)
_END_MARK = re.compile(r"^(the end|finis)$", re.IGNORECASE)


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    package = debian_package(DEBIAN_PACKAGE, cache_dir) / R_PACKAGE_DIR
    examples = []
    for label, (r_name, _) in enumerate(NOVELS):
        lines = [str(line) for line in read_lazyload_object(package, r_name)]
        examples += [Example(passage, label) for passage in passages(lines)]
    train, validation, test = split(unique_examples(examples), sizes, seed)
    return TaskData(NAME, LABEL_NAMES, train, validation, test, LABEL_TEXTS)


def passages(lines: list[str]) -> list[str]:
    body = _story_lines(lines)
    whole = len(body) - len(body) % LINES_PER_PASSAGE
    return [" ".join(body[i : i + LINES_PER_PASSAGE]) for i in range(0, whole, LINES_PER_PASSAGE)]


def _story_lines(lines: list[str]) -> list[str]:
    """The non-empty lines from the first chapter heading on, without headings and end markers."""
    stripped = [line.strip() for line in lines]
    first = next((i for i, line in enumerate(stripped) if _HEADING.match(line)), 0)
    return [line for line in stripped[first:] if line and not _HEADING.match(line) and not _END_MARK.match(line)]

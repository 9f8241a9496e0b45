"""WordNet 3.0 supersense tasks: a synset's gloss -> the lexicographer file it was written in.

Each non-comment line of ``data.noun`` / ``data.verb`` is one synset::

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [pointers ...] [frames ...] | gloss

``w_cnt`` is hexadecimal; ``lex_filenum`` indexes ``LEXNAMES``. License header lines start with two spaces.

The text is ``"<first lemma>: <gloss>"``, like a dictionary entry. The gloss alone is often a bare fragment ("a
member of the genus Canis") that says little without the word it defines; the lemma cannot give the label away,
since one lemma has senses in several lexicographer files, and each synset is one example.
"""

from __future__ import annotations

import re
from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split, unique_examples
from mergesmith.bench.sources import debian_package
from mergesmith.errors import MergesmithError

VERSION = 1
DEBIAN_PACKAGE = "wordnet-base"
SOURCE = f"Debian {DEBIAN_PACKAGE} (WordNet 3.0)"
LICENCE = "WordNet 3.0 licence (BSD-like)"
DATA_DIR = "usr/share/wordnet"

# WordNet 3.0's lexicographer files in file-number order (lexnames(5WN)); the position is lex_filenum.
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

# Adjective lemmas carry a syntactic marker such as "(a)"; none appear in nouns or verbs, but strip it regardless.
_MARKER = re.compile(r"\([a-z]+\)$")


def label_names(pos: str) -> tuple[str, ...]:
    return tuple(name for name in LEXNAMES if name.startswith(pos + "."))


def build_supersense(
    task: str, pos: str, label_texts: tuple[str, ...], cache_dir: Path, sizes: SplitSizes, seed: int
) -> TaskData:
    path = debian_package(DEBIAN_PACKAGE, cache_dir) / DATA_DIR / f"data.{pos}"
    names = label_names(pos)
    examples = unique_examples(read_synsets(path, task, names))
    train, validation, test = split(examples, sizes, seed)
    return TaskData(task, names, train, validation, test, label_texts)


def read_synsets(path: Path, task: str, names: tuple[str, ...]) -> list[Example]:
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("  ") or not line.strip():
                continue
            head, bar, gloss = line.partition("|")
            fields = head.split()
            if not bar or len(fields) < 5 or not fields[1].isdigit():
                raise MergesmithError(
                    f"task {task}: {path} line {number} is not a synset line; {DEBIAN_PACKAGE} "
                    "may be damaged: delete its cache directory and rerun"
                )
            filenum = int(fields[1])
            lexname = LEXNAMES[filenum] if filenum < len(LEXNAMES) else f"lexicographer file {filenum}"
            if lexname not in names:
                raise MergesmithError(
                    f"task {task}: {path} line {number} is in lexicographer file {lexname}, not one of {list(names)}"
                )
            lemma = _MARKER.sub("", fields[4]).replace("_", " ")
            examples.append(Example(f"{lemma}: {gloss.strip()}", names.index(lexname)))
    return examples

"""Fortune-cookie category: which fortune(6) file an entry comes from (Debian packages fortunes, fortunes-min).

Each category file under usr/share/games/fortunes/ holds entries separated by lines containing only ``%``; the
``.dat`` files are strfile indexes and the ``.u8`` files are symlinks to the text files, so both are skipped.
Entries that occur twice, or in two categories, are dropped before counting, and the categories with at least
``MIN_ENTRIES`` entries left become the labels (sorted by name).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split, unique_examples
from mergesmith.bench.sources import debian_package
from mergesmith.errors import MergesmithError

NAME = "fortunes"
VERSION = 1
DEBIAN_PACKAGES = ("fortunes", "fortunes-min")
FORTUNE_DIR = "usr/share/games/fortunes"
SOURCE = "Debian " + ", ".join(DEBIAN_PACKAGES)
LICENCE = "BSD (fortune-mod)"
MIN_ENTRIES = 625
# The labels are the categories found with MIN_ENTRIES entries, so the descriptions are keyed by category; a
# category that qualifies without a description here is refused by TaskData, naming it.
LABEL_TEXTS = {
    "computers": "a joke about computers, programmers and software",
    "cookie": "a fortune cookie saying or proverb",
    "definitions": "a humorous dictionary definition of a word",
    "miscellaneous": "a miscellaneous witty remark",
    "people": "a quotation by a famous person",
    "politics": "a quip about politics, government and politicians",
    "songs-poems": "lines from a song or a poem",
    "work": "a joke about work, jobs and the office",
}


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    files = sorted(
        (path for package in DEBIAN_PACKAGES for path in category_files(debian_package(package, cache_dir))),
        key=lambda path: path.name,
    )
    names = [path.name for path in files]
    if len(set(names)) != len(names):
        raise MergesmithError(f"task {NAME}: a category file appears in two packages: {sorted(names)}")
    everything = unique_examples(
        Example(entry, index) for index, path in enumerate(files) for entry in read_entries(path)
    )
    counts = Counter(example.label for example in everything)
    kept = [index for index in range(len(files)) if counts[index] >= MIN_ENTRIES]
    if len(kept) < 2:
        raise MergesmithError(
            f"task {NAME}: only {len(kept)} categories have {MIN_ENTRIES} entries; "
            f"{' and '.join(DEBIAN_PACKAGES)} have changed"
        )
    relabel = {old: new for new, old in enumerate(kept)}
    examples = [Example(e.text, relabel[e.label]) for e in everything if e.label in relabel]
    train, validation, test = split(examples, sizes, seed)
    labels = tuple(names[index] for index in kept)
    texts = tuple(LABEL_TEXTS.get(label, "") for label in labels)
    return TaskData(NAME, labels, train, validation, test, texts)


def category_files(package_root: Path) -> list[Path]:
    folder = package_root / FORTUNE_DIR
    return [
        path
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.is_symlink() and path.suffix not in (".dat", ".u8")
    ]


def read_entries(path: Path) -> list[str]:
    # The files are UTF-8; "replace" keeps one stray byte from failing the whole bench.
    entries: list[str] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current).strip())
            current = []
        else:
            current.append(line.rstrip())
    entries.append("\n".join(current).strip())
    return [entry for entry in entries if entry]

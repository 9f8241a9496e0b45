"""Programming-language identification: which of eight languages a 4-line source snippet is written in.

The sources are Debian packages whose names carry no language version (python3-sphinx, not libpython3.11-stdlib),
so the same names resolve on Debian 12 and 13. A snippet is a run of ``LINES_PER_SNIPPET`` consecutive non-blank
lines (non-overlapping), with the lines' common indentation removed so that it does not start mid-air. A snippet that
mentions copyright, licence, warranty or SPDX is dropped (licence headers read the same in every language), as is
one with fewer than ``MIN_LETTERS`` letters (a run of closing braces). Perl's POD blocks are removed first: they
are English documentation, not Perl.

Files are the unit of the split: every snippet of one file lands in the same split (``split_groups``), so a test
snippet never shares identifiers with a training snippet from the same file. At most ``MAX_SNIPPETS_PER_FILE``
snippets are taken from a file, so that a few long files do not make up a whole class (and, since files are dealt
whole, so that one file cannot swing a class's share of the test split), and then ``SNIPPETS_PER_LANGUAGE`` per
language, so the classes are balanced (on Debian 12, at the default sizes, each class is 11-14 % of the test split with
seed 0 and 7-18 % over seeds 0-3).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split_groups
from mergesmith.bench.sources import debian_package

NAME = "code_lang"
VERSION = 1

# label -> (Debian package, folder inside it, file-name pattern); the folders are searched recursively.
LANGUAGES = (
    ("Python", (("python3-sphinx", "usr", "*.py"),)),
    ("Perl", (("libmojolicious-perl", "usr", "*.pm"), ("libmoose-perl", "usr", "*.pm"))),
    ("Ruby", (("rubocop", "usr", "*.rb"),)),
    ("Shell", (("bash-completion", "usr/share/bash-completion/completions", "*"),)),
    ("Go", (("golang-golang-x-tools-dev", "usr", "*.go"),)),
    (
        "Rust",
        (
            ("librust-regex-dev", "usr", "*.rs"),
            ("librust-syn-dev", "usr", "*.rs"),
            ("librust-serde-dev", "usr", "*.rs"),
        ),
    ),
    # node-lodash also ships lodash's per-method packages, which repeat the main one; its own folder is enough.
    ("JavaScript", (("node-lodash", "usr/share/nodejs/lodash", "*.js"),)),
    ("PHP", (("php-symfony-console", "usr", "*.php"),)),
)
LABEL_NAMES = tuple(label for label, _ in LANGUAGES)
LABEL_TEXTS = (
    "Python source code",
    "Perl source code",
    "Ruby source code",
    "Bash shell script source code",
    "Go (golang) source code",
    "Rust source code",
    "JavaScript source code",
    "PHP source code",
)
DEBIAN_PACKAGES = tuple(package for _, sources in LANGUAGES for package, _, _ in sources)
SOURCE = "Debian " + ", ".join(DEBIAN_PACKAGES)
# Sphinx BSD-2; Mojolicious Artistic-2.0; Moose Artistic or GPL-1+; RuboCop, lodash, Symfony MIT; bash-completion
# GPL-2+; Go tools BSD-3; the Rust crates MIT or Apache-2.0.
LICENCE = "BSD-2, Artistic-2.0, Artistic/GPL-1+, MIT, GPL-2+, BSD-3, MIT/Apache-2.0 (one per package)"

LINES_PER_SNIPPET = 4
MIN_LETTERS = 10
MAX_SNIPPETS_PER_FILE = 15
SNIPPETS_PER_LANGUAGE = 1000
# Source files are far smaller (lodash.js, the largest, is 0.5 MB); a larger file is generated data, not code.
MAX_FILE_BYTES = 2 << 20

_BOILERPLATE = re.compile(r"copyright|licen[cs]e|warranty|\bspdx\b", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")
# A POD block runs from a line starting with "=word" to the next "=cut" line, or to the end of the file.
_POD = re.compile(r"^=[a-zA-Z].*?(?:^=cut\b[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    rng = random.Random(seed)
    files: list[tuple[int, list[str]]] = []  # (label, the file's snippets), files in a fixed order
    for label, (language, sources) in enumerate(LANGUAGES):
        for package, folder, pattern in sources:
            for path in source_files(debian_package(package, cache_dir) / folder, pattern):
                text = path.read_bytes().decode("utf-8", errors="replace")
                files.append((label, snippets(_POD.sub("", text) if language == "Perl" else text)))
    # A snippet found in two files is boilerplate (an import block, a generated header); it would tie the two files
    # together across splits, and in two languages it has no right answer, so it is dropped.
    files_with = Counter(s for _, found in files for s in set(found))
    by_language: list[list[tuple[int, str]]] = [[] for _ in LANGUAGES]  # (file index, snippet)
    for index, (label, found) in enumerate(files):
        own = [s for s in dict.fromkeys(found) if files_with[s] == 1]
        if len(own) > MAX_SNIPPETS_PER_FILE:
            own = rng.sample(own, MAX_SNIPPETS_PER_FILE)
        by_language[label] += [(index, s) for s in own]
    groups: dict[int, list[Example]] = {}
    for label, pool in enumerate(by_language):
        for index, snippet in rng.sample(pool, min(SNIPPETS_PER_LANGUAGE, len(pool))):
            groups.setdefault(index, []).append(Example(snippet, label))
    train, validation, test = split_groups(list(groups.values()), sizes, seed)
    return TaskData(NAME, LABEL_NAMES, train, validation, test, LABEL_TEXTS)


def source_files(folder: Path, pattern: str) -> list[Path]:
    """Regular text files under ``folder`` matching ``pattern``, sorted; symlinks (aliases) and binaries skipped."""
    found = []
    for path in sorted(folder.rglob(pattern)):
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        with open(path, "rb") as handle:
            if b"\0" in handle.read(1024):
                continue
        found.append(path)
    return found


def snippets(text: str) -> list[str]:
    """Consecutive non-overlapping runs of ``LINES_PER_SNIPPET`` non-blank lines that look like code."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    found = []
    for start in range(0, len(lines) - LINES_PER_SNIPPET + 1, LINES_PER_SNIPPET):
        chunk = lines[start : start + LINES_PER_SNIPPET]
        indent = min(len(line) - len(line.lstrip()) for line in chunk)
        body = "\n".join(line[indent:] for line in chunk)
        if not _BOILERPLATE.search(body) and len(_LETTER.findall(body)) >= MIN_LETTERS:
            found.append(body.strip())
    return found

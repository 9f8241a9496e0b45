"""UI-message language identification: which language a translated util-linux message is in (util-linux-locales).

The package ships one gettext catalogue per language under usr/share/locale/<lang>/LC_MESSAGES/. Every translated
``msgstr`` is one example (for plural messages, the first form). The catalogues translate the same English messages,
so the content of a message says nothing about its class: only the language does.

A message is cleaned before use: command-line option prefixes (``-a, --all``) and printf formats (``%s``) are
removed, since they are the same in every language, and whitespace is collapsed. Untranslated entries (msgstr equal
to msgid) are skipped, and so is any text with fewer than ``MIN_LETTERS`` letters or ``MIN_WORDS`` words (a bare
"%s: %m" or "UUID" has no language).
"""

from __future__ import annotations

import gettext
import io
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from mergesmith.bench.data import Example, SplitSizes, TaskData, split, unique_examples
from mergesmith.bench.sources import debian_package
from mergesmith.errors import MergesmithError

NAME = "langid_ui"
VERSION = 1
DEBIAN_PACKAGE = "util-linux-locales"
SOURCE = f"Debian {DEBIAN_PACKAGE}"
LICENCE = "GPL-2+"
LOCALE_DIR = "usr/share/locale"

# (gettext language code, label), ten Latin-script languages with confusable pairs (Czech/Polish/Croatian,
# Danish/Swedish, Spanish/Portuguese, German/Dutch).
LANGUAGES = (
    ("cs", "Czech"),
    ("da", "Danish"),
    ("de", "German"),
    ("es", "Spanish"),
    ("fr", "French"),
    ("hr", "Croatian"),
    ("nl", "Dutch"),
    ("pl", "Polish"),
    ("pt", "Portuguese"),
    ("sv", "Swedish"),
)
LABEL_NAMES = tuple(label for _, label in LANGUAGES)
LABEL_TEXTS = tuple(f"a sentence in {label}" for label in LABEL_NAMES)

MIN_LETTERS = 15
MIN_WORDS = 3
# util-linux's catalogues are under 1 MB; anything this large is not one, and is refused before it is read whole.
MAX_CATALOGUE_BYTES = 16 << 20

# One or more leading options, each maybe with an argument: "-a, --all", "--output <list>", "-n NUM", "--type=TYPE".
_OPTIONS = re.compile(r"^\s*(?:-{1,2}[\w?][\w-]*(?:[ =]<[^>]*>|=\S+|\s+[A-Z_]{2,})?,?\s+)+")
# A C printf conversion: flags, width, precision, length modifier, conversion (glibc's %m included).
_PRINTF = re.compile(r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|z|j|t)?[diouxXeEfgGcspm%]")
_LETTER = re.compile(r"[^\W\d_]")


def build(cache_dir: Path, sizes: SplitSizes, seed: int) -> TaskData:
    root = debian_package(DEBIAN_PACKAGE, cache_dir) / LOCALE_DIR
    examples = []
    for label, (code, _) in enumerate(LANGUAGES):
        catalogues = sorted((root / code / "LC_MESSAGES").glob("*.mo"))
        if not catalogues:
            raise MergesmithError(f"task {NAME}: no {code} catalogue under {root}; {DEBIAN_PACKAGE} has changed")
        for path in catalogues:
            examples += [Example(text, label) for text in message_texts(read_catalogue(path))]
    train, validation, test = split(unique_examples(examples), sizes, seed)
    return TaskData(NAME, LABEL_NAMES, train, validation, test, LABEL_TEXTS)


def read_catalogue(path: Path) -> dict:
    """The msgid -> msgstr table of the gettext .mo file at ``path`` (plural entries keyed by (msgid, n))."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CATALOGUE_BYTES + 1)
    if len(data) > MAX_CATALOGUE_BYTES:
        raise MergesmithError(
            f"{path} is over {MAX_CATALOGUE_BYTES >> 20} MB, too large for a message catalogue; "
            f"delete the cached {DEBIAN_PACKAGE} and rerun"
        )
    try:
        translations = gettext.GNUTranslations(io.BytesIO(data))
    except (OSError, ValueError, LookupError, struct.error, IndexError) as exc:
        # The stdlib raises OSError for a bad magic number or out-of-range offsets, struct.error when the file is
        # cut short, UnicodeDecodeError or LookupError for a bad charset.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise MergesmithError(
            f"cannot read the message catalogue {path} ({reason}); delete the cached {DEBIAN_PACKAGE} and rerun"
        ) from None
    # GNUTranslations keeps the parsed table in ``_catalog``; it has no public way to list the messages.
    catalogue: dict = vars(translations)["_catalog"]
    return catalogue


def message_texts(catalogue: dict) -> Iterator[str]:
    """The cleaned translated messages of one catalogue that are long enough to show their language."""
    for key, msgstr in catalogue.items():
        if isinstance(key, tuple):  # a plural entry: (msgid, form); the first form reads like a singular message
            msgid, form = key
            if form != 0:
                continue
        else:
            msgid = key
        msgid = msgid.rpartition("\x04")[2]  # drop a msgctxt prefix
        if not msgid or not msgstr or msgstr == msgid:  # the header entry, or untranslated
            continue
        text = clean_message(msgstr)
        if len(_LETTER.findall(text)) >= MIN_LETTERS and len(text.split()) >= MIN_WORDS:
            yield text


def clean_message(text: str) -> str:
    """``text`` without option prefixes at line starts and printf conversions, whitespace collapsed."""
    lines = (_PRINTF.sub(" ", _OPTIONS.sub("", line)) for line in text.splitlines())
    return " ".join(" ".join(lines).split())

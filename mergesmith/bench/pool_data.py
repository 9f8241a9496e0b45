"""Reading a user pool's task data: CSV / JSONL text files and image folders, and turning raw labels into indices.

Every reader returns ``Record``s (an input: a text or an image path; the raw label; where it came from, for error
messages). ``resolve_labels`` then maps the raw labels of all splits of a task to class indices, which index the
rows of the task's head:

- with ``labels`` given: values are matched by name (``1`` matches ``"1"``); if some value is not a name but every
  value is an integer below ``len(labels)``, the values are indices into ``labels``;
- without it: integers (JSON ints, or cells/folder names made of digits only) are class indices ``0..max``; any
  other values are names, in sorted order.

Indices are compared with the head's row count before any list is built from them, so a stray ``2000000000`` is one
line of error, not two billion label names; negative integers are names, not indices from the end.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mergesmith.bench.features import IMAGE_SUFFIXES
from mergesmith.bench.pool_schema import MAX_LABELS
from mergesmith.errors import MergesmithError
from mergesmith.io.parse import parse_json
from mergesmith.io.paths import open_regular

_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Record:
    input: str | Path  # the text, or the image file
    label: str | int  # as read: a name, or an integer
    where: str  # "file.csv row 12", "file.jsonl line 3", "dir/cat/1.png"


def read_split(fmt: str, path: Path, text_column: str, label_column: str, where: str) -> list[Record]:
    """The records of one split; ``where`` is the YAML path of the split (``tasks[0].data.test``) for messages."""
    if fmt == "imagefolder":
        if not path.is_dir():
            raise MergesmithError(
                f"{where}: {path} is not a directory; an imagefolder split is a directory of <label>/<image> files"
            )
        records = _read_imagefolder(path)
    else:
        if not path.exists():
            raise MergesmithError(
                f"{where}: no such file {path}; check the path (relative paths start at the pool file's directory)"
            )
        reader = _read_csv if fmt == "csv" else _read_jsonl
        records = reader(path, text_column, label_column, where)
    if not records:
        raise MergesmithError(f"{where}: {path} holds no examples; every split needs at least one")
    return records


def _read_csv(path: Path, text_column: str, label_column: str, where: str) -> list[Record]:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would otherwise stick to the first
        # column's name.
        with _open_text(path, where, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column, key in ((text_column, "text_column"), (label_column, "label_column")):
                if column not in columns:
                    raise MergesmithError(
                        f"{where}: {path.name} has no column {column!r} (columns: {', '.join(columns) or 'none'}); "
                        f"set data.{key}"
                    )
            records = []
            for row_number, row in enumerate(reader, start=2):  # row 1 is the header
                text, label = row.get(text_column), row.get(label_column)
                if text is None or label is None or label.strip() == "":
                    raise MergesmithError(
                        f"{where}: {path.name} row {row_number} has no {text_column!r} or no {label_column!r} value; fill it or remove the row"
                    )
                records.append(Record(text, label.strip(), f"{path.name} row {row_number}"))
    except UnicodeDecodeError:
        raise MergesmithError(f"{where}: {path} is not UTF-8 text; re-save it as UTF-8") from None
    except csv.Error as exc:
        raise MergesmithError(f"{where}: {path} is not valid CSV ({exc}); fix the file") from None
    return records


def _read_jsonl(path: Path, text_column: str, label_column: str, where: str) -> list[Record]:
    records = []
    try:
        with _open_text(path, where) as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError:
        raise MergesmithError(f"{where}: {path} is not UTF-8 text; re-save it as UTF-8") from None
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        at = f"{path.name} line {line_number}"
        item = parse_json(
            line, f"{where}: {at}", what="line", error=MergesmithError, top=dict, fix="one JSON object per line"
        )
        text, label = item.get(text_column), item.get(label_column)
        if not isinstance(text, str):
            raise MergesmithError(
                f"{where}: {at} has no text string under {text_column!r}; set data.text_column or fix the line"
            )
        # bool is an int subclass: a true/false label is a slip, not class 1/0.
        if (
            isinstance(label, bool)
            or not isinstance(label, (str, int))
            or (isinstance(label, str) and not label.strip())
        ):
            raise MergesmithError(
                f"{where}: {at} has no label (a name or an integer) under {label_column!r}; set data.label_column or fix the line"
            )
        records.append(Record(text, label.strip() if isinstance(label, str) else label, at))
    return records


def _open_text(path: Path, where: str, newline: str | None = None) -> io.TextIOWrapper:
    """A UTF-8 text handle on a regular file (a FIFO named like a data file would block for ever). utf-8-sig:
    spreadsheet exports often start with a byte-order mark that would otherwise stick to the first column's name."""
    try:
        fd, _ = open_regular(path, error=MergesmithError)
    except MergesmithError as exc:
        raise MergesmithError(f"{where}: {exc}") from None
    return io.TextIOWrapper(os.fdopen(fd, "rb"), encoding="utf-8-sig", newline=newline)


def _read_imagefolder(root: Path) -> list[Record]:
    records = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in sorted(label_dir.iterdir()):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                records.append(Record(image, label_dir.name, str(image)))
    return records


def _is_index(value: str | int) -> bool:
    return (isinstance(value, int) and value >= 0) or (isinstance(value, str) and bool(_DIGITS.fullmatch(value)))


def _index(value: str | int) -> int:
    """The class index an ``_is_index`` value stands for; digit strings too long to be one (Python refuses to
    convert more than 4300 digits) count as 10^12, beyond any label count."""
    if isinstance(value, str) and len(value.lstrip("0")) > 12:
        return 10**12
    return int(value)


def resolve_labels(
    splits: dict[str, list[Record]], labels: list[str] | None, where: str, head_rows: int | None = None
) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """(label names, class index of every record per split); ``where`` is the task's YAML path (``tasks[0]``);
    ``head_rows``: the head's outputs, which an index must stay below (checked before names are built)."""
    values = [r for records in splits.values() for r in records]
    if labels is not None:
        names = tuple(labels)
        by_name = {name: i for i, name in enumerate(names)}
        stray = next((r for r in values if str(r.label) not in by_name), None)
        if stray is None:
            return names, {s: [by_name[str(r.label)] for r in records] for s, records in splits.items()}
        if all(_is_index(r.label) and _index(r.label) < len(names) for r in values):
            return names, {s: [_index(r.label) for r in records] for s, records in splits.items()}
        # Name the value that is neither a listed name nor an index into the list: the one the user must fix.
        # (A mix of names and indices has no such value: then the first value that is not a name.)
        stray = next(
            (
                r
                for r in values
                if str(r.label) not in by_name and not (_is_index(r.label) and _index(r.label) < len(names))
            ),
            stray,
        )
        split = next(s for s, records in splits.items() if stray in records)
        raise MergesmithError(
            f"{where}.data.{split}: label {stray.label!r} ({stray.where}) is not among data.labels {list(names)}; "
            "add it to data.labels or fix the data"
        )
    if all(_is_index(r.label) for r in values):
        top = max(values, key=lambda r: _index(r.label))
        limit = min(MAX_LABELS, head_rows) if head_rows is not None else MAX_LABELS
        if _index(top.label) >= limit:
            split = next(s for s, records in splits.items() if top in records)
            whose = (
                f"the head has {head_rows} outputs"
                if head_rows is not None and head_rows < MAX_LABELS
                else f"a task has at most {MAX_LABELS} labels"
            )
            raise MergesmithError(
                f"{where}.data.{split}: label index {_short_label(top.label)} ({top.where}) is out of range: {whose}; "
                "fix the data or list the label names under data.labels"
            )
        names = tuple(str(i) for i in range(_index(top.label) + 1))
        indices = {s: [_index(r.label) for r in records] for s, records in splits.items()}
    else:
        names = tuple(sorted({str(r.label) for r in values}))
        by_name = {name: i for i, name in enumerate(names)}
        indices = {s: [by_name[str(r.label)] for r in records] for s, records in splits.items()}
    if len(names) < 2:
        raise MergesmithError(
            f"{where}.data: every example is labelled {names[0]!r}; a task needs at least 2 labels (list them under data.labels)"
        )
    return names, indices


def _short_label(value: str | int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"

"""The one JSON reader and the one YAML reader: every parse of a file or text mergesmith did not write itself goes here.

Python's parsers recurse once per nesting level (a few kilobytes of ``[[[[`` raise RecursionError), turn a
5000-digit integer into a ValueError, and allocate whatever the bytes describe. These readers bound everything
before the parser runs, and turn every failure into one line naming the file:

- size: at most ``limit`` bytes, checked with ``fstat`` before reading (``paths.read_regular``);
- nesting: JSON brackets are counted outside strings by a linear scan, YAML nesting by walking the parser's event
  stream (which does not recurse), both before any object is built; the YAML walk also counts nodes with aliases
  expanded, so a "billion laughs" document is refused instead of validated for ever;
- numbers: at most ``MAX_NUMBER_CHARS`` characters (Python refuses to convert integers of more than 4300 digits);
  a JSON float that overflows to infinity is refused; NaN and Infinity only where ``constants=True``;
- the top-level type: a file that should hold an object and holds a list is refused here.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
import yaml

from mergesmith.errors import CheckpointError, MergesmithError
from mergesmith.io.paths import FileIdentity, read_regular

MAX_DEPTH = 64  # a config.json nests about 4 deep, a merge YAML 6, a safetensors header 3
MAX_NUMBER_CHARS = 64  # a float64 needs 24 characters, an int64 20
MAX_NODES = 1_000_000  # YAML nodes, aliases expanded (a merge config has a few hundred)
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_YAML_BYTES = 16 * 1024 * 1024

# A JSON string, or an unterminated one up to the end: the match can never fail once it starts at a quote, so the
# scan stays linear (a pattern that must find the closing quote retries from every escaped quote: quadratic).
_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_CHUNK = 1 << 20


class _Refused(Exception):
    """A bound broken inside a parser hook; turned into the caller's error class with the file's name."""


def json_nesting(raw: bytes) -> tuple[int, int]:
    """(deepest bracket nesting, number of objects and arrays) of JSON bytes, brackets inside strings ignored.

    Linear and non-recursive (regexes drop the strings and everything but brackets, numpy sums the brackets a
    chunk at a time), so it is safe on any input; malformed JSON gets some answer and the parser refuses it."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    deepest = level = opened = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = _STEP[np.frombuffer(brackets, dtype=np.uint8, count=min(_CHUNK, len(brackets) - start), offset=start)]
        levels = np.cumsum(steps, dtype=np.int64) + level
        deepest = max(deepest, int(levels.max()))
        level = int(levels[-1])
        opened += int((steps > 0).sum())
    return deepest, opened


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"has a number of {len(text)} digits (at most {MAX_NUMBER_CHARS} are read)")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"has a number of {len(text)} characters (at most {MAX_NUMBER_CHARS} are read)")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"has the number {text}, out of the float64 range")
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not a JSON value")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"has the key {key!r} twice (keys must be unique names)")
        out[key] = value
    return out


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names: dict[type, str] = {dict: "an object (mapping)", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_json(
    raw: bytes | str,
    where: str,
    *,
    what: str = "JSON",
    error: type[MergesmithError] = CheckpointError,
    top: type | tuple[type, ...] | None = dict,
    constants: bool = True,
    unique_keys: bool = False,
    max_containers: int | None = None,
    fix: str = "fix or re-create the file",
) -> Any:
    """Parse JSON text with every bound checked; ``error`` with one line ``{where}: ...; {fix}`` on any problem."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth, containers = json_nesting(data)
    if depth > MAX_DEPTH:
        raise error(f"{where}: {what} nests {depth} levels deep, more than the {MAX_DEPTH} accepted; {fix}")
    if max_containers is not None and containers > max_containers:
        raise error(
            f"{where}: {what} holds {containers} objects and lists, more than the {max_containers} accepted; {fix}"
        )
    try:
        text = data.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise error(f"{where}: {what} is not valid UTF-8 (byte {e.start}); {fix}") from None
    try:  # json.loads treats a hook of None as not given
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=None if constants else _no_constant,
            object_pairs_hook=_unique_pairs if unique_keys else None,
        )
    except _Refused as e:
        raise error(f"{where}: {what} {e}; {fix}") from None
    except json.JSONDecodeError as e:
        raise error(
            f"{where}: {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {fix}"
        ) from None
    except (ValueError, RecursionError, MemoryError) as e:  # bounded above; a last guard, never a traceback
        raise error(f"{where}: {what} cannot be read ({type(e).__name__}); {fix}") from None
    if top is not None and not isinstance(value, top):
        raise error(f"{where}: {what} is not {_type_name(top)} but a {type(value).__name__}; {fix}")
    return value


def read_json(
    path: str | os.PathLike[str],
    *,
    what: str = "JSON",
    root: str | os.PathLike[str] | None = None,
    limit: int = MAX_JSON_BYTES,
    error: type[MergesmithError] = CheckpointError,
    top: type | tuple[type, ...] | None = dict,
    constants: bool = True,
    unique_keys: bool = False,
    fix: str = "fix or re-create the file",
) -> Any:
    """Read and parse a JSON file (a regular file, inside ``root`` when given, at most ``limit`` bytes)."""
    return read_json_with_identity(
        path,
        what=what,
        root=root,
        limit=limit,
        error=error,
        top=top,
        constants=constants,
        unique_keys=unique_keys,
        fix=fix,
    )[0]


def read_json_with_identity(
    path: str | os.PathLike[str],
    *,
    what: str = "JSON",
    root: str | os.PathLike[str] | None = None,
    limit: int = MAX_JSON_BYTES,
    error: type[MergesmithError] = CheckpointError,
    top: type | tuple[type, ...] | None = dict,
    constants: bool = True,
    unique_keys: bool = False,
    fix: str = "fix or re-create the file",
) -> tuple[Any, FileIdentity]:
    """``read_json`` and the identity of the file that was read (to check later that it did not change)."""
    raw, identity = read_regular(path, limit=limit, what=what, root=root, error=error)
    value = parse_json(
        raw, str(path), what=what, error=error, top=top, constants=constants, unique_keys=unique_keys, fix=fix
    )
    return value, identity


# ---- YAML -------------------------------------------------------------------------------------------------------


_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_RESOLVER = yaml.resolver.Resolver()


def _check_yaml_events(text: str, loader: type, where: str, what: str, error: type[MergesmithError], fix: str) -> None:
    """Walk the event stream (the parser is a state machine, not recursive) and refuse what the composer and the
    constructor would choke on: deep nesting, too many nodes once aliases are expanded, over-long numbers."""
    depth = 0
    nodes = 0
    # One frame per open collection: [nodes under it so far, deepest nesting under it, its anchor]
    stack: list[list[Any]] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, depth) of the anchored node

    def close(size: int, height: int, anchor: str | None) -> None:
        if anchor is not None:
            anchors[anchor] = (size, height)
        if stack:
            stack[-1][0] += size
            stack[-1][1] = max(stack[-1][1], height + 1)

    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise error(f"{where}: {what} nests more than {MAX_DEPTH} levels deep; {fix}")
            stack.append([1, 0, event.anchor])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            size, height, anchor = stack.pop()
            nodes += 0 if stack else size
            close(size, height, anchor)
        elif isinstance(event, yaml.ScalarEvent):
            value = event.value
            if event.implicit[0] and len(value) > MAX_NUMBER_CHARS and event.tag is None:
                if _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) in _NUMBER_TAGS:
                    raise error(
                        f"{where}: {what} has a number of {len(value)} characters (at most "
                        f"{MAX_NUMBER_CHARS} are read); {fix}"
                    )
            if not stack:
                nodes += 1
            close(1, 0, event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            size, height = anchors.get(event.anchor, (1, 0))
            if depth + height > MAX_DEPTH:
                raise error(
                    f"{where}: {what} nests more than {MAX_DEPTH} levels deep (through alias *{event.anchor}); {fix}"
                )
            if not stack:
                nodes += size
            close(size, height, None)
        if nodes + sum(frame[0] for frame in stack) > MAX_NODES:
            raise error(f"{where}: {what} holds more than {MAX_NODES} values (aliases expanded); {fix}")


def parse_yaml(
    text: str,
    where: str,
    *,
    loader: type = yaml.SafeLoader,
    what: str = "YAML",
    error: type[MergesmithError] = CheckpointError,
    top: type | tuple[type, ...] | None = dict,
    fix: str = "fix the file",
) -> Any:
    """Parse YAML text with a safe ``loader`` and every bound checked; ``error`` with one line on any problem."""
    if not issubclass(loader, yaml.SafeLoader):
        raise TypeError("only yaml.SafeLoader subclasses may parse YAML")
    try:
        _check_yaml_events(text, loader, where, what, error, fix)
        value = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise error(f"{where}: {what} is not valid YAML{at}: {problem}; {fix}") from None
    except (ValueError, OverflowError, TypeError, RecursionError, MemoryError) as e:
        # e.g. a timestamp such as 2024-13-45 (ValueError from datetime); bounded above, never a traceback
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise error(f"{where}: {what} cannot be read ({type(e).__name__}: {first}); {fix}") from None
    if top is not None and not isinstance(value, top):
        raise error(f"{where}: {what} is not {_type_name(top)} but a {type(value).__name__}; {fix}")
    return value


def read_yaml(
    path: str | os.PathLike[str],
    *,
    loader: type = yaml.SafeLoader,
    what: str = "YAML",
    limit: int = MAX_YAML_BYTES,
    error: type[MergesmithError] = CheckpointError,
    top: type | tuple[type, ...] | None = dict,
    fix: str = "fix the file",
) -> Any:
    """Read and parse a YAML file (a regular UTF-8 file of at most ``limit`` bytes)."""
    raw, _ = read_regular(path, limit=limit, what=what, error=error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file; {fix}") from None
    return parse_yaml(text, str(path), loader=loader, what=what, error=error, top=top, fix=fix)

"""The pool YAML's schema (pydantic, unknown keys refused) and its one-line error messages with the YAML path.

Only the shape of the file is checked here; whether the paths, checkpoints, heads and data fit together is checked
in ``mergesmith.bench.pool``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from mergesmith.errors import MergesmithError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    format: Literal["csv", "jsonl", "imagefolder"]
    train: StrictStr | None = None
    validation: StrictStr
    test: StrictStr
    text_column: StrictStr | None = None
    label_column: StrictStr | None = None
    labels: list[Union[StrictStr, StrictInt]] | None = Field(default=None, min_length=2)

    @field_validator("labels", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value):
        # YAML reads unquoted yes/no/true/false as booleans; say so instead of a type error.
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    raise ValueError(f"item {i} is the YAML boolean {str(item).lower()}; quote label names such as 'yes' and 'no'")
        return value

    @field_validator("labels")
    @classmethod
    def _unique(cls, value):
        if value is not None:
            names = [str(v) for v in value]
            repeated = next((n for n in names if names.count(n) > 1), None)
            if repeated is not None:
                raise ValueError(f"label {repeated!r} is listed twice; list each label once")
            return names
        return value


class TaskSpec(_Strict):
    name: StrictStr = Field(min_length=1)
    expert: StrictStr
    head: StrictStr | None = None
    data: DataSpec


class PoolSpec(_Strict):
    base_model: StrictStr
    modality: Literal["text", "image"] | None = None
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks):
        names = [t.name for t in tasks]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise ValueError(f"task name {repeated!r} is used twice; give every task its own name")
        return tasks


_NESTED = {"tasks": TaskSpec, "data": DataSpec}


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).startswith(("str", "int", "literal")):  # union branches ("str", "int") are not keys
            text += f".{part}" if text else str(part)
    return text or "top level"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PoolSpec
    for part in loc:
        if isinstance(part, str) and part in _NESTED:
            model = _NESTED[part]
    return list(model.model_fields)


def _message(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = _location(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {loc}; allowed keys there: {', '.join(_allowed_keys(first['loc'][:-1]))}"
    if first["type"] == "missing":
        return f"{source}: missing required key {loc}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {loc}: {message}"


def read_pool_spec(path: str | Path) -> PoolSpec:
    """Parse and validate the pool YAML's structure; MergesmithError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise MergesmithError(f"{path}: pool file not found; pass the path of a pool YAML file to --pool")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MergesmithError(f"{path}: not valid YAML{at}: {problem}; fix the file") from None
    except UnicodeDecodeError:
        raise MergesmithError(f"{path}: not a UTF-8 text file; pass a pool YAML file") from None
    if not isinstance(data, dict):
        raise MergesmithError(f"{path}: expected a mapping with base_model and tasks at the top level")
    try:
        return PoolSpec.model_validate(data)
    except ValidationError as err:
        raise MergesmithError(_message(err, str(path))) from None

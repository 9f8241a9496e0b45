"""The pool YAML's schema (pydantic, unknown keys refused) and its one-line error messages with the YAML path.

Only the shape of the file is checked here; whether the paths, checkpoints, heads and data fit together is checked
in ``mergesmith.bench.pool``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from mergesmith.errors import MergesmithError
from mergesmith.io.parse import read_yaml

# A task's label count, bounded before anything is built from it (a label index of 2e9 would otherwise build 2e9
# names before they are compared with the head); ImageNet-21k has 21,841 classes.
MAX_LABELS = 100_000
MAX_TASKS = 1_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    format: Literal["csv", "jsonl", "imagefolder"]
    train: StrictStr | None = None
    validation: StrictStr
    test: StrictStr
    text_column: StrictStr | None = None
    label_column: StrictStr | None = None
    labels: list[StrictStr | StrictInt] | None = Field(default=None, min_length=2, max_length=MAX_LABELS)

    @field_validator("labels", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value):
        # YAML reads unquoted yes/no/true/false as booleans; say so instead of a type error.
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    raise ValueError(
                        f"item {i} is the YAML boolean {str(item).lower()}; quote label names such as 'yes' and 'no'"
                    )
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
    # One description per class, in the order of data.labels (protocol zero_shot: the head's rows are their embeddings).
    label_texts: list[StrictStr] | None = Field(default=None, max_length=MAX_LABELS)
    data: DataSpec


class PoolSpec(_Strict):
    base_model: StrictStr
    modality: Literal["text", "image"] | None = None
    # probe: each task's head is the user's; zero_shot: heads built from label_texts by the base (mergesmith.bench.heads)
    protocol: Literal["probe", "zero_shot"] = "probe"
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_TASKS)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks):
        names = [t.name for t in tasks]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise ValueError(f"task name {repeated!r} is used twice; give every task its own name")
        return tasks


_NESTED: dict[str, type[BaseModel]] = {"tasks": TaskSpec, "data": DataSpec}


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
    if not path.exists():
        raise MergesmithError(f"{path}: pool file not found; pass the path of a pool YAML file to --pool")
    data = read_yaml(path, what="pool", error=MergesmithError, top=None, fix="fix the file")
    if not isinstance(data, dict):
        raise MergesmithError(f"{path}: expected a mapping with base_model and tasks at the top level")
    try:
        return PoolSpec.model_validate(data)
    except ValidationError as err:
        raise MergesmithError(_message(err, str(path))) from None


def resolve_pool_path(root: Path, value: str) -> Path:
    """A path written in the pool file: ``~`` expanded, relative paths starting at the pool file's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def pool_model_dirs(path: str | Path) -> list[Path]:
    """The base and expert directories a pool file names (what an output must not overlap)."""
    spec = read_pool_spec(path)
    root = Path(path).resolve().parent
    return [resolve_pool_path(root, spec.base_model)] + [resolve_pool_path(root, t.expert) for t in spec.tasks]

"""What a continual merge keeps beside the merged model: ``continual.json``.

Its size does not depend on the number of experts merged, except for the list of their names and fingerprints
(provenance, a few dozen bytes each): the method, its parameters, the base model (path and fingerprint), the count
n, and the scalars the method carries (lambda for task arithmetic, TIES and OPCM; OPCM's sum of task-vector norms).
No tensor is stored: every method's next step needs only the base, the current merge and the new expert.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mergesmith.errors import MergesmithError

STATE_FILE = "continual.json"
FORMAT = "mergesmith-continual/1"


class MergedExpert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    fingerprint: str


class BaseRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    fingerprint: str


class ContinualState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = FORMAT
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    base: BaseRef
    experts: list[MergedExpert]
    scale: float = 1.0  # lambda_t: the merged task vector is (theta - theta_0) * scale in the method's own units
    task_norm_sum: float = 0.0  # OPCM: sum_i ||tau_i|| over the experts merged so far

    @property
    def count(self) -> int:
        return len(self.experts)


def read_state(model_dir: Path) -> ContinualState | None:
    """The state beside a continual merge, or None for a plain model (an expert to start a sequence from)."""
    path = Path(model_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        state = ContinualState.model_validate(data)
    except (OSError, UnicodeDecodeError, ValueError, ValidationError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise MergesmithError(f"{path}: not a valid continual-merge state ({first}); restore it from the run that "
                              f"wrote this model, or start a new sequence from an expert") from None
    if state.format != FORMAT:
        raise MergesmithError(f"{path}: format {state.format!r} is not {FORMAT!r}; re-create the merge with this "
                              f"version of mergesmith")
    return state


def write_state(model_dir: Path, state: ContinualState) -> None:
    text = json.dumps(state.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (Path(model_dir) / STATE_FILE).write_text(text, encoding="utf-8")

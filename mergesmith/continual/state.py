"""What a continual merge keeps beside the merged model: its state, in the manifest's ``details["state"]``.

``mergesmith.json`` (``mergesmith.io.manifest``) of a continual step has kind "continual"; the next step reads the
state from it (outputs of earlier versions kept it in ``continual.json``, still read). Its size does not depend
on the number of experts merged, except for the list of their names and fingerprints
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
from mergesmith.io.manifest import MANIFEST_FILE, read_manifest

KIND = "continual"  # the manifest kind of a continual step's output
LEGACY_STATE_FILE = "continual.json"
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
    # lambda_t: the merged task vector is (theta - theta_0) * scale in the method's own units. A state edited to
    # NaN or infinity would turn every merged weight into NaN: refused when read.
    scale: float = Field(1.0, allow_inf_nan=False)
    task_norm_sum: float = Field(0.0, ge=0, allow_inf_nan=False)  # OPCM: sum_i ||tau_i|| over the experts merged so far

    @property
    def count(self) -> int:
        return len(self.experts)


def read_state(model_dir: Path) -> ContinualState | None:
    """The state of a continual merge, or None for a plain model (an expert to start a sequence from)."""
    manifest = read_manifest(model_dir)
    if manifest is not None and manifest.kind == KIND and "state" in manifest.details:
        return _validated(Path(model_dir) / MANIFEST_FILE, manifest.details["state"])
    legacy = Path(model_dir) / LEGACY_STATE_FILE
    if not legacy.is_file():
        return None
    try:
        data = json.loads(legacy.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid(legacy, str(exc) if not isinstance(exc, RecursionError) else "nested too deeply") from None
    return _validated(legacy, data)


def state_record(state: ContinualState) -> dict[str, Any]:
    """The state as the manifest's ``details["state"]``."""
    return state.model_dump(mode="json")


def _validated(path: Path, data: Any) -> ContinualState:
    try:
        state = ContinualState.model_validate(data)
    except ValidationError as exc:
        raise _invalid(path, exc.errors()[0]["msg"]) from None
    if state.format != FORMAT:
        raise MergesmithError(f"{path}: format {state.format!r} is not {FORMAT!r}; re-create the merge with this "
                              f"version of mergesmith")
    return state


def _invalid(path: Path, reason: str) -> MergesmithError:
    reason = " ".join(reason.split())[:200]
    return MergesmithError(f"{path}: not a valid continual-merge state ({reason}); restore it from the run that "
                           f"wrote this model, or start a new sequence from an expert")

"""What a continual merge keeps beside the merged model: its state, in the manifest's ``details["state"]``.

``mergesmith.json`` (``mergesmith.io.manifest``) of a continual step has kind "continual"; the next step reads the
state from it (outputs of earlier versions kept it in ``continual.json``, still read). Its size does not depend
on the number of experts merged, except for the list of their names and fingerprints
(provenance, a few dozen bytes each): the method, its parameters, the base model (path and fingerprint), the count
n, and the scalars the method carries (lambda for task arithmetic, TIES and OPCM; OPCM's sum of task-vector norms).
No tensor is stored: every method's next step needs only the base, the current merge and the new expert.

The file is read back as input, so every field is validated: a NaN, infinite, zero or negative ``scale`` would turn
the next merge into NaN (or a division by zero) while the new state read ``scale: 1.0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from mergesmith.errors import MergesmithError
from mergesmith.io.manifest import MANIFEST_FILE, read_manifest
from mergesmith.io.parse import read_json

KIND = "continual"  # the manifest kind of a continual step's output
LEGACY_STATE_FILE = "continual.json"
FORMAT = "mergesmith-continual/1"
MAX_STATE_BYTES = 16 * 1024 * 1024  # names and fingerprints: about 100 bytes per expert merged
_FINGERPRINT = r"^([0-9a-f]{64})?$"  # sha256 hex; empty for in-memory steps


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MergedExpert(_Strict):
    name: StrictStr = Field(max_length=4096)
    fingerprint: StrictStr = Field(pattern=_FINGERPRINT)


class BaseRef(_Strict):
    path: StrictStr = Field(max_length=4096)
    fingerprint: StrictStr = Field(pattern=_FINGERPRINT)


class ContinualState(_Strict):
    format: StrictStr = FORMAT
    method: StrictStr = Field(max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    base: BaseRef
    experts: list[MergedExpert] = Field(min_length=2)  # a continual merge holds at least two experts
    # lambda_t: the merged task vector is (theta - theta_0) * scale in the method's own units; divided by it
    scale: float = Field(1.0, gt=0, strict=True)
    task_norm_sum: float = Field(0.0, ge=0, strict=True)  # OPCM: sum_i ||tau_i|| over the experts merged so far

    @property
    def count(self) -> int:
        return len(self.experts)


def read_state(model_dir: Path) -> ContinualState | None:
    """The state of a continual merge, or None for a plain model (an expert to start a sequence from)."""
    manifest = read_manifest(model_dir)
    if manifest is not None and manifest.kind == KIND and "state" in manifest.details:
        return _validated(Path(model_dir) / MANIFEST_FILE, manifest.details["state"])
    legacy = Path(model_dir) / LEGACY_STATE_FILE
    if not legacy.exists() and not legacy.is_symlink():
        return None
    try:
        data = read_json(
            legacy,
            what="the file",
            root=model_dir,
            limit=MAX_STATE_BYTES,
            error=MergesmithError,
            constants=False,
            fix="restore it from the run that wrote this model",
        )
    except MergesmithError as exc:
        raise _invalid(legacy, str(exc).removeprefix(f"{legacy}: ")) from None
    return _validated(legacy, data)


def state_record(state: ContinualState) -> dict[str, Any]:
    """The state as the manifest's ``details["state"]``."""
    return state.model_dump(mode="json")


def _validated(path: Path, data: Any) -> ContinualState:
    try:
        state = ContinualState.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise _invalid(path, f"{where}: {first['msg']}") from None
    if state.format != FORMAT:
        raise MergesmithError(
            f"{path}: format {state.format!r} is not {FORMAT!r}; re-create the merge with this version of mergesmith"
        )
    return state


def _invalid(path: Path, reason: str) -> MergesmithError:
    reason = " ".join(reason.split())[:200]
    return MergesmithError(
        f"{path}: not a valid continual-merge state ({reason}); restore it from the run that "
        f"wrote this model, or start a new sequence from an expert"
    )

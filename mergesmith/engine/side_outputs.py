"""Per-task parts beside a merged model (EMR-Merging, TALL masks): written by the engine, read back per task.

A method with ``MethodSpec.side_outputs`` returns ``(theta_base, PerTaskParts)`` per tensor
(``methods/_per_task.py``). The output directory then holds:

- the usual model files: the base model's weights (``model.safetensors`` or shards), config, tokenizer;
- ``task_vector.safetensors``: the dense task vector tau per merged tensor (EMR: tau_uni; TALL: tau_MTL), in the
  output dtype, under the tensor's name;
- ``task_masks.safetensors``: one bit-packed mask per task and tensor, uint8 [ceil(numel / 8)] under
  ``<task>/<tensor name>`` (8 entries a byte, most significant bit first, row-major; numpy.packbits' layout);
- ``tasks.json``: the kind, the task names in expert order, each task's rescaler lambda_t and model path;
- ``mergesmith.json`` (``io.manifest``) has the kind, ``details.tasks``, and the side files' sha256 among its outputs.

Task t's model is theta_base + lambda_t * (M_t * tau) (``_per_task.task_model``), materialised on demand by
``mergesmith.load_merged(out, task=...)`` or ``task_tensors``. Task names are the expert directories' base names
(the name as written in the config when two base names collide).

Both side files stream like the model's shards (``io.writer.ShardedWriter``, headers planned up front) inside the
same staged output directory, so an interrupted merge leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergesmith.errors import ConfigError, MergesmithError
from mergesmith.io.parse import read_json
from mergesmith.methods._per_task import PerTaskParts, pack_mask, packed_length, rescalers, task_model, unpack_mask

TASK_VECTOR_FILE = "task_vector.safetensors"
TASK_MASKS_FILE = "task_masks.safetensors"
TASKS_FILE = "tasks.json"
_ONE_FILE = 1 << 62  # a shard limit no side file reaches: each is one safetensors file


def task_names(model_names: Sequence[str]) -> list[str]:
    """The experts' task names: directory base names, or the names as written when two base names collide."""
    short = [Path(str(n).rstrip("/\\")).name or str(n) for n in model_names]
    return short if len(set(short)) == len(short) else [str(n) for n in model_names]


class SideWriter:
    """Wraps the model's writer: ``write(name, result)`` takes a tensor or a ``(tensor, PerTaskParts)`` pair."""

    def __init__(self, plan: Any, staging: Path, write_model: Callable[[str, torch.Tensor], None]):
        from mergesmith.io.writer import ShardedWriter

        if plan.config.slices:
            raise ConfigError(f"{plan.method.name} keeps per-task parts of whole models; use models:, not slices:")
        self.kind = plan.method.side_outputs
        self.staging = Path(staging)
        self.write_model = write_model
        merged = [j for j in plan.jobs if j.copy_from is None]
        experts = merged[0].experts if merged else ()
        self.experts = [plan.model_names[ref.model] for ref in experts]
        self.tasks = task_names(self.experts)
        vectors = [(j.out_name, j.out_dtype, j.shape) for j in merged]
        masks = [
            (f"{task}/{j.out_name}", torch.uint8, (packed_length(j.shape),)) for j in merged for task in self.tasks
        ]
        self._vector_dtypes = {j.out_name: j.out_dtype for j in merged}
        self._dirs = {TASK_VECTOR_FILE: self.staging / ".side-vector", TASK_MASKS_FILE: self.staging / ".side-masks"}
        self.vectors = ShardedWriter(self._dirs[TASK_VECTOR_FILE], vectors, _ONE_FILE)
        self.masks = ShardedWriter(self._dirs[TASK_MASKS_FILE], masks, _ONE_FILE)
        self.terms: list[list[tuple[float, float]]] = [[] for _ in self.tasks]  # per task: (num, den) per tensor
        self.has_terms = False

    def write(self, name: str, result: torch.Tensor | tuple[torch.Tensor, PerTaskParts]) -> None:
        if isinstance(result, tuple):
            tensor, parts = result
            self.vectors.write(name, parts.task_vector.to(self._vector_dtypes[name]).contiguous())
            for task, mask in zip(self.tasks, parts.masks, strict=True):
                self.masks.write(f"{task}/{name}", pack_mask(mask))
            if parts.scale_terms is not None:  # model-level rescalers: summed over tensors at the end
                self.has_terms = True
                for terms, pair in zip(self.terms, parts.scale_terms, strict=True):
                    terms.append(pair)
        else:
            tensor = result  # copied tensors (integer buffers) have no parts
        self.write_model(name, tensor)

    def finish(self) -> dict[str, str]:
        """Close both side files, write tasks.json; returns {file name: sha256} of the two streamed files."""
        hashes = {}
        for file_name, writer in ((TASK_VECTOR_FILE, self.vectors), (TASK_MASKS_FILE, self.masks)):
            (digest,) = writer.finish().values()
            temp = self._dirs[file_name]
            os.replace(temp / "model.safetensors", self.staging / file_name)
            temp.rmdir()
            hashes[file_name] = digest
        lambdas = rescalers(self.terms) if self.has_terms else [1.0] * len(self.tasks)
        info = {
            "kind": self.kind,
            "formula": "theta_t = theta_base + rescaler_t * (mask_t * task_vector)",
            "tasks": self.tasks,
            "rescalers": dict(zip(self.tasks, lambdas)),
            "experts": dict(zip(self.tasks, self.experts)),
        }
        (self.staging / TASKS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return hashes

    def close(self) -> None:
        self.vectors.close()
        self.masks.close()

    def card_section(self) -> str:
        """The model card's word on how to get a task's model (the weights in the directory are the base's)."""
        lines = [
            "## One model per task",
            "",
            f"This directory holds the base model's weights plus per-task parts ({self.kind}): "
            "`task_vector.safetensors`, `task_masks.safetensors` (bit-packed) and `tasks.json` (rescalers). "
            "Task t's model is base + rescaler_t * (mask_t * task_vector); load it with",
            "",
            "```python",
            "import mergesmith",
            "",
            f"model = mergesmith.load_merged(path, task={self.tasks[0] if self.tasks else 'TASK'!r})",
            "```",
            "",
            "Tasks: " + ", ".join(f"`{t}`" for t in self.tasks),
        ]
        return "\n".join(lines)


def open_side_writer(plan: Any, staging: Path, write_model: Callable) -> SideWriter | None:
    """A SideWriter when the plan's method keeps per-task parts; None otherwise (the model's writer is used as is)."""
    return SideWriter(plan, staging, write_model) if plan.method.side_outputs else None


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_tasks(directory: str | Path) -> dict:
    path = Path(directory) / TASKS_FILE
    return read_json(
        path,
        what="per-task index",
        root=directory,
        error=MergesmithError,
        fix="merge again to rebuild the per-task parts",
    )


def check_task(directory: str | Path, info: dict, task: str | None) -> str:
    tasks = info["tasks"]
    if task is None:
        raise MergesmithError(
            f"{directory} holds one model per task ({info['kind']}); pass task= one of: {', '.join(tasks)}"
        )
    if task not in tasks:
        raise MergesmithError(f"{directory}: no task {task!r}; its tasks are: {', '.join(tasks)}")
    return task


def task_tensors(directory: str | Path, task: str) -> dict[str, torch.Tensor]:
    """Task ``task``'s merged tensors, theta_base + lambda_t * (M_t * tau), in the output dtype."""
    from safetensors import safe_open

    from mergesmith.io import open_checkpoint

    directory = Path(directory)
    info = read_tasks(directory)
    check_task(directory, info, task)
    rescaler = float(info["rescalers"][task])
    out: dict[str, torch.Tensor] = {}
    with (
        open_checkpoint(directory) as model,
        safe_open(directory / TASK_VECTOR_FILE, "pt") as vectors,
        safe_open(directory / TASK_MASKS_FILE, "pt") as masks,
    ):
        for name in vectors.keys():
            tau = vectors.get_tensor(name)
            mask = unpack_mask(masks.get_tensor(f"{task}/{name}"), tau.shape)
            out[name] = task_model(model.read(name, None), tau, mask, rescaler)
    return out


def apply_task(model: torch.nn.Module, directory: str | Path, task: str) -> torch.nn.Module:
    """Load task ``task``'s tensors into ``model`` (loaded from ``directory``'s model files, i.e. the base)."""
    tensors = task_tensors(directory, task)
    names = set(model.state_dict())
    unknown = sorted(set(tensors) - names)
    prefix = getattr(model, "base_model_prefix", "")
    if unknown and prefix and not any(n.startswith(f"{prefix}.") for n in names):
        # A bare encoder (``AutoModel``) of a checkpoint saved with its task head (e.g. BertForMaskedLM), as
        # transformers loads it: the encoder's tensors lose the prefix and the head's are not part of the model.
        tensors = {n.removeprefix(f"{prefix}."): t for n, t in tensors.items() if n.startswith(f"{prefix}.")}
        unknown = sorted(set(tensors) - names)
    if unknown:
        raise MergesmithError(
            f"{directory}: the model class {type(model).__name__} has no parameter {unknown[0]!r}; load the directory "
            f"with the class that saved it (config.json 'architectures')"
        )
    with torch.no_grad():
        model.load_state_dict(tensors, strict=False)
    return model


def load_task_model(directory: Path, details: dict, task: str | None) -> Any:
    """``load_merged`` for kinds "emr" and "tall_masks": the transformers model of config.json's architecture with
    task ``task``'s weights."""
    from mergesmith.model_class import load_pretrained

    info = read_tasks(directory)
    checked = check_task(directory, info, task)
    return apply_task(load_pretrained(directory), directory, checked)


# ----------------------------------------------------------------------------------------------------------------
# In memory


def merge_state_dicts_per_task(
    base: Mapping[str, torch.Tensor],
    experts: Sequence[Mapping[str, torch.Tensor]],
    method: str,
    *,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    **params: Any,
) -> dict[str, dict[str, torch.Tensor]]:
    """The in-memory twin of a per-task merge: {task: its state dict}, the bytes ``load_merged(out, task=...)`` gives
    for the same inputs. ``tasks`` names the experts (default "0", "1", ...)."""
    from mergesmith.engine.in_memory import merged_tensors
    from mergesmith.methods import get_method

    spec = get_method(method)
    if not spec.side_outputs:
        raise MergesmithError(f"{method} gives one merged model; use mergesmith.merge_state_dicts")
    if not experts or base is None:
        raise MergesmithError(f"{method} needs the base model's state dict and at least one expert")
    names = list(tasks) if tasks is not None else [str(i) for i in range(len(experts))]
    if len(names) != len(experts) or len(set(names)) != len(names):
        raise MergesmithError(f"tasks must name each of the {len(experts)} experts once, got {names}")
    parts: dict[str, tuple[torch.Tensor, PerTaskParts]] = {}
    terms: list[list[tuple[float, float]]] = [[] for _ in experts]
    has_terms = False
    for name, first, merged in merged_tensors(spec, base, experts, params, seed, reference=base):
        if merged is None:
            continue
        assert isinstance(merged, tuple)  # (theta_base, per-task parts): methods with side outputs
        tensor, p = merged
        # stored as the engine stores them: both in the output (here: the input) dtype
        parts[name] = (tensor.to(first.dtype), PerTaskParts(p.task_vector.to(first.dtype), p.masks, p.scale_terms))
        if p.scale_terms is not None:
            has_terms = True
            for task_terms, pair in zip(terms, p.scale_terms):
                task_terms.append(pair)
    lambdas = rescalers(terms) if has_terms else [1.0] * len(experts)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for index, task in enumerate(names):
        sd = {k: v.clone() for k, v in base.items() if k not in parts}
        for name, (tensor, p) in parts.items():
            sd[name] = task_model(tensor, p.task_vector, p.masks[index], lambdas[index])
        out[task] = sd
    return out

"""What an adapt method returns and how it is written: a Hugging Face directory of the merged encoder plus
``adapt_extras.safetensors`` (added modules, routers, coefficients), a model card and ``mergesmith.json``
(``io.manifest``: the kind, the inputs' hashes, and in ``details`` the method's spec, info and tasks).

``mergesmith.load_merged(out_dir, task=...)`` reads it back: the manifest's ``kind`` picks the loader in
``mergesmith.loading.LOADERS`` ("weights" = a plain transformers model), which gets the manifest's ``details``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem

EXTRAS_FILE = "adapt_extras.safetensors"


@dataclass
class AdaptResult:
    kind: str  # "weights" | a loader kind registered in mergesmith/loading.py
    # What is written: every tensor of the base checkpoint under its own name, the merged encoder's values where the
    # encoder holds it (AdaptProblem.checkpoint_state), so the output loads like the base (its head included).
    state_dict: dict[str, Tensor]
    encoder_for: Callable[[str], nn.Module]  # task name -> the encoder that task is scored with
    extras: dict[str, Tensor] = field(default_factory=dict)  # added modules / routers / coefficients
    spec: dict = field(default_factory=dict)  # JSON-able description needed to rebuild (method, params, ...)
    info: dict = field(default_factory=dict)  # what to report (coefficients, losses, added_parameters, notes)
    # Files written beside the model, relative name -> source file (e.g. the statistics a statistics method
    # collected and the merge config the engine ran); copied into the output directory by save_result.
    files: dict[str, Path] = field(default_factory=dict)
    workdir: Any = None  # keeps a TemporaryDirectory holding ``files`` alive as long as the result
    merged: dict[str, Tensor] = field(default_factory=dict)  # the merged encoder's floating tensors (encoder names)


def weights_result(
    problem: AdaptProblem,
    floating: dict[str, Tensor],
    *,
    spec: dict,
    info: dict | None = None,
    files: dict[str, Path] | None = None,
    workdir: Any = None,
) -> AdaptResult:
    """The result of a method that produces one merged encoder for every task (kind "weights")."""
    state = problem.checkpoint_state(floating)
    cache: dict[str, nn.Module] = {}

    def encoder_for(task: str) -> nn.Module:
        problem.task(task)  # unknown task names fail with the task list
        if "model" not in cache:
            cache["model"] = problem.encoder_with(floating)
        return cache["model"]

    info = dict(info or {})
    info.setdefault("added_parameters", 0)
    return AdaptResult("weights", state, encoder_for, {}, spec, info, dict(files or {}), workdir, floating)


def save_result(result: AdaptResult, problem: AdaptProblem, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``result`` into ``out_dir`` atomically (a staging sibling renamed into place when complete)."""
    from contextlib import ExitStack

    from safetensors.torch import save_file

    from mergesmith.io import open_checkpoint
    from mergesmith.io.model_dir import ModelDirectory, checkpoint_source

    base_dir = Path(problem.base_dir)
    with ExitStack() as opened:
        base = opened.enter_context(open_checkpoint(base_dir))
        sources = {"base": checkpoint_source(base, str(base_dir))}
        for task, path in problem.expert_dirs.items():
            sources[f"expert:{task}"] = checkpoint_source(opened.enter_context(open_checkpoint(path)), str(path))
        architectures = _saved_architectures(result.state_dict, set(base.tensors), base.config())
    with ModelDirectory(out_dir, sources, force=force) as out:
        names = sorted(result.state_dict)
        entries = [(n, result.state_dict[n].dtype, tuple(result.state_dict[n].shape)) for n in names]
        writer = out.open_shards(entries, "5GB", metadata={"mergesmith_adapt": str(result.spec.get("method", ""))})
        for name in names:
            writer.write(name, result.state_dict[name].detach().contiguous())
        out.finish_shards()
        out.write_config(base_dir / "config.json", dtype=_dtype_name(result.state_dict), architectures=architectures)
        out.copy_side_files(base_dir)
        if result.extras:
            save_file({k: v.detach().contiguous() for k, v in result.extras.items()}, str(out.path / EXTRAS_FILE))
        for relative, source in result.files.items():
            target = out.path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        spec = _jsonable(result.spec)
        seed = spec.get("seed")
        out.commit(
            kind=result.kind,
            method=str(spec.get("method", "adapt")),
            paper=str(spec.get("paper", "")),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            base_model=str(base_dir),
            config=spec.get("params") or {},
            details={"spec": spec, "info": _jsonable(result.info), "tasks": list(problem.task_names)},
            card=_card(result, spec),
        )
    return Path(out_dir)


def _saved_architectures(state: dict[str, Tensor], base_names: set[str], base_config: dict) -> list[str] | None:
    """config.json's ``architectures`` for the weights saved: the base's own when they carry the checkpoint's names;
    the bare model class when they are an encoder's (``AutoModel``: no task head, names without the head class's
    prefix), so that the directory loads as what it holds rather than as a head class missing its head."""
    from mergesmith.model_class import bare_model_class_name

    if set(state) & base_names:
        return None
    name = bare_model_class_name(base_config.get("model_type"))
    return [name] if name else None


def load_saved_encoder(directory: Path, spec: dict) -> nn.Module:
    """The merged encoder of a saved result, of the class the result names (``spec["model_class"]``, one of
    transformers' own classes; ``AutoModel`` otherwise), eval mode. Weights the checkpoint does not store (a pooler a
    masked-LM checkpoint lacks) initialise from seed 0, as the featurizer that scored the result loads them."""
    import torch
    import transformers

    from mergesmith.model_class import architecture_class

    cls = architecture_class([str(spec.get("model_class", ""))]) or transformers.AutoModel
    torch.manual_seed(0)
    return cls.from_pretrained(directory).eval()


def _dtype_name(state: dict[str, Tensor]) -> str | None:
    from mergesmith.io.model_files import dtype_name

    dtypes = {dtype_name(t.dtype) for t in state.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _jsonable(value: Any) -> Any:
    """Tensors and numbers from a method's ``info`` as plain JSON values."""
    if isinstance(value, Tensor):
        return value.detach().tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _card(result: AdaptResult, spec: dict):
    from mergesmith.io.model_card import CardText, loading_section

    tasks = spec.get("tasks") if isinstance(spec.get("tasks"), list) else None
    example = str(tasks[0]) if result.kind == "surgery" and tasks else None
    specification = "\n".join(["## Specification", "", "```json", json.dumps(spec, indent=2), "```"])
    return CardText(
        title="Merged model (data-driven)", tags=("adapt",), sections=(loading_section(example), specification)
    )


__all__ = ["AdaptResult", "load_saved_encoder", "save_result", "weights_result", "EXTRAS_FILE"]

"""What an adapt method returns and how it is written: a Hugging Face directory of the merged encoder plus
``adapt_extras.safetensors`` (added modules, routers, coefficients), ``adapt.json`` (kind, spec, info) and a model card.

``mergesmith.load_merged(out_dir, task=...)`` reads it back: ``adapt.json``'s ``"kind"`` picks the loader in
``mergesmith.loading.LOADERS`` ("weights" = a plain transformers model).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor, nn


if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem

SPEC_FILE = "adapt.json"
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


def weights_result(problem: "AdaptProblem", floating: dict[str, Tensor], *, spec: dict, info: dict | None = None,
                   files: dict[str, Path] | None = None, workdir: Any = None) -> AdaptResult:
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


def save_result(result: AdaptResult, problem: "AdaptProblem", out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``result`` into ``out_dir`` atomically (a staging sibling renamed into place when complete)."""
    from safetensors.torch import save_file

    from mergesmith import __version__
    from mergesmith.io.atomic import StagedOutput
    from mergesmith.io.model_files import copy_side_files, write_config
    from mergesmith.io.writer import ShardedWriter

    base_dir = Path(problem.base_dir)
    inputs = [base_dir, *problem.expert_dirs.values()]
    output = StagedOutput(out_dir, force=force, inputs=inputs)
    with output as staging:
        write_config(base_dir / "config.json", staging, _dtype_name(result.state_dict), None)
        copy_side_files(base_dir, staging)
        if (base_dir / "preprocessor_config.json").is_file():
            shutil.copyfile(base_dir / "preprocessor_config.json", staging / "preprocessor_config.json")
        names = sorted(result.state_dict)
        entries = [(n, result.state_dict[n].dtype, tuple(result.state_dict[n].shape)) for n in names]
        writer = ShardedWriter(staging, entries, "5GB", metadata={"mergesmith_adapt": str(result.spec.get("method", ""))})
        try:
            for name in names:
                writer.write(name, result.state_dict[name].detach().contiguous())
            writer.finish()
        except BaseException:
            writer.close()
            raise
        if result.extras:
            save_file({k: v.detach().contiguous() for k, v in result.extras.items()}, str(staging / EXTRAS_FILE))
        for relative, source in result.files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        document = {
            "kind": result.kind,
            "mergesmith_version": __version__,
            "base_model": str(base_dir),
            "experts": {name: str(path) for name, path in problem.expert_dirs.items()},
            "tasks": problem.task_names,
            "spec": result.spec,
            "info": _jsonable(result.info),
        }
        (staging / SPEC_FILE).write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        _write_card(staging, result, problem)
        output.commit()
    return Path(out_dir)


def load_saved_encoder(directory: Path, spec: dict) -> nn.Module:
    """The merged encoder of a saved result, of the class the result names (``spec["model_class"]``), eval mode.
    Weights the checkpoint does not store (a pooler a masked-LM checkpoint lacks) initialise from seed 0, as the
    featurizer that scored the result loads them."""
    import torch
    import transformers

    cls = getattr(transformers, str(spec.get("model_class", "")), None) or transformers.AutoModel
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


def _write_card(out: Path, result: AdaptResult, problem: "AdaptProblem") -> None:
    import yaml

    method = result.spec.get("method", "adapt")
    paper = result.spec.get("paper", "")
    front = {"tags": ["mergesmith", "merge", "adapt"], "library_name": "transformers", "base_model": [str(problem.base_dir)]}
    lines = ["---", yaml.safe_dump(front, sort_keys=True).rstrip(), "---", "# Merged model (data-driven)", "",
             f"Made with [mergesmith](https://pypi.org/project/mergesmith/) `mergesmith adapt {method}`"
             + (f" ({paper})." if paper else "."), "", "## Experts", ""]
    lines += [f"- {name}: `{path}`" for name, path in problem.expert_dirs.items()]
    lines += ["", f"Load it with `mergesmith.load_merged(path{', task=...' if result.kind != 'weights' else ''})`.", "",
              "## Specification", "", "```json", json.dumps(_jsonable(result.spec), indent=2), "```", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


__all__ = ["AdaptResult", "load_saved_encoder", "save_result", "weights_result", "SPEC_FILE", "EXTRAS_FILE"]


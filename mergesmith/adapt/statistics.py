"""Per-tensor statistics for the statistics methods (Fisher, RegMean, BMM): collected with hooks and autograd on the
experts, saved as safetensors keyed by the checkpoints' tensor names, and combined by the engine.

The flow of ``mergesmith adapt fisher|regmean``: collect each task's statistics -> ``statistics/<task>.safetensors``
-> a merge YAML whose models name their ``statistics:`` file -> ``mergesmith.merge`` streams weights + statistics
through the tensor-wise combiner (``fisher_combine`` / ``regmean_combine``) -> the merged checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from mergesmith.errors import MergesmithError

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem, AdaptTask


def linear_modules(encoder: nn.Module, method: str = "this method") -> dict[str, nn.Module]:
    """Every linear layer of the encoder by module name (the layers RegMean and BMM merge by regression):
    ``nn.Linear`` and GPT-2's ``Conv1D``, the same map with its weight stored [in, out] (``linear_layout`` gives the
    [out, in] view the regressions are written in). Without them GPT-2 had no regression layer at all and RegMean
    silently became averaging; an encoder with no linear layer is a one-line error."""
    from mergesmith.adapt.modules import is_linear_like

    found = {name: m for name, m in encoder.named_modules() if is_linear_like(m)}
    if not found:
        raise MergesmithError(
            f"{method}: {type(encoder).__name__} has no linear layer (looked for nn.Linear and GPT-2 Conv1D modules); "
            f"{method} merges linear layers by regression"
        )
    return found


def linear_layout(weight: Tensor, conv1d: bool) -> Tensor:
    """A linear layer's weight as ``nn.Linear`` stores it, [out, in], from its stored layout: GPT-2's Conv1D stores
    the transpose [in, out]. The transpose is its own inverse, so the same call turns a solution back."""
    return weight.T if conv1d else weight


class AllCollected(Exception):
    """Raised by a GramCollector with ``stop_early`` once every watched module saw the batch: the rest of the
    forward pass is not needed (RegMean++ collects one layer at a time)."""


class GramCollector:
    """Forward hooks accumulating G = mean over input rows of x x^T for the chosen linear modules.

    Text batches: only real tokens count (padding rows are masked out with the batch's attention mask), so a Gram
    does not depend on how the batch was padded. With ``stop_early`` the forward pass is cut (``AllCollected``) as
    soon as every watched module has seen the batch."""

    def __init__(self, modules: dict[str, nn.Linear], *, stop_early: bool = False):
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.mask: Tensor | None = None
        self.stop_early = stop_early
        self._watched = set(modules)
        self._seen: set[str] = set()
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Callable:
        def hook(module, args, output):
            x = args[0].detach()
            if self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape:
                rows = x[self.mask]
            else:
                rows = x.reshape(-1, x.shape[-1])
            rows = rows.double()
            gram = rows.T @ rows
            if name in self.sums:
                self.sums[name] += gram
                self.counts[name] += rows.shape[0]
            else:
                self.sums[name] = gram
                self.counts[name] = rows.shape[0]
            self._seen.add(name)
            if self.stop_early and self._seen >= self._watched:
                raise AllCollected

        return hook

    def set_batch(self, problem: AdaptProblem, batch) -> None:
        mask = batch.inputs.get("attention_mask") if problem.modality == "text" else None
        self.mask = mask.bool() if mask is not None else None
        self._seen = set()

    def grams(self) -> dict[str, Tensor]:
        """Module name -> mean Gram. A common per-task scale leaves RegMean's solution unchanged when every
        task sees as many rows, and equalises tasks whose inputs have different token counts."""
        # Accumulated in float64, kept in float32 (half the memory; the solves run in float64 again). Each float64 sum
        # is dropped as soon as its float32 copy exists, so the two full sets are never held together (a task's
        # float64 sums are 150 MB on MiniLM). The collector is spent afterwards.
        grams = {}
        for name in list(self.sums):
            grams[name] = (self.sums.pop(name) / max(1, self.counts[name])).float()
        return grams

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GramCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def example_batches(problem: AdaptProblem, split, num_examples: int, batch_size: int, seed: int):
    """The first ``num_examples`` of a seeded shuffle of ``split``, in batches (every task gets the same count)."""
    taken = 0
    for batch in problem.batches(split, batch_size, shuffle=True, seed=seed):
        if taken >= num_examples:
            return
        if taken + len(batch) > num_examples:
            keep = num_examples - taken
            batch = type(batch)(
                {k: v[:keep] for k, v in batch.inputs.items()},
                None if batch.labels is None else batch.labels[:keep],
                batch.rows[:keep],
            )
        taken += len(batch)
        yield batch


def data_split(problem: AdaptProblem, task: AdaptTask, which: str) -> Any:
    split = task.unlabeled if which == "unlabeled" else task.validation
    if split is None or len(split) == 0:
        raise MergesmithError(
            f"task {task.name!r} has no {which} inputs to collect statistics from; give the task that split"
        )
    return split


def save_statistics(path: Path, tensors: dict[str, Tensor], names: dict[str, str]) -> Path:
    """Write statistics keyed by the checkpoints' tensor names (fp32)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {names[k]: v.detach().float().contiguous() for k, v in tensors.items() if k in names},
        str(path),
        metadata={"format": "pt"},
    )
    return path


def engine_merge(
    problem: AdaptProblem,
    method: str,
    statistics: dict[str, Path],
    parameters: dict,
    workdir: Path,
    per_model: dict[str, dict] | None = None,
) -> tuple[dict[str, Tensor], Path]:
    """Write the merge YAML for ``method`` (experts + their statistics files), run the streaming engine into
    ``workdir/merged`` and return the merged encoder's floating tensors and the YAML's path."""
    import yaml

    from mergesmith.api import merge

    models = []
    for task in problem.task_names:
        entry: dict[str, Any] = {"model": str(problem.expert_dirs[task]), "statistics": str(statistics[task])}
        if per_model and task in per_model:
            entry["parameters"] = per_model[task]
        models.append(entry)
    config: dict[str, Any] = {"merge_method": method, "dtype": "float32", "models": models}
    if parameters:
        config["parameters"] = parameters
    config_path = workdir / "merge.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    out = workdir / "merged"
    # One engine thread: glibc gives each worker thread a malloc arena that keeps its jobs' freed buffers, so two
    # threads held 899-1183 MB at peak on the bench's RegMean merge against 534-547 MB for one, for 5.2 s instead of
    # 5.7 s, a few seconds of a run spent mostly in forward passes.
    merge(config_path, out, threads=1)
    state = problem.load_encoder(out).state_dict()
    floating = {k: v.detach().float().clone() for k, v in state.items() if v.is_floating_point()}
    return floating, config_path


def portable_config(config_path: Path, statistics: dict[str, Path]) -> str:
    """The merge YAML as saved beside the result: statistics paths relative to the output directory."""
    import yaml

    from mergesmith.io.parse import read_yaml

    config = read_yaml(config_path, what="merge config")
    by_path = {str(p): f"statistics/{task}.safetensors" for task, p in statistics.items()}
    for entry in config["models"]:
        entry["statistics"] = by_path.get(entry["statistics"], entry["statistics"])
    header = (
        "# The merge mergesmith ran for this result: `mergesmith merge merge.yaml OUT` from this directory\n"
        "# (statistics paths are relative to it) rebuilds model.safetensors from the experts and statistics.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)

"""Representation Surgery and SurgeryV2: task-specific low-rank modules that remove the merged model's
representation bias, trained without labels.

- Surgery: Yang, Shen, Wang, Guo, Chen, Wang, Tao 2024, "Representation Surgery for Multi-Task Model Merging",
  ICML 2024, arXiv 2402.02705.
- SurgeryV2: Yang, Shen, Wang, Guo, Wang, Cao, Zhang, Tao 2024, "SurgeryV2: Bridging the Gap Between Model Merging
  and Multi-Task Learning with Deep Representation Surgery", arXiv 2410.14389.

The steps (Surgery paper Sec. 3 and 4; SurgeryV2 Sec. 4):
1. merge the experts with any method (task arithmetic with lambda 0.3 by default, as in both papers' main tables);
2. representation bias (Surgery Sec. 3, "Representation Bias"): the L1 distance between the merged model's
   representation Z_mtl^t and expert t's Z_ind^t on task t's inputs;
3. the Surgery module of task t (Surgery Sec. 4.1): Phi_t(Z) = W_up act(W_down Z) with W_down [r, d], W_up [d, r],
   rank r = 16 by default and act = ReLU (the authors' release; ``activation="none"`` gives the linear
   Phi(Z) = W_up W_down Z); the corrected representation is Z_hat = Z - Phi_t(Z). W_up starts at zero, so every module
   starts as the identity and training starts from the merged model;
4. the unsupervised objective (Surgery Sec. 4.2): min over Phi_t of the mean |Z_hat^t - Z_ind^t| (L1) on task t's
   UNLABELED inputs (test inputs; labels are never read), Adam;
5. SurgeryV2 (deep representation surgery, SurgeryV2 Sec. 4): the same module after EVERY transformer block l,
   Z_hat^l = Z^l - Phi_t^l(Z^l), applied token-wise, the corrected output feeding block l+1; all layers' modules are
   trained jointly against the expert's per-block outputs: min sum_l mean |Z_hat^l - Z_ind^l|.

Where the last-layer module acts: on the representation the task head reads (the bench's pooled features: the
mean of the last hidden states over real tokens for text, CLIP's image embeddings / pooled output for images). The
model the bench scores returns ``last_hidden_state``; for text, every token's state is shifted by the same
per-example correction Phi_t(z), so the mean-pooled features are exactly z - Phi_t(z) whether or not the module is
linear (for a linear module this equals applying it token-wise and then pooling).

Tasks' modules are independent (a task's loss only reaches its own modules), so training them one task at a time
with per-task Adam is the same optimisation as the papers' joint loop, and needs one expert in memory at a time.
Surgery's merged model is frozen, so its representations are computed once per input and the module trains on them.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.featurizer import REPRESENTATIONS as HEAD_REPRESENTATIONS
from mergesmith.adapt.modules import transformer_blocks
from mergesmith.errors import MergesmithError
from mergesmith.pooling import mean_pool

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem
    from mergesmith.adapt.result import AdaptResult

SURGERY_PAPER = (
    "Yang, Shen, Wang, Guo, Chen, Wang, Tao 2024, Representation Surgery for Multi-Task Model Merging, "
    "ICML 2024, arXiv 2402.02705"
)
SURGERY_V2_PAPER = (
    "Yang, Shen, Wang, Guo, Wang, Cao, Zhang, Tao 2024, SurgeryV2: Bridging the Gap Between Model Merging "
    "and Multi-Task Learning with Deep Representation Surgery, arXiv 2410.14389"
)
REPRESENTATIONS = (*HEAD_REPRESENTATIONS, "first_token")  # the featurizer's, and one older outputs may name
DIAGNOSTIC_INPUTS = 64  # SurgeryV2's before/after representation bias is measured on this many inputs per task


class SurgeryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge_method: str = Field(
        "task_arithmetic", description="the merge the modules sit on: a tensor method or a weights adapt method"
    )
    merge_params: dict[str, Any] | None = Field(
        None, description="its parameters (default: lambda 0.3 for task_arithmetic, the method's defaults otherwise)"
    )
    rank: int = Field(16, ge=1, description="r: the modules' rank")
    activation: Literal["relu", "none"] = "relu"
    steps: int = Field(1000, ge=0, description="Adam steps per task")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    progress: bool = Field(True, description="show a progress bar")


def anchor_params(params: SurgeryParams) -> dict[str, Any]:
    """The parameters of the merge the modules sit on: those given, else Surgery's own choice for task arithmetic
    (lambda 0.3, the papers' value for eight tasks) and the method's defaults for any other method."""
    if params.merge_params is not None:
        return params.merge_params
    return {"lambda": 0.3} if params.merge_method == "task_arithmetic" else {}


class SurgeryV2Params(SurgeryParams):
    # The paper trains for far longer on a GPU; every step here backpropagates through the whole model on CPU.
    steps: int = Field(60, ge=0, description="Adam steps per task (every step backpropagates through the model)")


# ------------------------------------------------------------------------------------------------------------------
# The module (Surgery Sec. 4.1)


class SurgeryModule(nn.Module):
    """Z -> Z - Phi(Z), Phi(Z) = W_up act(W_down Z); W_up = 0 at init, so the module starts as the identity."""

    def __init__(self, width: int, rank: int, activation: str = "relu", generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        self.activation = activation
        with torch.no_grad():
            # W_down: the default nn.Linear init drawn from our own generator (reproducible); W_up: zeros.
            bound = 1.0 / math.sqrt(width)
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.up.weight.zero_()

    def bias(self, z: Tensor) -> Tensor:
        """Phi(Z): the representation bias the module estimates."""
        hidden = self.down(z)
        if self.activation == "relu":
            hidden = torch.relu(hidden)
        return self.up(hidden)

    def forward(self, z: Tensor) -> Tensor:
        return z - self.bias(z)  # Z_hat = Z - Phi(Z)


def module_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------------
# The representation a task head reads, and a model output with it corrected


def representation_kind(problem: AdaptProblem) -> str:
    """What the task heads read; "pooler_output" falls back to the first token's state for a model without a pooler."""
    return problem.featurizer.representation


def _mask(out: Any, mask: Tensor | None) -> Tensor:
    hidden = out.last_hidden_state
    if mask is None:
        return torch.ones(hidden.shape[:2], dtype=hidden.dtype)
    return mask.to(hidden.dtype)


def features_of(out: Any, kind: str, mask: Tensor | None) -> Tensor:
    """The representation the head reads (as the featurizer computes it) from a model output."""
    if kind == "mean_tokens":
        return mean_pool(out.last_hidden_state, _mask(out, mask))
    if kind == "image_embeds":
        return out.image_embeds
    if kind == "pooler_output" and getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    return out.last_hidden_state[:, 0]  # as the featurizer does for a model without a pooled output


def corrected(out: Any, kind: str, bias: Tensor) -> Any:
    """``out`` with its representation z replaced by z - bias (per example)."""
    if kind == "mean_tokens":
        # the same shift on every token: the masked mean of (h_i - c) is mean(h) - c
        out.last_hidden_state = out.last_hidden_state - bias.unsqueeze(1).to(out.last_hidden_state.dtype)
    elif kind == "image_embeds":
        out.image_embeds = out.image_embeds - bias
    elif kind == "pooler_output" and getattr(out, "pooler_output", None) is not None:
        out.pooler_output = out.pooler_output - bias
    else:
        hidden = out.last_hidden_state
        out.last_hidden_state = torch.cat([(hidden[:, :1] - bias.unsqueeze(1)), hidden[:, 1:]], dim=1)
    return out


class SurgeryEncoder(nn.Module):
    """The merged encoder with task t's last-layer Surgery module (Surgery Sec. 4.1): same call and outputs as the
    encoder, with the head's representation z replaced by z - Phi_t(z)."""

    def __init__(self, model: nn.Module, module: SurgeryModule, kind: str):
        super().__init__()
        self.model = model
        self.surgery = module
        self.kind = kind

    @property
    def config(self):
        return self.model.config

    def forward(self, **kwargs: Any) -> Any:
        out = self.model(**kwargs)
        z = features_of(out, self.kind, kwargs.get("attention_mask"))
        return corrected(out, self.kind, self.surgery.bias(z.float()))


@contextmanager
def _block_hooks(blocks: list[nn.Module], transform, record: list | None) -> Iterator[None]:
    """Forward hooks on every block: its hidden-state output h becomes transform(l, h) (None: unchanged); the
    (transformed) outputs are appended to ``record``."""

    def make(layer: int):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = hidden if transform is None else transform(layer, hidden)
            if record is not None:
                record.append(new)
            if transform is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = [block.register_forward_hook(make(i)) for i, block in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class DeepSurgeryEncoder(nn.Module):
    """The merged encoder with task t's SurgeryV2 modules after every transformer block (SurgeryV2 Sec. 4): block
    l's output Z^l becomes Z^l - Phi_t^l(Z^l) before block l+1 reads it."""

    def __init__(self, model: nn.Module, modules: nn.ModuleList):
        super().__init__()
        self.model = model
        self.surgery = modules
        _, blocks = transformer_blocks(model)
        if len(blocks) != len(modules):
            raise MergesmithError(
                f"{len(modules)} SurgeryV2 modules for a model with {len(blocks)} blocks; save and load the same architecture"
            )
        self._blocks = blocks  # a plain list: the blocks belong to ``model``
        self.record: list | None = None

    @property
    def config(self):
        return self.model.config

    def forward(self, **kwargs: Any) -> Any:
        with _block_hooks(self._blocks, lambda layer, h: self.surgery[layer](h), self.record):
            return self.model(**kwargs)


# ------------------------------------------------------------------------------------------------------------------
# Training


def _l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute difference; for token states [B, L, d] only real tokens count."""
    diff = (pred.float() - target.float()).abs()
    if diff.dim() == 3 and mask is not None:
        m = mask.to(diff.dtype).unsqueeze(-1)
        return (diff * m).sum() / (m.sum() * diff.shape[-1]).clamp_min(1.0)
    return diff.mean()


def _endless_batches(problem: AdaptProblem, split: Any, batch_size: int, seed: int) -> Iterator[Any]:
    epoch = 0
    while True:
        yield from problem.batches(split, batch_size, shuffle=True, seed=seed * 7919 + epoch)
        epoch += 1


@torch.no_grad()
def _all_features(
    problem: AdaptProblem, encoder: nn.Module, split: Any, batch_size: int = 64, limit: int | None = None
) -> Tensor:
    """Pooled features of the split's first ``limit`` inputs (all by default), in order."""
    parts, seen = [], 0
    for batch in problem.batches(split, batch_size):
        parts.append(problem.pooled(encoder, batch).float())
        seen += len(batch)
        if limit is not None and seen >= limit:
            break
    return torch.cat(parts)[:limit]


def train_last_layer(
    z_merged: Tensor, z_expert: Tensor, params: SurgeryParams, generator: torch.Generator, progress: Any = None
) -> tuple[SurgeryModule, list[float]]:
    """Surgery Sec. 4.2 on cached representations: min_Phi mean |(z - Phi(z)) - z_ind| over random batches."""
    module = SurgeryModule(z_merged.shape[1], params.rank, params.activation, generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=params.lr)
    losses = []
    n = len(z_merged)
    for _ in range(params.steps):
        rows = torch.randint(0, n, (min(params.batch_size, n),), generator=generator)
        loss = _l1(module(z_merged[rows]), z_expert[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
    return module.eval(), losses


def train_deep(
    problem: AdaptProblem,
    merged: nn.Module,
    expert: nn.Module,
    split: Any,
    params: SurgeryParams,
    seed: int,
    generator: torch.Generator,
    progress: Any = None,
) -> tuple[nn.ModuleList, list[float]]:
    """SurgeryV2 Sec. 4: modules after every block, trained jointly on sum_l mean |Z_hat^l - Z_ind^l| (real tokens)."""
    _, expert_blocks = transformer_blocks(expert)
    config: Any = merged.config  # a transformers config (nn.Module types its attributes as Tensor | Module)
    width = int(config.hidden_size)
    modules = nn.ModuleList(
        SurgeryModule(width, params.rank, params.activation, generator) for _ in range(len(expert_blocks))
    )
    deep = DeepSurgeryEncoder(merged, modules)
    optimizer = torch.optim.Adam(modules.parameters(), lr=params.lr)
    losses = []
    batches = _endless_batches(problem, split, params.batch_size, seed)
    for _ in range(params.steps):
        batch = next(batches)
        kwargs = problem.forward_kwargs(batch)
        mask = kwargs.get("attention_mask")
        targets: list[Tensor] = []
        with torch.no_grad(), _block_hooks(expert_blocks, None, targets):
            expert(**kwargs)
        deep.record = []
        try:
            deep(**kwargs)
            outputs = deep.record
        finally:
            deep.record = None
        loss = functools.reduce(operator.add, (_l1(o, t, mask) for o, t in zip(outputs, targets)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
    return modules.eval(), losses


def _run(problem: AdaptProblem, params: SurgeryParams, seed: int, deep: bool) -> AdaptResult:
    from tqdm.auto import tqdm

    from mergesmith.adapt.base_merge import anchor_merge
    from mergesmith.adapt.problem import check_needs
    from mergesmith.adapt.result import AdaptResult

    name = "surgery_v2" if deep else "surgery"
    check_needs(problem, name, frozenset({"unlabeled"}))
    floating, merge_info = anchor_merge(problem, params.merge_method, anchor_params(params), seed)
    merged = problem.encoder_with(floating)
    merged.requires_grad_(False)
    kind = representation_kind(problem)
    extras: dict[str, Tensor] = {}
    trained: dict[str, nn.Module] = {}
    per_task: dict[str, dict] = {}
    total = len(problem.tasks) * params.steps
    with tqdm(total=total, desc=name, unit="step", leave=False, disable=None if params.progress else True) as bar:
        for index, task in enumerate(problem.tasks):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            expert = problem.load_encoder(problem.expert_dirs[task.name])
            expert.requires_grad_(False)
            # Surgery trains on every input's representations; SurgeryV2 trains on token states and only reports
            # the bias of the head's representation, on the first DIAGNOSTIC_INPUTS inputs
            limit = DIAGNOSTIC_INPUTS if deep else None
            z_expert = _all_features(problem, expert, task.unlabeled, limit=limit)
            z_merged = _all_features(problem, merged, task.unlabeled, limit=limit)
            if deep:
                modules, losses = train_deep(
                    problem, merged, expert, task.unlabeled, params, seed + index, generator, bar
                )
                wrapped: nn.Module = DeepSurgeryEncoder(merged, modules)
                for layer, module in enumerate(modules):
                    for part in ("down", "up"):
                        extras[f"{index}.{layer}.{part}.weight"] = getattr(module, part).weight.detach().clone()
                added = sum(module_parameters(m) for m in modules)
            else:
                module, losses = train_last_layer(z_merged, z_expert, params, generator, bar)
                wrapped = SurgeryEncoder(merged, module, kind)
                for part in ("down", "up"):
                    extras[f"{index}.final.{part}.weight"] = getattr(module, part).weight.detach().clone()
                added = module_parameters(module)
            del expert
            trained[task.name] = wrapped.eval()
            with torch.no_grad():
                # Surgery: the module acts on the cached merged representations; SurgeryV2 changes every block, so
                # its corrected representations need a pass of the model
                z_after = _all_features(problem, wrapped, task.unlabeled, limit=limit) if deep else module(z_merged)
            per_task[task.name] = {
                "representation_l1_before": float(_l1(z_merged, z_expert)),
                "representation_l1_after": float(_l1(z_after, z_expert)),
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "losses_every_10": losses[::10],
                "added_parameters": added,
            }

    def encoder_for(task: str) -> nn.Module:
        problem.task(task)  # unknown names fail with the task list
        return trained[task]

    added = sum(v["added_parameters"] for v in per_task.values())
    spec = {
        "method": name,
        "paper": SURGERY_V2_PAPER if deep else SURGERY_PAPER,
        "variant": name,
        "tasks": problem.task_names,
        "rank": params.rank,
        "activation": params.activation,
        "representation": kind,
        "model_class": type(merged).__name__,
        "params": params_dict(params),
        "merge": {"method": merge_info["method"], "params": merge_info["params"]},
    }
    info = {
        "added_parameters": added,
        "trainable_parameters": added,
        "merge": merge_info,
        "tasks": per_task,
        "note": (
            "modules after every transformer block (token-wise)"
            if deep
            else f"module on the head's representation ({kind})"
        ),
    }
    return AdaptResult("surgery", problem.checkpoint_state(floating), encoder_for, extras, spec, info, merged=floating)


def run_surgery(problem: AdaptProblem, params: SurgeryParams, seed: int) -> AdaptResult:
    return _run(problem, params, seed, deep=False)


def run_surgery_v2(problem: AdaptProblem, params: SurgeryV2Params, seed: int) -> AdaptResult:
    return _run(problem, params, seed, deep=True)


# ------------------------------------------------------------------------------------------------------------------
# Loading a saved result: mergesmith.load_merged(path, task=...)


def load_saved(directory: Path, document: dict, task: str | None) -> nn.Module:
    """Task ``task``'s model from a directory ``save_result`` wrote for Surgery / SurgeryV2."""
    from safetensors.torch import load_file

    from mergesmith.adapt.result import EXTRAS_FILE, load_saved_encoder

    spec = document.get("spec", {})
    tasks = list(spec.get("tasks", []))
    if task is None:
        raise MergesmithError(
            f"{directory} holds task-specific Surgery modules; call load_merged(path, task=...) with one of: {', '.join(tasks)}"
        )
    if task not in tasks:
        raise MergesmithError(f"{directory} has no task {task!r}; tasks: {', '.join(tasks)}")
    index = tasks.index(task)
    path = Path(directory) / EXTRAS_FILE
    if not path.is_file():
        raise MergesmithError(f"{path} is missing; the Surgery modules are stored there: copy the whole directory")
    extras = load_file(str(path))
    model = load_saved_encoder(Path(directory), spec)

    def module_from(site: str) -> SurgeryModule:
        down, up = extras[f"{index}.{site}.down.weight"], extras[f"{index}.{site}.up.weight"]
        module = SurgeryModule(down.shape[1], down.shape[0], spec.get("activation", "relu"))
        with torch.no_grad():
            module.down.weight.copy_(down)
            module.up.weight.copy_(up)
        return module.eval()

    if spec.get("variant") == "surgery_v2":
        _, blocks = transformer_blocks(model)
        modules = nn.ModuleList(module_from(str(layer)) for layer in range(len(blocks)))
        return DeepSurgeryEncoder(model, modules).eval()
    kind = spec.get("representation", "mean_tokens")
    if kind not in REPRESENTATIONS:
        raise MergesmithError(f"{directory}: unknown representation {kind!r}; a newer mergesmith wrote it?")
    return SurgeryEncoder(model, module_from("final"), kind).eval()


SPEC = AdaptSpec(
    name="surgery",
    run=run_surgery,
    params=SurgeryParams,
    paper=SURGERY_PAPER,
    needs=frozenset({"unlabeled"}),
    description="task-specific low-rank modules on the merged model's last representation, trained to match each expert (L1, no labels)",
)

SPEC_V2 = AdaptSpec(
    name="surgery_v2",
    run=run_surgery_v2,
    params=SurgeryV2Params,
    paper=SURGERY_V2_PAPER,
    needs=frozenset({"unlabeled"}),
    description="SurgeryV2: task-specific low-rank modules after every transformer block, trained jointly against the expert's per-block outputs",
)

__all__ = ["SPEC", "SPEC_V2", "SurgeryModule", "SurgeryEncoder", "DeepSurgeryEncoder", "load_saved"]

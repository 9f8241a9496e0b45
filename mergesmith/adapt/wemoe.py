"""WEMoE and E-WEMoE: the MLP blocks become weight-ensembling mixtures of experts, routed per input.

- WEMoE: Tang, Shen, Luo, Yin, Zhang, Tao 2024, "Merging Multi-Task Models via Weight-Ensembling Mixture of Experts",
  ICML 2024, arXiv 2402.00433.
- E-WEMoE: Shen, Tang, Yang, Guo, Luo, Zhang, Chen, Du, Tao 2024, "Efficient and Effective Weight-Ensembling Mixture
  of Experts for Multi-Task Model Merging", arXiv 2410.21804.

The steps (WEMoE Sec. 3; E-WEMoE Sec. 4):
1. task vectors tau_t = theta_t - theta_0 (WEMoE Sec. 3.1, as in task arithmetic);
2. the modules outside the MLP blocks are merged statically by task arithmetic, theta = theta_0 + lambda sum_t tau_t
   with lambda = 0.3 (WEMoE Sec. 3.2: the non-critical modules; the authors' init lambda);
3. each MLP block (the critical modules, WEMoE Sec. 3.2) becomes a weight-ensembling MoE: for input x with hidden
   states h (the block's input), the router gives per-token coefficients r(h) over the task vectors, averaged over
   the input's tokens (real tokens only for text) to one coefficient per task, and the block runs with the weights
   W(x) = W_0 + sum_t r_t(x) tau_t^W (and the same for the biases) (WEMoE Sec. 3.2, the weight-ensembling MoE);
4. the router is a 2-layer MLP r(h) = W_2 ReLU(W_1 h + b_1) + b_2 (WEMoE Sec. 3.2), initialised with W_1, W_2 ~
   N(0, 0.01^2), b_1 = 0 and b_2 = lambda = 0.3, so the MoE starts as task arithmetic with lambda 0.3;
5. routers are trained by test-time adaptation: minimise the Shannon entropy of each task head's predictions on the
   task's unlabeled test inputs, summed over tasks (WEMoE Sec. 3.3, the AdaMerging objective), Adam, seeded batches;
6. E-WEMoE (E-WEMoE Sec. 4): (a) each MLP task vector is sparsified by magnitude, keeping the top ``density``
   fraction of each tensor's entries (E-WEMoE-90% keeps 10 %); (b) one router is shared by all MoE blocks (each
   block feeds it its own hidden states), so trainable and total parameters drop by about the number of layers and
   1/density respectively.

Architectures: the MLP blocks are found by layout (``mergesmith.adapt.modules``: BERT, GPT-2, LLaMA, CLIP); an
architecture without one fails with a one-line error naming what was looked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.functional import fixed_head_logits
from mergesmith.adapt.modules import mlp_blocks
from mergesmith.adapt.wemoe_model import (
    RoutedLinear,
    Router,
    WemoeEncoder,
    build_wemoe,
    install_moe,
    mlp_tensor_names,
    sparsify,
)
from mergesmith.errors import MergesmithError

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem, AdaptTask
    from mergesmith.adapt.result import AdaptResult

WEMOE_PAPER = (
    "Tang, Shen, Luo, Yin, Zhang, Tao 2024, Merging Multi-Task Models via Weight-Ensembling Mixture of Experts, "
    "ICML 2024, arXiv 2402.00433"
)
E_WEMOE_PAPER = (
    "Shen, Tang, Yang, Guo, Luo, Zhang, Chen, Du, Tao 2024, Efficient and Effective Weight-Ensembling Mixture of "
    "Experts for Multi-Task Model Merging, arXiv 2410.21804"
)


class WemoeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init_lambda: float = Field(
        0.3, description="task arithmetic's lambda: the static merge and the routers' initial output"
    )
    router_hidden: int | None = Field(None, ge=1, description="the router's hidden width (default: the model's width)")
    # FusionBench runs 1000 steps (CLIP) or 200 (Flan-T5) at lr 1e-4. On 2 CPU cores each step costs a forward and
    # backward pass per task, so the default is 40 steps at the same rate. A larger rate is not a shortcut: on the
    # offline bench, 40 steps at lr 1e-3 drove the coefficients to -8..+8, the summed entropy from 6.6 to 0.7 and the
    # test accuracy from 60.4 % (the TA init) to 34.6 %; at lr 1e-4 it rose to 63.6 % (BENCHMARKS.md, "WEMoE").
    steps: int = Field(40, ge=0, description="Adam steps; each step takes one batch of every task")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    progress: bool = Field(True, description="show a progress bar")


class EWemoeParams(WemoeParams):
    density: float = Field(0.1, gt=0, le=1, description="fraction of each MLP task-vector tensor kept (by magnitude)")
    shared_router: bool = Field(True, description="one router for every MoE block")


# ------------------------------------------------------------------------------------------------------------------
# Run


def _endless(problem: AdaptProblem, task: AdaptTask, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from problem.batches(task.unlabeled, batch_size, shuffle=True, seed=seed * 7919 + epoch)
        epoch += 1


def _run(problem: AdaptProblem, params: WemoeParams, seed: int, efficient: bool) -> AdaptResult:
    from tqdm.auto import tqdm

    from mergesmith.adapt.functional import entropy
    from mergesmith.adapt.problem import check_needs
    from mergesmith.adapt.result import AdaptResult

    name = "e_wemoe" if efficient else "wemoe"
    check_needs(problem, name, frozenset({"unlabeled"}))
    base = problem.base_state()
    task_names = problem.task_names
    probe = problem.load_encoder(problem.base_dir)
    blocks = mlp_blocks(probe)  # fails early, naming the layouts, when the architecture has no MLP block
    mlp_names = mlp_tensor_names(probe, blocks)
    del probe
    mlp_set = set(mlp_names)
    density = params.density if efficient and isinstance(params, EWemoeParams) else 1.0

    # One expert at a time: only the MLP task vectors (the MoE's experts) are kept, never every full task vector.
    # Step 2: task arithmetic outside the MLP blocks; the MLP tensors keep the base (their MoE adds the vectors).
    floating = {key: (b if key in mlp_set else b.clone()) for key, b in base.items()}
    vectors = []
    for task_name in task_names:
        expert = problem.expert_state(task_name)
        for key, b in base.items():
            if key not in mlp_set:
                floating[key].add_(expert[key] - b, alpha=params.init_lambda)
        # Step 6 (a): E-WEMoE sparsifies every MLP task-vector tensor.
        vectors.append({key: sparsify(expert[key] - base[key], density) for key in mlp_names})
        del expert

    model = problem.encoder_with(floating)
    model.requires_grad_(False)
    config: Any = model.config  # a transformers config (nn.Module types its attributes as Tensor | Module)
    width = int(config.hidden_size)
    hidden = params.router_hidden or width
    shared = bool(getattr(params, "shared_router", False)) if efficient else False
    generator = torch.Generator().manual_seed(seed)
    routers = nn.ModuleList(
        Router(width, len(task_names), hidden, params.init_lambda, generator)
        for _ in range(1 if shared else len(blocks))
    )
    moe = build_wemoe(model, base, vectors, routers).eval()

    # Step 5: test-time entropy minimisation over every task's unlabeled inputs.
    optimizer = torch.optim.Adam(routers.parameters(), lr=params.lr)
    streams = [_endless(problem, task, params.batch_size, seed * 31 + i) for i, task in enumerate(problem.tasks)]
    losses: list[float] = []
    for _ in tqdm(range(params.steps), desc=name, unit="step", leave=False, disable=None if params.progress else True):
        optimizer.zero_grad()
        total = 0.0
        for task, stream in zip(problem.tasks, streams):
            features = problem.pooled(moe, next(stream))
            logits = fixed_head_logits(task.head, features)
            loss = entropy(logits)
            loss.backward()  # per task: activations of one batch at a time (gradient accumulation over tasks)
            total += float(loss.detach())
        optimizer.step()
        losses.append(total)

    extras: dict[str, Tensor] = {}
    kept = 0
    for t, vector in enumerate(vectors):
        for key in mlp_names:
            tensor = vector[key]
            if efficient:
                flat = tensor.flatten()
                index = flat.nonzero().flatten()
                extras[f"tau.{t}.{key}.indices"] = index.to(torch.int32)
                extras[f"tau.{t}.{key}.values"] = flat[index].contiguous()
                kept += int(index.numel())
            else:
                extras[f"tau.{t}.{key}"] = tensor.contiguous()
                kept += tensor.numel()
    for r, router in enumerate(routers):
        for key, value in router.state_dict().items():
            extras[f"router.{r}.{key}"] = value.detach().clone()

    model_parameters = sum(v.numel() for v in base.values())
    router_parameters = sum(p.numel() for p in routers.parameters())
    mlp_parameters = sum(base[k].numel() for k in mlp_names)
    total_parameters = model_parameters + kept + router_parameters
    spec = {
        "method": name,
        "paper": E_WEMOE_PAPER if efficient else WEMOE_PAPER,
        "tasks": task_names,
        "sparse": efficient,
        "density": density,
        "shared_router": shared,
        "routers": len(routers),
        "router_hidden": hidden,
        "init_lambda": params.init_lambda,
        "mlp_tensors": mlp_names,
        "model_class": type(model).__name__,
        "params": params_dict(params),
    }
    info = {
        "added_parameters": total_parameters - model_parameters,
        "trainable_parameters": router_parameters,
        "total_parameters": total_parameters,
        "model_parameters": model_parameters,
        "mlp_parameters_per_model": mlp_parameters,
        "task_vector_parameters": kept,
        "entropy_first": losses[0] if losses else None,
        "entropy_last": losses[-1] if losses else None,
        "entropy_every_10": losses[::10],
        "note": (
            f"{len(blocks)} MLP blocks routed; {'one shared router' if shared else 'one router per block'}; "
            f"MLP task vectors kept at density {density:g}"
        ),
    }

    def encoder_for(task: str) -> nn.Module:
        problem.task(task)  # unknown names fail with the task list; routing is per input, one model for all tasks
        return moe

    return AdaptResult("wemoe", problem.checkpoint_state(floating), encoder_for, extras, spec, info, merged=floating)


def run_wemoe(problem: AdaptProblem, params: WemoeParams, seed: int) -> AdaptResult:
    return _run(problem, params, seed, efficient=False)


def run_e_wemoe(problem: AdaptProblem, params: EWemoeParams, seed: int) -> AdaptResult:
    return _run(problem, params, seed, efficient=True)


# ------------------------------------------------------------------------------------------------------------------
# Loading: mergesmith.load_merged(path)


def load_saved(directory: Path, document: dict, task: str | None) -> nn.Module:
    """The routed model from a directory ``save_result`` wrote for WEMoE / E-WEMoE (one model for every task)."""
    from safetensors.torch import load_file

    from mergesmith.adapt.result import EXTRAS_FILE, load_saved_encoder

    spec = document.get("spec", {})
    tasks = list(spec.get("tasks", []))
    if task is not None and task not in tasks:
        raise MergesmithError(
            f"{directory} has no task {task!r}; tasks: {', '.join(tasks)} (the routed model serves them all)"
        )
    path = Path(directory) / EXTRAS_FILE
    if not path.is_file():
        raise MergesmithError(
            f"{path} is missing; the task vectors and routers are stored there: copy the whole directory"
        )
    extras = load_file(str(path))
    model = load_saved_encoder(directory, spec)
    model.requires_grad_(False)
    state = model.state_dict()
    names = list(spec["mlp_tensors"])
    base = {k: state[k].float() for k in names}
    vectors = []
    for t in range(len(tasks)):
        vector = {}
        for key in names:
            if spec.get("sparse"):
                flat = torch.zeros(base[key].numel())
                flat[extras[f"tau.{t}.{key}.indices"].long()] = extras[f"tau.{t}.{key}.values"]
                vector[key] = flat.view_as(base[key])
            else:
                vector[key] = extras[f"tau.{t}.{key}"]
        vectors.append(vector)
    config: Any = model.config  # a transformers config (nn.Module types its attributes as Tensor | Module)
    width = int(config.hidden_size)
    routers = nn.ModuleList(
        Router(width, len(tasks), int(spec["router_hidden"]), float(spec["init_lambda"]))
        for _ in range(int(spec["routers"]))
    )
    for r, router in enumerate(routers):
        router.load_state_dict({k: extras[f"router.{r}.{k}"] for k in router.state_dict()})
    return build_wemoe(model, base, vectors, routers).eval()


SPEC = AdaptSpec(
    name="wemoe",
    run=run_wemoe,
    params=WemoeParams,
    paper=WEMOE_PAPER,
    needs=frozenset({"unlabeled"}),
    description="MLP blocks become per-input routed mixtures of task vectors (one router per block), routers trained by test-time entropy minimisation",
)

SPEC_E = AdaptSpec(
    name="e_wemoe",
    run=run_e_wemoe,
    params=EWemoeParams,
    paper=E_WEMOE_PAPER,
    needs=frozenset({"unlabeled"}),
    description="E-WEMoE: WEMoE with magnitude-sparsified MLP task vectors and one router shared by all blocks",
)

__all__ = [
    "SPEC",
    "SPEC_E",
    "Router",
    "RoutedLinear",
    "WemoeEncoder",
    "build_wemoe",
    "install_moe",
    "sparsify",
    "load_saved",
]

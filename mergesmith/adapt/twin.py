"""Twin-Merging: a shared merge plus each expert's exclusive knowledge, SVD-compressed and mixed per input by a router.

Lu, Fan, Ma, Zheng, Zhang, Jia 2024, "Twin-Merging: Dynamic Integration of Modular Expertise in Model Merging",
NeurIPS 2024, arXiv:2406.15479. Steps (Sec. 3 of the paper):

1. shared knowledge: theta* = Merge(theta_1..theta_T), task arithmetic by default (any mergesmith method through
   ``merge_state_dicts``; ``shared_method``/``shared_params``);
2. exclusive knowledge: tau_t = theta_t - theta*, compressed per 2-D tensor by truncated SVD,
   tau_t ~ U_t S_t V_t^T with the top ``rank`` singular values (Eckart-Young: the best rank-r approximation);
   tensors that are not matrices (biases, norms) are small and kept exactly;
3. dynamic merging: a router R (a small MLP on the shared model's pooled features of the input, as in the paper) is
   trained with cross-entropy on a small labeled VALIDATION set to predict which task an input comes from (the task
   identity is the label; no test label is read); at inference, per input x,
   theta(x) = theta* + sum_t softmax(R(x))_t U_t S_t V_t^T.

Inference (``TwinEncoder``): one pass of the shared model gives the router's features; the second pass adds the
routed exclusive parts exactly without building per-input weights: for a linear layer y = x W*^T + b* +
sum_t w_t(x) [(x V_t) (U_t S_t)^T + delta_b_t] (the low-rank product applied to activations, as LoRA does); GPT-2's
Conv1D (y = x W + b, W stored [in, out], so tau_t ~ U_t S_t V_t^T is [in, out]) adds sum_t w_t [(x U_t S_t) V_t^T +
delta_b_t]; embeddings add sum_t w_t (U_t S_t)[ids] V_t^T; layer norms add xhat * sum_t w_t delta_gamma_t +
sum_t w_t delta_beta_t, and LLaMA-style RMS norms (y = gamma * x / rms(x)) add xhat * sum_t w_t delta_gamma_t.
Tensors owned by any other kind of module switch the model to a per-input path (``torch.func.functional_call``
with theta(x) built for each input: exact, slower).

Saved layout (``save_result``): the shared weights in HF layout, ``adapt_extras.safetensors`` with the factors
(``twin.<tensor>.US`` [T, m, r], ``twin.<tensor>.V`` [T, n, r]; dense ``twin.<tensor>.delta`` [T, ...]) and the
router (``router.*``), ``adapt.json`` kind "twin_merging"; ``mergesmith.load_merged(path)`` rebuilds the routed model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mergesmith.adapt._spec import AdaptSpec, params_dict
from mergesmith.adapt.problem import AdaptProblem, check_needs
from mergesmith.adapt.result import AdaptResult
from mergesmith.adapt.twin_model import (
    Router,
    TwinEncoder,
    added_parameters,
    build_twin,
    extras_of,
    router_features,
)
from mergesmith.errors import MergesmithError

NAME = "twin_merging"
KIND = "twin_merging"
PAPER = (
    "Lu et al. 2024, Twin-Merging: Dynamic Integration of Modular Expertise in Model Merging, NeurIPS 2024, "
    "arXiv:2406.15479"
)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shared_method: str = Field("task_arithmetic", description="the merge method of the shared expert")
    shared_params: dict[str, Any] = Field(
        default_factory=lambda: {"weight": 0.3}, description="its parameters (merge_state_dicts keywords)"
    )
    rank: int = Field(32, ge=1, description="rank of each exclusive matrix's truncated SVD")
    rank_fraction: float | None = Field(None, gt=0, le=1, description="rank as a fraction of min(m, n); overrides rank")
    router_hidden: int = Field(64, ge=1, description="hidden width of the router MLP")
    router_steps: int = Field(
        300, ge=1, description="Adam steps of router training (mini-batches of validation features)"
    )
    router_lr: float = Field(1e-3, gt=0)
    router_batch_size: int = Field(64, ge=1)
    router_weight_decay: float = Field(1e-4, ge=0)
    progress: bool = Field(True, description="show progress bars")


# ------------------------------------------------------------------------------------------------------------------
# Step 1-2: shared merge and compressed exclusive parts (pure functions)


class _LazyExpert(Mapping):
    """theta_t = theta_0 + tau_t computed tensor by tensor on access, so merging never holds T expert copies."""

    def __init__(self, base: Mapping[str, Tensor], vector: Mapping[str, Tensor]):
        self._base, self._vector = base, vector

    def __getitem__(self, name: str) -> Tensor:
        return self._base[name] + self._vector[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


def shared_weights(
    base: Mapping[str, Tensor], vectors: Sequence[Mapping[str, Tensor]], method: str, params: dict, seed: int
) -> dict[str, Tensor]:
    """theta* = Merge(theta_1..theta_T) (step 1) with any mergesmith tensor-wise method."""
    from mergesmith.api import merge_state_dicts

    return merge_state_dicts(dict(base), [_LazyExpert(base, v) for v in vectors], method, seed=seed, **params)


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(U_r S_r [m, r], V_r [n, r]) with U_r S_r V_r^T the best rank-r approximation of ``matrix`` (step 2)."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    r = min(rank, s.numel())
    return (u[:, :r] * s[:r]).to(matrix.dtype), vh[:r].T.contiguous().to(matrix.dtype)


def exclusive_parts(
    base: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    shared: Mapping[str, Tensor],
    rank: int,
    rank_fraction: float | None,
) -> dict[str, dict[str, Tensor]]:
    """Per tensor that some expert differs from theta* on: {"US": [T, m, r], "V": [T, n, r]} for matrices, or
    {"delta": [T, ...]} for other tensors; tau_t = theta_t - theta* (step 2)."""
    parts: dict[str, dict[str, Tensor]] = {}
    for name, b in base.items():
        deltas = [(b + v[name]) - shared[name] for v in vectors]
        if not any(bool(d.any()) for d in deltas):
            continue  # every expert equals the shared model here (e.g. frozen word embeddings)
        if b.dim() == 2:
            r = rank if rank_fraction is None else max(1, math.ceil(rank_fraction * min(b.shape)))
            factors = [truncated_svd(d, r) for d in deltas]
            parts[name] = {"US": torch.stack([f[0] for f in factors]), "V": torch.stack([f[1] for f in factors])}
        else:
            parts[name] = {"delta": torch.stack(deltas)}
    return parts


# ------------------------------------------------------------------------------------------------------------------
# Step 3: the router


def train_router(
    features: Tensor, task_ids: Tensor, tasks: int, params: Params, seed: int
) -> tuple[Router, list[float]]:
    """Cross-entropy on (validation features, task identity), Adam, seeded init and batch order."""
    g = torch.Generator().manual_seed(seed)
    router = Router(features.shape[1], params.router_hidden, tasks)
    with torch.no_grad():
        router.mean.copy_(features.mean(0))
        router.std.copy_(features.std(0).clamp_min(1e-6))
        for layer in (router.fc1, router.fc2):
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=g)
            layer.bias.uniform_(-bound, bound, generator=g)
    optimizer = torch.optim.Adam(router.parameters(), lr=params.router_lr, weight_decay=params.router_weight_decay)
    losses = []
    n = len(features)
    order = torch.randperm(n, generator=g)
    cursor = 0
    for _ in range(params.router_steps):
        if cursor >= n:
            order, cursor = torch.randperm(n, generator=g), 0
        rows = order[cursor : cursor + params.router_batch_size]
        cursor += params.router_batch_size
        loss = nn.functional.cross_entropy(router(features[rows]), task_ids[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return router.eval().requires_grad_(False), losses


def pooling_for(problem: AdaptProblem, output: Any) -> str:
    """The router's pooling, named for the saved model: the features the task heads read (``REPRESENTATIONS`` of
    ``mergesmith.adapt.featurizer``) as found in this model's output."""
    representation = problem.featurizer.representation
    if representation == "mean_tokens":
        return "mean"
    if representation == "image_embeds" and getattr(output, "image_embeds", None) is not None:
        return "image_embeds"
    return "pooler_output" if getattr(output, "pooler_output", None) is not None else "first_token"


# ------------------------------------------------------------------------------------------------------------------
# The method


@torch.no_grad()
def _validation_features(problem: AdaptProblem, encoder: nn.Module) -> tuple[Tensor, Tensor, str]:
    feats, ids, pooling = [], [], None
    for t, task in enumerate(problem.tasks):
        for batch in problem.batches(task.validation, 64):
            kwargs = problem.forward_kwargs(batch)
            out = encoder(**kwargs)
            pooling = pooling or pooling_for(problem, out)
            feats.append(router_features(out, kwargs, pooling))
            ids.append(torch.full((len(batch),), t, dtype=torch.long))
    assert pooling is not None, "check_needs gave every task a validation split"
    return torch.cat(feats), torch.cat(ids), pooling


def run(problem: AdaptProblem, params: Params, seed: int) -> AdaptResult:
    check_needs(problem, NAME, frozenset({"validation"}))
    if len(problem.tasks) < 2:
        raise MergesmithError("twin_merging routes between experts; give at least 2 tasks")
    base = problem.base_state()
    vectors = [problem.task_vectors()[t] for t in problem.task_names]
    shared = shared_weights(base, vectors, params.shared_method, dict(params.shared_params), seed)  # step 1
    parts = exclusive_parts(base, vectors, shared, params.rank, params.rank_fraction)  # step 2
    encoder = problem.encoder_with(shared)
    features, task_ids, pooling = _validation_features(problem, encoder)
    router, losses = train_router(features, task_ids, len(problem.tasks), params, seed)  # step 3
    with torch.no_grad():
        train_accuracy = float((router(features).argmax(-1) == task_ids).float().mean())
    twin = TwinEncoder(encoder, parts, router, problem.task_names, pooling)

    def encoder_for(task: str) -> nn.Module:
        problem.task(task)  # routing needs no task identity; unknown names still fail with the task list
        return twin

    ranks = {name: int(p["US"].shape[-1]) for name, p in parts.items() if "US" in p}
    spec = {
        "method": NAME,
        "paper": PAPER,
        "params": params_dict(params),
        "seed": seed,
        "tasks": problem.task_names,
        "pooling": pooling,
        "model_class": type(encoder).__name__,
    }
    info = {
        "added_parameters": added_parameters(parts, router),
        "router_parameters": sum(p.numel() for p in router.parameters()),
        "exclusive_tensors": len(parts),
        "low_rank_tensors": len(ranks),
        "dense_tensors": len(parts) - len(ranks),
        "max_rank": max(ranks.values(), default=0),
        "router_train_accuracy": train_accuracy,
        "router_loss_first": losses[0],
        "router_loss_last": losses[-1],
        "inference": "hooks" if twin.fast else "per-input",
        "forward_passes_per_batch": 2,
    }
    return AdaptResult(KIND, problem.checkpoint_state(shared), encoder_for, extras_of(twin), spec, info, merged=shared)


SPEC = AdaptSpec(
    name=NAME,
    run=run,
    params=Params,
    paper=PAPER,
    needs=frozenset({"validation"}),
    description="shared merge + SVD-compressed exclusive parts mixed per input by a router trained on validation data",
)


def load_twin(directory, document: Mapping[str, Any], task: str | None) -> TwinEncoder:
    """``mergesmith.load_merged`` for kind "twin_merging": the shared weights, the factors and the router."""
    from pathlib import Path

    from safetensors.torch import load_file

    from mergesmith.adapt.result import EXTRAS_FILE, load_saved_encoder

    directory = Path(directory)
    spec = document.get("spec", {})
    tasks = list(spec.get("tasks") or document.get("tasks") or [])
    if task is not None and task not in tasks:
        raise MergesmithError(
            f"{directory}: no task {task!r}; tasks: {', '.join(tasks)} (the router picks per input; "
            "task= may be left out)"
        )
    extras_path = directory / EXTRAS_FILE
    if not extras_path.is_file():
        raise MergesmithError(
            f"{directory}: {EXTRAS_FILE} is missing; a Twin-Merging directory needs its factors and router"
        )
    encoder = load_saved_encoder(directory, spec)
    return build_twin(encoder, load_file(str(extras_path)), {**spec, "tasks": tasks})

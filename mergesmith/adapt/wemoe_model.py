"""WEMoE's modules: the router and the routed linear layers that mix the MLP task vectors per input, and how they are
installed into an encoder (``build_wemoe``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mergesmith.adapt.modules import MlpBlock, mlp_blocks
from mergesmith.errors import MergesmithError

# Per-example weight matrices are built this many floats at a time (the batch is split to stay under it).
_CHUNK_FLOATS = 8 * 1024 * 1024


# ------------------------------------------------------------------------------------------------------------------
# Router and routed linear layers


class Router(nn.Module):
    """r(h) = W_2 ReLU(W_1 h + b_1) + b_2, token-wise, averaged over an input's (real) tokens (WEMoE Sec. 3.2)."""

    def __init__(
        self, width: int, n_tasks: int, hidden: int, init_lambda: float, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, n_tasks)
        with torch.no_grad():
            self.fc1.weight.normal_(0.0, 0.01, generator=generator)
            self.fc1.bias.zero_()
            self.fc2.weight.normal_(0.0, 0.01, generator=generator)
            self.fc2.bias.fill_(init_lambda)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        scores = self.fc2(torch.relu(self.fc1(hidden.float())))  # [B, L, T] token-wise coefficients
        if scores.dim() == 2:
            return scores
        if mask is not None and mask.shape == scores.shape[:2]:
            m = mask.to(scores.dtype).unsqueeze(-1)
            return (scores * m).sum(1) / m.sum(1).clamp_min(1.0)
        return scores.mean(1)  # [B, T] one coefficient per task and input


class _Routing:
    """Shared by the linears of one MLP block: the coefficients of the input now running through the block."""

    def __init__(self, router: nn.Module, context: dict):
        self.router = router
        self.context = context  # {"mask": attention mask of the current call}
        self.input: Tensor | None = None
        self.weights: Tensor | None = None

    def coefficients(self, x: Tensor, entry: bool) -> Tensor:
        if entry and self.input is not x:
            self.input = x
            self.weights = self.router(x, self.context.get("mask"))
        if self.weights is None:
            raise MergesmithError(
                "a routed MLP's output layer ran before its input layer; the block's layout is not supported"
            )
        return self.weights


class RoutedLinear(nn.Module):
    """W(x) = W_0 + sum_t r_t(x) tau_t (WEMoE Sec. 3.2), per input; nn.Linear or GPT-2 Conv1D layout.

    Weights are held once, as [in, out] matrices (``weight_io``, and the task vectors stacked ``tau_io`` [T, in, out]),
    the layout both evaluation paths multiply with directly."""

    weight_io: Tensor  # buffers, registered in __init__
    tau_io: Tensor
    bias: Tensor | None
    tau_bias: Tensor | None

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        tau_weight: Tensor,
        tau_bias: Tensor | None,
        routing: _Routing,
        *,
        entry: bool,
        conv1d: bool,
    ):
        super().__init__()
        # nn.Linear stores [out, in], Conv1D [in, out]
        self.register_buffer("weight_io", (weight if conv1d else weight.t()).float().contiguous())
        self.register_buffer("tau_io", (tau_weight if conv1d else tau_weight.transpose(1, 2)).float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())
        self.register_buffer("tau_bias", None if tau_bias is None else tau_bias.float().contiguous())
        self.routing = routing
        self.entry = entry

    def forward(self, x: Tensor) -> Tensor:
        r = self.routing.coefficients(x, self.entry)  # [B, T]
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(1)
        x = x.float()
        y = self._by_activations(x, r) if torch.is_grad_enabled() and r.requires_grad else self._by_weights(x, r)
        if self.bias is not None:
            b = self.bias + (r @ self.tau_bias if self.tau_bias is not None else 0)  # b(x) = b_0 + sum_t r_t tau_t^b
            y = y + b.unsqueeze(1)
        return y.squeeze(1) if squeeze else y

    def _by_activations(self, x: Tensor, r: Tensor) -> Tensor:
        """Training: x W_0 + sum_t r_t (x tau_t) as ONE matmul of [r_1 x, ..., r_T x] with the stacked task vectors.
        Same value as ``_by_weights``; its backward is a few large matmuls instead of per-example weight matrices
        (memory-bound and several times slower on CPU)."""
        n_tasks, d_in, d_out = self.tau_io.shape
        scaled = (x.unsqueeze(-2) * r[:, None, :, None]).flatten(-2)  # [B, L, T * in]
        return x @ self.weight_io + scaled @ self.tau_io.view(n_tasks * d_in, d_out)

    def _by_weights(self, x: Tensor, r: Tensor) -> Tensor:
        """Inference: W(x) built per example (chunks of the batch) and applied with one batched matmul."""
        n_tasks, d_in, d_out = self.tau_io.shape
        chunk = max(1, _CHUNK_FLOATS // self.weight_io.numel())
        flat = self.tau_io.view(n_tasks, -1)
        outs = []
        for start in range(0, x.shape[0], chunk):
            rc = r[start : start + chunk]
            w = self.weight_io + (rc @ flat).view(-1, d_in, d_out)  # [b, in, out]
            outs.append(torch.bmm(x[start : start + chunk], w))
        return torch.cat(outs)


class WemoeEncoder(nn.Module):
    """The merged encoder with routed MLP blocks; same call and outputs as the encoder (the routing is per input,
    so every task is scored with this one model)."""

    def __init__(self, model: nn.Module, routers: nn.ModuleList, context: dict):
        super().__init__()
        self.model = model
        self.routers = routers
        self._context = context

    @property
    def config(self):
        return self.model.config

    def forward(self, **kwargs: Any) -> Any:
        self._context["mask"] = kwargs.get("attention_mask")
        try:
            return self.model(**kwargs)
        finally:
            self._context["mask"] = None
            for routing in self._context["routings"]:  # drop the last call's activations and graph
                routing.input = routing.weights = None


def _get(model: nn.Module, dotted: str) -> nn.Module:
    module = model
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(_get(model, parent) if parent else model, leaf, new)


def sparsify(tensor: Tensor, density: float) -> Tensor:
    """E-WEMoE Sec. 4 (a): keep the ``density`` fraction of entries largest in magnitude, zero the rest."""
    if density >= 1.0:
        return tensor
    flat = tensor.flatten()
    k = max(1, math.ceil(density * flat.numel()))
    keep = flat.abs().topk(k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.view_as(tensor)


def mlp_tensor_names(model: nn.Module, blocks: Sequence[MlpBlock]) -> list[str]:
    names = []
    for block in blocks:
        for linear in block.linears:
            module = _get(model, linear)
            names.append(f"{linear}.weight")
            if module.bias is not None:
                names.append(f"{linear}.bias")
    return names


def install_moe(
    model: nn.Module,
    blocks: Sequence[MlpBlock],
    base: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    routers: nn.ModuleList,
) -> dict:
    """Replace every MLP linear of ``model`` by a RoutedLinear over ``base`` and the task vectors ``vectors`` (each
    a mapping name -> tau restricted to the MLP tensors). ``routers`` holds one router per block, or one shared.
    Returns the call context the WemoeEncoder fills (the attention mask)."""
    context: dict = {"mask": None, "routings": []}
    for block in blocks:
        routing = _Routing(routers[block.layer if len(routers) > 1 else 0], context)
        context["routings"].append(routing)
        for linear in block.linears:
            module = _get(model, linear)
            bias_name = f"{linear}.bias" if module.bias is not None else None
            routed = RoutedLinear(
                base[f"{linear}.weight"],
                base[bias_name] if bias_name else None,
                torch.stack([v[f"{linear}.weight"] for v in vectors]),
                torch.stack([v[bias_name] for v in vectors]) if bias_name else None,
                routing,
                entry=linear in block.entry,
                conv1d=type(module).__name__ == "Conv1D",
            )
            _set(model, linear, routed)
    return context


def build_wemoe(
    model: nn.Module, base: Mapping[str, Tensor], vectors: Sequence[Mapping[str, Tensor]], routers: nn.ModuleList
) -> WemoeEncoder:
    """``model`` (holding the statically merged weights outside the MLPs) with its MLP blocks turned into MoEs."""
    blocks = mlp_blocks(model)
    context = install_moe(model, blocks, base, vectors, routers)
    return WemoeEncoder(model, routers, context)

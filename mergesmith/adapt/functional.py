"""Merged weights as a differentiable function of merge coefficients, and forward passes through them.

The coefficient-learning methods (AdaMerging, aTLAS; WEMoE/Surgery may reuse it) all need the same two pieces:

- ``combine(base, vectors, coefficients, groups)``: theta = theta_0 + sum_k lambda_k[g(name)] tau_k[name], built on
  the fly from the base and ONE copy of the task vectors (never N model copies): ``coefficients`` is a [K, G] tensor
  (K task vectors, G coefficient groups) and ``groups`` maps each tensor name to its group's column. Tensors mapped to
  ``None`` (all task vectors exactly zero there, e.g. frozen word embeddings) stay the base's tensor.
- ``pooled_with(problem, module, params, batch)``: the bench's pooled features of ``module`` run with ``params``
  through ``torch.func.functional_call`` (gradients flow back to the coefficients).

Grouping schemes (``coefficient_groups``):
- "task": one column for every tensor (task-wise AdaMerging, Yang et al. 2024 Sec. 3.2);
- "tensor": one column per parameter tensor (layer-wise AdaMerging as in the authors' release, which keeps one
  coefficient per parameter tensor; aTLAS's "parameter block", Zhang et al. 2024 Sec. 3);
- "layer": one column per transformer block (all tensors named ``<stack>.<i>.…`` share block i's column); tensors
  outside the stack group by their module prefix (``embeddings.``, ``pooler.``, the final norm ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from mergesmith.adapt.featurizer import TaskHead
from mergesmith.errors import MergesmithError

if TYPE_CHECKING:
    from mergesmith.adapt.problem import AdaptProblem

SCHEMES = ("task", "tensor", "layer")


def learnable_names(base: Mapping[str, Tensor], vectors: Sequence[Mapping[str, Tensor]]) -> list[str]:
    """The tensors some task vector changes (a tensor every expert left at the base has nothing to weigh)."""
    return [name for name in base if any(bool(v[name].any()) for v in vectors)]


def _layer_key(name: str) -> str:
    from mergesmith.engine.layers import parse_layer

    layer = parse_layer(name)
    if layer is not None:
        return f"{layer.prefix}{layer.index}"
    # outside the stack: the owning module (``embeddings.LayerNorm.weight`` -> ``embeddings``)
    return name.split(".")[0] if "." in name else name


def coefficient_groups(names: Sequence[str], scheme: str) -> tuple[dict[str, int], list[str]]:
    """``(group index of each name, group labels)`` for a grouping scheme (module docstring)."""
    if scheme not in SCHEMES:
        raise MergesmithError(f"unknown coefficient grouping {scheme!r}; choose one of {', '.join(SCHEMES)}")
    labels: list[str] = []
    index: dict[str, int] = {}
    for name in names:
        label = "all" if scheme == "task" else name if scheme == "tensor" else _layer_key(name)
        if label not in labels:
            labels.append(label)
        index[name] = labels.index(label)
    return index, labels


def combine(
    base: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    coefficients: Tensor,
    groups: Mapping[str, int | None],
) -> dict[str, Tensor]:
    """theta[name] = theta_0[name] + sum_k coefficients[k, groups[name]] * tau_k[name] (autograd through
    ``coefficients``); names whose group is None (or missing) keep the base tensor. The sum runs over k in order, so
    with fixed coefficients the result equals the engine's task arithmetic (weighted deltas summed in order)."""
    out: dict[str, Tensor] = {}
    for name, b in base.items():
        g = groups.get(name)
        if g is None:
            out[name] = b
            continue
        mixed: Tensor | None = None
        for k, tau in enumerate(vectors):
            term = coefficients[k, g] * tau[name]
            mixed = term if mixed is None else mixed + term
        out[name] = b if mixed is None else b + mixed
    return out


class _Pooler(nn.Module):
    """Holds the encoder as a submodule so ``functional_call`` swaps EVERY parameter the pooling step touches
    (including an image encoder's post-layernorm / projection), then returns the bench's pooled features."""

    def __init__(self, problem: AdaptProblem, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self._problem = problem

    def forward(self, batch: Any) -> Tensor:
        return self._problem.pooled(self.encoder, batch)


def functional_pooler(problem: AdaptProblem, encoder: nn.Module) -> nn.Module:
    """A module whose ``functional_call`` with ``{"encoder." + name: tensor}`` gives the pooled features."""
    return _Pooler(problem, encoder)


def pooled_with(pooler: nn.Module, params: Mapping[str, Tensor], batch: Any) -> Tensor:
    """[B, width] pooled features of the encoder in ``pooler`` run with ``params`` (HF names) instead of its own."""
    from torch.func import functional_call

    return functional_call(pooler, {f"encoder.{k}": v for k, v in params.items()}, (batch,), strict=False)


def fixed_head_logits(head: TaskHead, features: Tensor) -> Tensor:
    """Logits of a task's fixed head (linear or cosine) on ``features``, in the features' dtype. The head's tensors
    are detached: gradients reach the features, never the head shared by every step and every method."""
    from torch.func import functional_call

    frozen = {name: value.detach().to(features.dtype) for name, value in head.state_dict().items()}
    return functional_call(cast(nn.Module, head), frozen, (features,))


def entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy H(p) = -sum_c p_c log p_c of the softmax of ``logits`` over the batch."""
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


__all__ = [
    "SCHEMES",
    "learnable_names",
    "coefficient_groups",
    "combine",
    "functional_pooler",
    "pooled_with",
    "fixed_head_logits",
    "entropy",
]

"""Twin-Merging's model at inference: the shared weights plus each expert's SVD-compressed exclusive part, mixed per
input by the router's weights (``TwinEncoder``), and its saved form (``build_twin``, ``extras_of``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mergesmith.adapt.modules import is_conv1d
from mergesmith.errors import MergesmithError
from mergesmith.pooling import mean_pool

POOLINGS = ("mean", "image_embeds", "pooler_output", "first_token")


class Router(nn.Module):
    """R(x) = W2 relu(W1 (x - mean) / std + b1) + b2: task logits from the shared model's pooled features."""

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, width: int, hidden: int, tasks: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, tasks)

    def forward(self, features: Tensor) -> Tensor:
        x = (features.float() - self.mean) / self.std
        return self.fc2(torch.relu(self.fc1(x)))


def router_features(output: Any, kwargs: Mapping[str, Tensor], pooling: str) -> Tensor:
    """The shared model's pooled features of an input, the router's input (the same function trains and routes)."""
    if pooling == "mean":
        return mean_pool(output.last_hidden_state, kwargs["attention_mask"]).float()
    if pooling in ("image_embeds", "pooler_output"):
        return getattr(output, pooling).float()
    return output.last_hidden_state[:, 0].float()


# ------------------------------------------------------------------------------------------------------------------
# Inference: the routed model


def is_rms_norm(module: nn.Module) -> bool:
    """An RMS norm computing y = gamma * x / sqrt(mean(x^2) + eps), no bias: ``torch.nn.RMSNorm`` or the transformers
    LLaMA family's ``*RMSNorm`` (LLaMA, Mistral, Qwen2: eps in ``variance_epsilon``). Norms scaling by (1 + gamma)
    (Gemma) keep their eps in ``eps`` and are not matched: they take the exact per-input path."""
    if isinstance(module, nn.RMSNorm):
        return True
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "variance_epsilon")
        and isinstance(getattr(module, "weight", None), Tensor)
        and getattr(module, "bias", None) is None
    )


def rms_normalized(module: nn.Module, x: Tensor) -> Tensor:
    """x / sqrt(mean(x^2) + eps) as ``module`` computes it (in fp32, cast back to x's dtype), before the gain."""
    if isinstance(module, nn.RMSNorm):
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return nn.functional.rms_norm(x, module.normalized_shape, None, eps)
    epsilon: Any = module.variance_epsilon  # a float attribute of transformers' RMSNorm modules
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + epsilon)
    return hidden.to(x.dtype)


class TwinEncoder(nn.Module):
    """The shared encoder plus routed exclusive parts. ``forward(**kwargs)`` returns the encoder's own output type
    (``.last_hidden_state`` etc.) for theta(x) per input. ``force_routing`` ([T] weights) replaces the router (tests,
    analysis); ``last_routing`` holds the weights of the last batch."""

    def __init__(
        self,
        encoder: nn.Module,
        parts: Mapping[str, Mapping[str, Tensor]],
        router: Router,
        tasks: list[str],
        pooling: str,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise MergesmithError(f"unknown router pooling {pooling!r}; one of {', '.join(POOLINGS)}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.router = router
        self.tasks = list(tasks)
        self.pooling = pooling
        self.parts = {name: dict(p) for name, p in parts.items()}
        self.force_routing: Tensor | None = None
        self.last_routing: Tensor | None = None
        self._weights: Tensor | None = None
        self.fast = all(self._hookable(name) for name in self.parts)
        self._hooks = []
        if self.fast:
            modules: dict[str, nn.Module] = {}
            for name in self.parts:
                path, _ = name.rsplit(".", 1)
                modules.setdefault(path, self.encoder.get_submodule(path))
            for path, module in modules.items():
                self._hooks.append(module.register_forward_hook(self._hook_for(path, module)))

    @property
    def config(self):
        return self.encoder.config

    def _hookable(self, name: str) -> bool:
        if "." not in name:
            return False
        path, attr = name.rsplit(".", 1)
        try:
            module = self.encoder.get_submodule(path)
        except AttributeError:
            return False
        if isinstance(module, nn.Linear) or is_conv1d(module):
            return attr in ("weight", "bias")
        if isinstance(module, nn.Embedding):
            return attr == "weight" and module.max_norm is None
        if isinstance(module, nn.LayerNorm):
            return attr in ("weight", "bias")
        if is_rms_norm(module):
            return attr == "weight"
        return False

    # -- routing -----------------------------------------------------------------------------------------------

    def routing(self, kwargs: Mapping[str, Tensor]) -> Tensor:
        """[B, T] softmax(R(x)) from one pass of the shared model (the hooks are idle during it)."""
        batch = next(v for v in kwargs.values() if isinstance(v, Tensor)).shape[0]
        if self.force_routing is not None:
            return self.force_routing.float().expand(batch, -1)
        out = self.encoder(**kwargs)
        return torch.softmax(self.router(router_features(out, kwargs, self.pooling)), dim=-1)

    def forward(self, **kwargs):
        weights = self.routing(kwargs)
        self.last_routing = weights.detach()
        if not self.fast:
            return self._per_input(weights, kwargs)
        self._weights = weights
        try:
            return self.encoder(**kwargs)
        finally:
            self._weights = None

    # -- exact per-input fallback --------------------------------------------------------------------------------

    def dense_delta(self, name: str, weights: Tensor) -> Tensor:
        """sum_t w_t tau_t for one tensor (w: [T])."""
        part = self.parts[name]
        if "delta" in part:
            return torch.einsum("t,t...->...", weights, part["delta"])
        return torch.einsum("tmr,tnr,t->mn", part["US"], part["V"], weights)

    def _per_input(self, weights: Tensor, kwargs: Mapping[str, Tensor]):
        from torch.func import functional_call

        shared = dict(self.encoder.state_dict())
        outputs = []
        for b in range(weights.shape[0]):
            params = {name: shared[name] + self.dense_delta(name, weights[b]) for name in self.parts}
            one = {
                k: (v[b : b + 1] if isinstance(v, Tensor) and v.shape[:1] == weights.shape[:1] else v)
                for k, v in kwargs.items()
            }
            outputs.append(functional_call(self.encoder, params, (), one, strict=False))
        first = outputs[0]
        fields = {k: torch.cat([o[k] for o in outputs]) for k, v in first.items() if isinstance(v, Tensor)}
        return type(first)(**fields)

    # -- fast path: hooks that add the routed low-rank / dense parts to each module's output ----------------------

    def _hook_for(self, path: str, module: nn.Module):
        weight = self.parts.get(f"{path}.weight")
        bias = self.parts.get(f"{path}.bias")
        conv1d = is_conv1d(module)
        rms = not conv1d and not isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)) and is_rms_norm(module)

        def per_sample(w: Tensor, delta: Tensor, like: Tensor) -> Tensor:
            # sum_t w[b, t] delta_t, shaped to broadcast over the non-batch dims of ``like`` (features last)
            mixed = torch.einsum("bt,t...->b...", w, delta)
            return mixed.reshape(mixed.shape[0], *([1] * (like.dim() - 1 - (mixed.dim() - 1))), *mixed.shape[1:])

        def hook(mod, inputs, output):
            w = self._weights
            if w is None:
                return None
            x = inputs[0]
            extra: Tensor | int = 0
            if isinstance(mod, nn.Linear) or conv1d:
                if weight is not None:
                    # nn.Linear: tau [out, in] = US V^T, x tau^T = (x V) US^T; Conv1D: tau [in, out] = US V^T, x tau = (x US) V^T
                    first, second = (weight["US"], weight["V"]) if conv1d else (weight["V"], weight["US"])
                    z = torch.einsum("b...n,tnr->b...tr", x, first)
                    z = z * w.reshape(w.shape[0], *([1] * (x.dim() - 2)), w.shape[1], 1)
                    extra = torch.einsum("b...tr,tmr->b...m", z, second)
                if bias is not None:
                    extra = extra + per_sample(w, bias["delta"], output)
            elif isinstance(mod, nn.Embedding):
                assert weight is not None  # an embedding's part is its weight's
                ids = x if x.shape[0] == w.shape[0] else x.expand(w.shape[0], *x.shape[1:])
                rows = weight["US"][:, ids]  # [T, B, ..., r]
                extra = torch.einsum("tb...r,tdr,bt->b...d", rows, weight["V"], w)
            elif rms:  # RMSNorm: y = xhat * gamma
                assert weight is not None  # an RMSNorm has only a gain
                xhat = rms_normalized(mod, x)
                extra = xhat * per_sample(w, weight["delta"], xhat)
            else:  # LayerNorm: y = xhat * gamma + beta
                xhat = nn.functional.layer_norm(x, mod.normalized_shape, eps=mod.eps)
                if weight is not None:
                    extra = xhat * per_sample(w, weight["delta"], xhat)
                if bias is not None:
                    extra = extra + per_sample(w, bias["delta"], xhat)
            return output + extra

        return hook


def build_twin(encoder: nn.Module, extras: Mapping[str, Tensor], spec: Mapping[str, Any]) -> TwinEncoder:
    """The routed model from the shared encoder, the saved extras and the spec (what the loader calls)."""
    tasks = list(spec["tasks"])
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in extras.items():
        if key.startswith("twin."):
            name, kind = key[len("twin.") :].rsplit(".", 1)
            parts.setdefault(name, {})[kind] = value
    router_state = {k[len("router.") :]: v for k, v in extras.items() if k.startswith("router.")}
    if not router_state:
        raise MergesmithError("the Twin-Merging extras have no router (router.* tensors); save the result again")
    router = Router(router_state["fc1.weight"].shape[1], router_state["fc1.weight"].shape[0], len(tasks))
    router.load_state_dict(router_state)
    return TwinEncoder(encoder, parts, router.eval().requires_grad_(False), tasks, spec["pooling"])


def extras_of(twin: TwinEncoder) -> dict[str, Tensor]:
    out = {f"twin.{name}.{kind}": t for name, part in twin.parts.items() for kind, t in part.items()}
    out.update({f"router.{k}": v for k, v in twin.router.state_dict().items()})
    return out


def added_parameters(parts: Mapping[str, Mapping[str, Tensor]], router: Router) -> int:
    return sum(t.numel() for p in parts.values() for t in p.values()) + sum(p.numel() for p in router.parameters())

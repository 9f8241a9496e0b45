"""Checking a MergeLock output: same function as the original, and merging it with another fine-tune collapses.

Loads the models with transformers (a check, not a streaming job), runs a forward pass on fixed token inputs and
compares the outputs (logits when the model has a head, the last hidden state otherwise). Both verdicts come from
those outputs; the attention-circuit distances are reported beside them as a diagnosis (on a small or nearly uniform
attention the circuits can move far while the outputs barely change).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mergesmith.errors import MergesmithError

# The merge collapses when merge(protected, other) and merge(original, other) pick the same top-1 output at fewer than
# this fraction of the positions: most of what the unprotected merge would predict is lost.
MAX_COLLAPSED_AGREEMENT = 0.5


@dataclass
class VerifyReport:
    max_abs_diff: float  # protected vs original outputs
    output_scale: float  # max |output| of the original, for scale
    merge_with: str  # the other model in the linear merges ("the original itself" when none is given)
    plain_merge_divergence: float  # ||merge(original, other) - original|| / ||original||
    protected_merge_divergence: (
        float  # ||merge(protected, other) - merge(original, other)|| / ||merge(original, other)||
    )
    plain_merge_agreement: float  # top-1 agreement of merge(original, other) with the original
    protected_merge_agreement: float  # top-1 agreement of merge(protected, other) with merge(original, other)
    # The attention circuits W_Q,h^T W_K,h and W_O,h W_V,h (what the attention computes, up to the softmax),
    # relative Frobenius distance summed over heads and layers:
    circuit_preservation: float  # protected vs original (~0: MergeLock keeps every circuit)
    plain_merge_circuit_divergence: float  # merge(original, other) vs original
    protected_merge_circuit_divergence: float  # merge(protected, other) vs merge(original, other)

    @property
    def preserved(self) -> bool:
        return self.max_abs_diff <= 1e-4 * max(1.0, self.output_scale)

    @property
    def collapsed(self) -> bool:
        """Measured on outputs: the protected merge agrees with the unprotected merge on fewer than
        ``MAX_COLLAPSED_AGREEMENT`` of the top-1 predictions."""
        return self.protected_merge_agreement < MAX_COLLAPSED_AGREEMENT

    def as_dict(self) -> dict:
        return {**asdict(self), "preserved": self.preserved, "collapsed": self.collapsed}


def load_model(path: str | Path):
    """The model class named in config.json (e.g. BertForMaskedLM), else AutoModel, in float32 on the CPU."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise MergesmithError(f"{path}: no config.json; --verify loads the model with transformers and needs it")
    from mergesmith.io.parse import read_json

    archs = read_json(config_path, what="config.json", root=path, error=MergesmithError).get("architectures") or []
    archs = archs if isinstance(archs, list) and all(isinstance(a, str) for a in archs) else []
    cls = getattr(transformers, archs[0], None) if archs else None
    cls = cls or transformers.AutoModel
    return cls.from_pretrained(path, dtype=torch.float32).eval()


def fixed_inputs(vocab_size: int, batch: int = 4, length: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(2, max(3, vocab_size), (batch, length), generator=gen)


def model_outputs(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=input_ids)
    value = getattr(out, "logits", None)
    return (value if value is not None else out.last_hidden_state).float()


def _linear_merge(a: dict, b: dict, weight: float) -> dict:
    """theta = w theta_a + (1 - w) theta_b for floating tensors (model soups / linear merge)."""
    return {
        k: (weight * v.float() + (1 - weight) * b[k].float()).to(v.dtype) if v.is_floating_point() else v
        for k, v in a.items()
    }


def _relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


def _agreement(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.argmax(-1) == ref.argmax(-1)).float().mean())


def verify_protection(
    original: str | Path, protected: str | Path, *, merge_with: str | Path | None = None, weight: float = 0.5
) -> VerifyReport:
    """Forward-pass equality of ``protected`` and ``original`` and the damage a linear merge suffers from it."""
    orig = load_model(original)
    prot = load_model(protected)
    other = load_model(merge_with) if merge_with is not None else None
    ids = fixed_inputs(int(getattr(orig.config, "vocab_size", 256) or 256))
    ref = model_outputs(orig, ids)
    diff = float((model_outputs(prot, ids) - ref).abs().max())

    orig_sd, prot_sd = orig.state_dict(), prot.state_dict()
    other_sd = other.state_dict() if other is not None else orig_sd
    if set(other_sd) != set(orig_sd) or any(other_sd[k].shape != orig_sd[k].shape for k in orig_sd):
        raise MergesmithError(
            f"{merge_with}: not a fine-tune of the same architecture as {original} (tensor names or "
            f"shapes differ); pass another fine-tune of the same base to --merge-with"
        )
    plain = _linear_merge(orig_sd, other_sd, weight)
    locked = _linear_merge(prot_sd, other_sd, weight)
    orig.load_state_dict(plain)
    plain_out = model_outputs(orig, ids)
    orig.load_state_dict(locked)
    locked_out = model_outputs(orig, ids)
    circuits = circuit_divergences(original, protected, merge_with if merge_with is not None else original, weight)
    return VerifyReport(
        max_abs_diff=diff,
        output_scale=float(ref.abs().max()),
        merge_with=str(merge_with) if merge_with is not None else "the original itself",
        plain_merge_divergence=_relative(plain_out, ref),
        protected_merge_divergence=_relative(locked_out, plain_out),
        plain_merge_agreement=_agreement(plain_out, ref),
        protected_merge_agreement=_agreement(locked_out, plain_out),
        **circuits,
    )


def head_circuits(
    views: tuple, num_heads: int, num_kv_heads: int, head_dim: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per query head h (kv head g): (W_Q,h^T W_K,g, W_O,h W_V,g), the bilinear forms MergeLock leaves unchanged."""
    q, k, v, o = views[:4]
    group = num_heads // num_kv_heads
    out = []
    for h in range(num_heads):
        g = h // group
        rows_q, rows_kv = slice(h * head_dim, (h + 1) * head_dim), slice(g * head_dim, (g + 1) * head_dim)
        out.append((q[rows_q].T @ k[rows_kv], o[:, rows_q] @ v[rows_kv]))
    return out


def circuit_divergences(original, protected, other, weight: float = 0.5) -> dict[str, float]:
    """Relative distances of the attention circuits, read layer by layer through mergesmith.io."""
    from mergesmith.io import open_checkpoint
    from mergesmith.protect.layout import detect_layout
    from mergesmith.protect.lock import attention_views

    def views(ckpt, block, layout):
        return attention_views({n: ckpt.read(n).to(torch.float64) for n in block.names}, block, layout)

    sums = {
        "circuit_preservation": [0.0, 0.0],
        "plain_merge_circuit_divergence": [0.0, 0.0],
        "protected_merge_circuit_divergence": [0.0, 0.0],
    }

    def add(key, x, ref):
        sums[key][0] += float((x - ref).norm() ** 2)
        sums[key][1] += float(ref.norm() ** 2)

    with open_checkpoint(original) as a, open_checkpoint(protected) as p, open_checkpoint(other) as b:
        layout = detect_layout(a)
        n, kv, d = layout.num_heads, layout.num_kv_heads, layout.head_dim
        for block in layout.blocks:
            va, vp, vb = views(a, block, layout), views(p, block, layout), views(b, block, layout)
            plain = tuple(weight * x + (1 - weight) * y for x, y in zip(va[:4], vb[:4]))
            locked = tuple(weight * x + (1 - weight) * y for x, y in zip(vp[:4], vb[:4]))
            for (qa, oa), (qp, op), (qm, om), (ql, ol) in zip(
                *(head_circuits(v, n, kv, d) for v in (va, vp, plain, locked))
            ):
                add("circuit_preservation", qp, qa), add("circuit_preservation", op, oa)
                add("plain_merge_circuit_divergence", qm, qa), add("plain_merge_circuit_divergence", om, oa)
                add("protected_merge_circuit_divergence", ql, qm), add("protected_merge_circuit_divergence", ol, om)
    return {k: (num / den) ** 0.5 if den > 0 else 0.0 for k, (num, den) in sums.items()}

"""``inspect_task_vectors``: stream BASE and EXPERT checkpoints tensor by tensor and collect task-vector diagnostics.

Memory: the base tensor plus one task vector per expert for the tensor being read, i.e. about
(experts + 1) x the largest tensor (in float32). Global and per-layer numbers are sums of per-tensor dot products,
squared norms and sign counts.

A tensor whose task vectors hold NaN or Inf is left out of every number (a single NaN would make every cosine NaN
and stop the SVD) and listed in ``Diagnostics.nonfinite``; with ``strict`` it is an error instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergesmith.analysis.stats import (
    effective_rank,
    gram,
    pairwise_conflict_counts,
    sign_conflict_counts,
)
from mergesmith.engine.layers import main_stack, parse_layer
from mergesmith.errors import MergesmithError
from mergesmith.io import open_checkpoint

_CHUNK = 1 << 20  # columns of the task-vector matrix converted to float64 at once


@dataclass
class TensorDiagnostics:
    name: str
    layer: int | None  # index in the main layer stack; None for embeddings, heads, final norms
    shape: tuple[int, ...]
    gram: list[list[float]]  # <tau_i, tau_j>
    conflicts: int  # entries where nonzero signs disagree (all experts)
    eligible: int  # entries with >= 2 nonzero task-vector entries
    top_singular: list[list[float]] | None = None  # per expert, the top-k singular values (2-D tensors)
    effective_rank: list[float] | None = None  # per expert


@dataclass
class Diagnostics:
    base: str
    experts: list[str]
    tensors: list[TensorDiagnostics] = field(default_factory=list)
    pair_conflicts: list[list[float]] = field(default_factory=list)  # [n, n] entries with opposite signs
    pair_both: list[list[float]] = field(default_factory=list)  # [n, n] entries where both are nonzero
    nonfinite: list[str] = field(default_factory=list)  # "expert: tensor (k values)", left out of every number


def _label(path: Path, taken: set[str]) -> str:
    label = Path(path).name or str(path)
    base_label, i = label, 2
    while label in taken:  # two experts in different folders with the same name
        label = f"{base_label}#{i}"
        i += 1
    taken.add(label)
    return label


def inspect_task_vectors(
    base: str | Path,
    experts: list[str | Path],
    *,
    top_k: int = 8,
    spectrum: bool = True,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Diagnostics:
    """Task-vector diagnostics of ``experts`` against ``base``; a one-line MergesmithError on mismatched inputs (and,
    with ``strict``, on NaN/Inf values; without it such tensors are listed in ``nonfinite`` and left out)."""
    if not experts:
        raise MergesmithError("inspect needs at least one expert besides the base; give BASE EXPERT [EXPERT ...]")
    if top_k < 1:
        raise MergesmithError(f"--top-k must be at least 1, got {top_k}")
    opened = []
    try:
        for path in [base, *experts]:
            opened.append(open_checkpoint(path))
        base_ckpt, expert_ckpts = opened[0], opened[1:]
        names = [n for n, info in base_ckpt.tensors.items() if info.dtype.is_floating_point]
        _check_matching(base_ckpt, expert_ckpts, names)
        taken: set[str] = set()
        result = Diagnostics(str(base), [_label(Path(p), taken) for p in experts])
        n = len(expert_ckpts)
        pair_conf = torch.zeros(n, n, dtype=torch.float64)
        pair_both = torch.zeros(n, n, dtype=torch.float64)
        stack = main_stack(names)
        for done, name in enumerate(names, start=1):
            b = base_ckpt.read(name).to(torch.float32)
            taus = torch.empty((n, b.numel()), dtype=torch.float32)
            for i, ckpt in enumerate(expert_ckpts):
                torch.sub(ckpt.read(name).to(torch.float32).reshape(-1), b.reshape(-1), out=taus[i])
            bad = _nonfinite(taus, [str(base)] if not bool(torch.isfinite(b).all()) else [], result.experts, name)
            if bad:
                if strict:
                    raise MergesmithError(
                        f"{bad[0]} has NaN/Inf values; fix or drop that model, or run without "
                        f"--strict to inspect the other tensors"
                    )
                result.nonfinite.extend(bad)
                del taus, b
                if progress is not None:
                    progress(done, len(names))
                continue
            conflicts = eligible = 0
            g = torch.zeros(n, n, dtype=torch.float64)
            for start in range(0, taus.shape[1], _CHUNK):  # float64 copies one chunk at a time: memory stays ~(n+1) x
                chunk = taus[:, start : start + _CHUNK]
                c, e = sign_conflict_counts(chunk)
                conflicts, eligible = conflicts + c, eligible + e
                pc, pb = pairwise_conflict_counts(chunk)
                pair_conf += pc
                pair_both += pb
                g += gram(chunk)
            layer = parse_layer(name)
            record = TensorDiagnostics(
                name=name,
                layer=layer.index if layer is not None and layer.prefix == stack else None,
                shape=tuple(b.shape),
                gram=g.tolist(),
                conflicts=conflicts,
                eligible=eligible,
            )
            if spectrum and b.dim() == 2 and min(b.shape) >= 2:
                tops, ranks = [], []
                for i in range(n):
                    if not bool(taus[i].any()):  # an untouched (e.g. frozen) tensor: no SVD needed
                        tops.append([0.0] * min(top_k, min(b.shape)))
                        ranks.append(0.0)
                        continue
                    try:
                        s = torch.linalg.svdvals(taus[i].reshape(b.shape))
                    except torch.linalg.LinAlgError:
                        raise MergesmithError(
                            f"{result.experts[i]}: the SVD of tensor '{name}' did not converge; "
                            f"rerun with --no-spectrum"
                        ) from None
                    tops.append(s[:top_k].tolist())
                    ranks.append(effective_rank(s))
                record.top_singular, record.effective_rank = tops, ranks
            result.tensors.append(record)
            del taus, b
            if progress is not None:
                progress(done, len(names))
        result.pair_conflicts, result.pair_both = pair_conf.tolist(), pair_both.tolist()
        return result
    finally:
        for ckpt in opened:
            ckpt.close()


def _nonfinite(taus: torch.Tensor, base_bad: list[str], labels: list[str], name: str) -> list[str]:
    """``"model: tensor (k non-finite values)"`` for each model whose tensor holds NaN/Inf (the base first)."""
    out = [f"{b}: {name}" for b in base_bad]
    for label, row in zip(labels, taus):
        count = int((~torch.isfinite(row)).sum())
        if count:
            out.append(f"{label}: {name} ({count} non-finite values)")
    return out


def _check_matching(base, experts, names: list[str]) -> None:
    wanted = set(names)
    for ckpt in experts:
        have = {n for n, info in ckpt.tensors.items() if info.dtype.is_floating_point}
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        if missing or extra:
            what = f"lacks '{missing[0]}'" if missing else f"has '{extra[0]}', which the base lacks"
            raise MergesmithError(
                f"{ckpt.root}: {what} ({len(missing)} missing, {len(extra)} extra tensors); "
                f"inspect fine-tunes of the same base model"
            )
        for name in names:
            if ckpt.tensors[name].shape != base.tensors[name].shape:
                raise MergesmithError(
                    f"{ckpt.root}: tensor '{name}' has shape {list(ckpt.tensors[name].shape)} but the "
                    f"base has {list(base.tensors[name].shape)}; inspect fine-tunes of the same base model"
                )

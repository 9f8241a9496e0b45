"""Whole-model and per-layer aggregates of the per-tensor diagnostics, and the mergeability verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import torch

from mergesmith.analysis.inspect import Diagnostics
from mergesmith.analysis.stats import cosine_from_gram, random_sign_conflict_rate

OTHER = "other"  # embeddings, final norms, heads: everything outside the layer stack


@dataclass
class LayerSummary:
    layer: int | str
    cosine: list[list[float]]  # [n, n]
    conflict_rate: float | None
    norms: list[float]  # per expert, L2 norm of the layer's task vector
    effective_rank: list[float | None]  # per expert, mean over the layer's 2-D tensors


@dataclass
class Summary:
    experts: list[str]
    cosine: list[list[float]]  # global pairwise cosine
    norms: list[float]  # global L2 norm per expert
    conflict_rate: float | None  # all experts, entries with >= 2 nonzero task-vector entries
    random_conflict_rate: float  # the same rate for independent random signs
    pair_conflict_rate: list[list[float | None]]
    mean_pairwise_cosine: float | None
    layers: list[LayerSummary]
    top_singular: dict[str, list[list[float]]]  # tensor name -> per expert top-k singular values
    verdict: str = "good"
    findings: list[str] = field(default_factory=list)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(diag: Diagnostics) -> Summary:
    n = len(diag.experts)
    zeros = lambda: torch.zeros(n, n, dtype=torch.float64)  # noqa: E731
    total = zeros()
    conflicts = eligible = 0
    per_layer: dict = {}
    for t in diag.tensors:
        g = torch.tensor(t.gram, dtype=torch.float64)
        total += g
        conflicts += t.conflicts
        eligible += t.eligible
        key = t.layer if t.layer is not None else OTHER
        acc = per_layer.setdefault(
            key, {"gram": zeros(), "conflicts": 0, "eligible": 0, "ranks": [[] for _ in range(n)]}
        )
        acc["gram"] += g
        acc["conflicts"] += t.conflicts
        acc["eligible"] += t.eligible
        if t.effective_rank is not None:
            for i, r in enumerate(t.effective_rank):
                acc["ranks"][i].append(r)
    layers = []
    for key in sorted(per_layer, key=lambda k: (isinstance(k, str), k if isinstance(k, int) else 0)):
        acc = per_layer[key]
        layers.append(
            LayerSummary(
                layer=key,
                cosine=cosine_from_gram(acc["gram"]).tolist(),
                conflict_rate=acc["conflicts"] / acc["eligible"] if acc["eligible"] else None,
                norms=torch.sqrt(torch.diagonal(acc["gram"]).clamp_min(0)).tolist(),
                effective_rank=[_mean(r) for r in acc["ranks"]],
            )
        )
    cos = cosine_from_gram(total)
    pc, pb = torch.tensor(diag.pair_conflicts, dtype=torch.float64), torch.tensor(diag.pair_both, dtype=torch.float64)
    pair_rate = [[float(pc[i, j] / pb[i, j]) if pb[i, j] > 0 else None for j in range(n)] for i in range(n)]
    pairs = list(combinations(range(n), 2))
    summary = Summary(
        experts=list(diag.experts),
        cosine=cos.tolist(),
        norms=torch.sqrt(torch.diagonal(total).clamp_min(0)).tolist(),
        conflict_rate=conflicts / eligible if eligible else None,
        random_conflict_rate=random_sign_conflict_rate(n),
        pair_conflict_rate=pair_rate,
        mean_pairwise_cosine=_mean([float(cos[i, j]) for i, j in pairs]),
        layers=layers,
        top_singular={t.name: t.top_singular for t in diag.tensors if t.top_singular is not None},
    )
    summary.verdict, summary.findings = verdict(summary)
    return summary


def verdict(s: Summary) -> tuple[str, list[str]]:
    """A simple reading of the numbers: 'good', 'caution' or 'poor', with one finding per reason.

    Rules of thumb from the merging literature: task vectors of different tasks are close to orthogonal and merge
    well by task arithmetic (Ilharco et al. 2023); opposed task vectors cancel in an average; a sign-conflict rate
    near the random-sign level says the experts' updates interfere entry by entry (TIES's motivation); very
    unequal magnitudes let one expert dominate a sum.
    """
    findings: list[str] = []
    level = 0
    n = len(s.experts)
    pairs = list(combinations(range(n), 2))
    if not pairs:
        return "n/a", ["one expert: nothing to compare (pass two or more experts for pairwise numbers)"]
    if max(s.norms) == 0:
        return "n/a", ["every task vector is zero: the experts equal the base"]
    worst = min(pairs, key=lambda p: s.cosine[p[0]][p[1]])
    best = max(pairs, key=lambda p: s.cosine[p[0]][p[1]])
    low = s.cosine[worst[0]][worst[1]]
    high = s.cosine[best[0]][best[1]]
    names = s.experts
    if low < -0.3:
        level = 2
        findings.append(
            f"{names[worst[0]]} and {names[worst[1]]} oppose each other (cosine {low:.3f}): an average cancels "
            f"their updates; use TIES/sign election or leave one out"
        )
    elif low < -0.1:
        level = max(level, 1)
        findings.append(f"{names[worst[0]]} and {names[worst[1]]} partly oppose each other (cosine {low:.3f})")
    if high > 0.9:
        level = max(level, 1)
        findings.append(
            f"{names[best[0]]} and {names[best[1]]} are nearly the same update (cosine {high:.3f}): merging "
            f"both double-counts it; weight them down or keep one"
        )
    nonzero = [x for x in s.norms if x > 0]
    ratio = max(s.norms) / min(nonzero) if nonzero and min(s.norms) > 0 else float("inf")
    if ratio > 3:
        level = max(level, 1)
        findings.append(
            f"task-vector norms differ {ratio:.1f}x (largest {names[s.norms.index(max(s.norms))]}): it will "
            f"dominate a sum; rescale or weight the experts"
        )
    if s.conflict_rate is not None and s.random_conflict_rate > 0 and s.conflict_rate > 0.9 * s.random_conflict_rate:
        findings.append(
            f"sign-conflict rate {s.conflict_rate:.1%} is near the random-sign level "
            f"{s.random_conflict_rate:.1%}: per-entry interference; TIES/DARE-style trimming usually helps"
        )
    if level == 0:
        findings.append(
            f"mean pairwise cosine {s.mean_pairwise_cosine:.3f}, norms within {ratio:.1f}x: task arithmetic "
            f"and its variants should merge these experts well"
        )
    return ("good", "caution", "poor")[level], findings

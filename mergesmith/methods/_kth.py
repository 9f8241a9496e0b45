"""Exact k-th largest value of non-negative tensors streamed in blocks, without sorting the whole tensor.

Magnitude trimming (TIES, Model Breadcrumbs) and SCE's top-k selection need, per tensor, the value of rank k among
all its entries. mergekit sorts the whole tensor for that; here the value is found by radix selection on the float
bit patterns: a non-negative IEEE float orders exactly like its bits read as a signed integer, so

- pass 1 histograms the top 16 bits of every value (``torch.bincount``) and finds the bin holding rank k;
- each further pass looks only at the values in that bin: it gathers them and picks the exact value when they are
  few (``GATHER_LIMIT``), else histograms their next 16 bits.

fp32 needs at most two passes, fp64 at most four (in practice two). The passes after the first look at blocks held
in memory when the tensor has at most ``HOLD_LIMIT`` values (most weight matrices), else they read them again. The
value is the exact order statistic (ties included) either way, so a mask ``values >= threshold`` does not depend on
how the tensor was split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

DIGIT_BITS = 16
BINS = 1 << DIGIT_BITS
# Candidate values up to this count are gathered and selected directly instead of refining by another histogram.
GATHER_LIMIT = 1 << 20
# Tensors with up to this many values per stream are read once: their blocks are held for the later passes.
HOLD_LIMIT = 1 << 23

Chunks = Callable[[], Iterable[Sequence[Tensor]]]
# ranks(numel, nonzero) -> for each stream, the ranks k wanted (1 = largest); called once the first pass knows the
# number of values per stream and how many of them are non-zero.
Ranks = Callable[[int, list[int]], Sequence[Sequence[int]]]


@dataclass
class _Query:
    stream: int
    k: int  # rank still wanted among the current candidates (1 = largest)
    prefix: int = 0  # the high bits already fixed
    known: int = 0  # how many high bits are fixed
    count: int = 0  # number of candidates sharing the prefix
    gathered: list[Tensor] = field(default_factory=list)
    hist: Tensor | None = None
    value: float | None = None


def kth_largest(chunks: Chunks, ranks: Ranks) -> tuple[int, list[list[float]]]:
    """The exact k-th largest value of each stream, for every rank ``ranks(numel, nonzero)`` asks for.

    ``chunks`` is a zero-argument callable returning a fresh iterable over the blocks; each item holds one
    non-negative float tensor per stream (streams are e.g. the experts' |task vector| blocks; all streams have the
    same number of values). It is called once per pass; a tensor of up to ``HOLD_LIMIT`` values per stream is
    read once, its blocks held for the later passes.

    Returns ``(numel, values)`` with ``values[s][j]`` the value of rank ``ranks(...)[s][j]`` in stream ``s``.
    Conventions at the edges: rank 0 gives ``+inf`` (nothing ranks above everything), a rank beyond ``numel`` gives
    ``-inf`` (everything is kept), so ``x >= value`` keeps exactly the top k when values are distinct.
    """
    held: list[list[Tensor]] | None = []  # the blocks so far, while the tensor is small enough to hold
    hists: list[Tensor] = []
    numel = 0
    nonzero: list[int] = []
    width = 32
    for chunk in chunks():
        flat = [_flat(v) for v in chunk]
        if not hists:
            hists = [torch.zeros(BINS, dtype=torch.int64) for _ in flat]
            nonzero = [0] * len(flat)
            width = _bits(flat[0])[1] if flat else 32
        numel += flat[0].numel() if flat else 0
        for s, v in enumerate(flat):
            nonzero[s] += int(torch.count_nonzero(v))
            hists[s] += _top_histogram(v)
        if held is not None:
            held.append(flat)
            if numel > HOLD_LIMIT:
                held = None  # too large to hold: later passes read the blocks again
    passes: Chunks = (lambda: held) if held is not None else chunks

    wanted = [list(ks) for ks in ranks(numel, nonzero)]
    queries: list[_Query] = []
    results: list[list[float]] = []
    for s, ks in enumerate(wanted):
        row = []
        for k in ks:
            if k <= 0:
                row.append(math.inf)
            elif k > numel:
                row.append(-math.inf)
            else:
                row.append(math.nan)  # filled below
                q = _Query(stream=s, k=k)
                _descend(q, hists[s], width)
                queries.append(q)
        results.append(row)

    pending = [q for q in queries if q.value is None]
    while pending:
        for q in pending:
            if q.count > GATHER_LIMIT:
                q.hist = torch.zeros(BINS, dtype=torch.int64)
        for chunk in passes():
            for q in pending:
                bits, _ = _bits(_flat(chunk[q.stream]))
                candidates = bits[(bits >> (width - q.known)) == q.prefix]
                if q.hist is None:
                    q.gathered.append(candidates)
                else:
                    shift = width - q.known - DIGIT_BITS
                    q.hist += torch.bincount((candidates >> shift) & (BINS - 1), minlength=BINS)
        for q in pending:
            if q.hist is None:
                values = torch.cat(q.gathered)
                # k-th largest among the candidates = (n - k + 1)-th smallest
                q.value = _from_bits(int(torch.kthvalue(values, values.numel() - q.k + 1).values), width)
                q.gathered = []
            else:
                hist, q.hist = q.hist, None
                _descend(q, hist, width)
        pending = [q for q in pending if q.value is None]

    it = iter(queries)
    for row in results:
        for j, placeholder in enumerate(row):
            if math.isnan(placeholder):
                answer = next(it).value
                assert answer is not None  # the loop above ran until every query had its value
                row[j] = answer
    return numel, results


def _descend(q: _Query, hist: Tensor, width: int) -> None:
    """Fix the next 16 bits of ``q``'s answer from the histogram of that digit among its candidates."""
    from_top = hist.flip(0).cumsum(0)  # from_top[i]: candidates whose digit is >= BINS - 1 - i
    i = int(torch.searchsorted(from_top, torch.tensor(q.k, dtype=from_top.dtype)))
    digit = BINS - 1 - i
    above = int(from_top[i]) - int(hist[digit])
    q.k -= above
    q.prefix = (q.prefix << DIGIT_BITS) | digit
    q.known += DIGIT_BITS
    q.count = int(hist[digit])
    if q.known == width:
        q.value = _from_bits(q.prefix, width)


def _flat(v: Tensor) -> Tensor:
    v = v.detach().reshape(-1)
    if v.dtype not in (torch.float32, torch.float64):
        v = v.float()
    return v.contiguous()


def _bits(v: Tensor) -> tuple[Tensor, int]:
    """The bit pattern of non-negative floats as signed integers (same order), and its width."""
    if v.dtype == torch.float64:
        return v.view(torch.int64), 64
    return v.view(torch.int32), 32


def _top_histogram(v: Tensor) -> Tensor:
    bits, width = _bits(v)
    return torch.bincount(bits >> (width - DIGIT_BITS), minlength=BINS)


def _from_bits(bits: int, width: int) -> float:
    if width == 64:
        return float(torch.tensor([bits], dtype=torch.int64).view(torch.float64))
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))

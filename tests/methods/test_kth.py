"""The exact streamed k-th largest helper: same value on one block, on many blocks, and as a full sort."""

from __future__ import annotations

import math

import pytest
import torch

from mergesmith.methods import _kth
from mergesmith.methods._kth import kth_largest


def _chunks(values: list[torch.Tensor], n_chunks: int):
    """A blocks callable over the streams split into ``n_chunks`` pieces; counts the passes."""
    pieces = [v.reshape(-1).tensor_split(n_chunks) for v in values]
    passes = []

    def chunks():
        passes.append(1)
        for i in range(n_chunks):
            yield [p[i] for p in pieces]

    return chunks, passes


def _reference(v: torch.Tensor, k: int) -> float:
    return float(v.reshape(-1).sort(descending=True).values[k - 1])


def _samples(dtype):
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(40_000, generator=g, dtype=dtype).abs()
    # many exact duplicates and zeros: integers 0..50 as floats
    ties = torch.randint(0, 51, (30_000,), generator=g).to(dtype)
    tiny = torch.rand(20_000, generator=g, dtype=dtype) * 1e-30  # denormal range for fp32 included
    return [normal, ties, tiny]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_chunks", [1, 7])
@pytest.mark.parametrize("gather_limit", [1 << 20, 0])
@pytest.mark.parametrize("hold_limit", [1 << 23, 0])
def test_matches_full_sort(monkeypatch, dtype, n_chunks, gather_limit, hold_limit):
    monkeypatch.setattr(_kth, "GATHER_LIMIT", gather_limit)  # 0 forces histogram refinement of every digit
    monkeypatch.setattr(_kth, "HOLD_LIMIT", hold_limit)  # 0 forces the histogram route for any tensor
    for v in _samples(dtype):
        n = v.numel()
        ks = [1, 2, n // 3, n // 2, n - 1, n]
        chunks, _ = _chunks([v], n_chunks)
        numel, (values,) = kth_largest(chunks, lambda numel, nonzero: [ks])  # noqa: B023 (called at once)
        assert numel == n
        assert values == [_reference(v, k) for k in ks]


def test_single_block_and_streamed_agree_for_several_streams(monkeypatch):
    g = torch.Generator().manual_seed(1)
    streams = [torch.randn(10_007, generator=g).abs(), torch.rand(10_007, generator=g), torch.zeros(10_007)]
    ks = [[5, 10_007], [1, 500, 9_000], [3]]
    one, passes_one = _chunks(streams, 1)
    held, passes_held = _chunks(streams, 13)
    _, a = kth_largest(one, lambda numel, nonzero: ks)
    _, b = kth_largest(held, lambda numel, nonzero: ks)
    monkeypatch.setattr(_kth, "HOLD_LIMIT", 1000)  # past the limit: histograms
    many, passes_many = _chunks(streams, 13)
    _, c = kth_largest(many, lambda numel, nonzero: ks)
    assert a == b == c == [[_reference(s, k) for k in row] for s, row in zip(streams, ks)]
    assert len(passes_one) == 1 and len(passes_held) == 1  # a small tensor is answered in one pass
    assert len(passes_many) == 2  # fp32: histogram, then gather (or the last digit)


def test_ranks_receive_numel_and_nonzero_counts():
    v = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0, 0.0])
    seen = []

    def ranks(numel, nonzero):
        seen.append((numel, list(nonzero)))
        return [[nonzero[0]]]  # the smallest non-zero value

    for n_chunks in (1, 3):
        chunks, _ = _chunks([v], n_chunks)
        _, ((value,),) = kth_largest(chunks, ranks)
        assert value == 1.0
    assert seen == [(6, [3]), (6, [3])]


@pytest.mark.parametrize("n_chunks", [1, 4])
def test_edge_ranks(n_chunks):
    v = torch.arange(1.0, 9.0)
    chunks, _ = _chunks([v], n_chunks)
    _, ((zero, beyond, last),) = kth_largest(chunks, lambda numel, nonzero: [[0, 9, 8]])
    assert zero == math.inf and beyond == -math.inf and last == 1.0

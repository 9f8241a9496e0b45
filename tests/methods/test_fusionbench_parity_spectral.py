"""Parity with FusionBench 0.2.33 for the spectral methods it also has: TSV-M, Iso-C and Iso-CTS.

FusionBench's algorithms run as its users run them: tiny ``nn.Module`` models in a ``BaseModelPool``, the algorithm's
``run(pool)``. Ours runs through ``merge_state_dicts`` on the same weights. Compared: the merged task vectors
(merged - base) of every tensor, within 1e-5 relative to the largest entry, in fp64 and fp32; the modules hold 2-D
weights with full and partial TSV rank budgets (T * k below and equal to the rank) and 1-D biases and norms (the
papers' task-arithmetic mean).

Not compared exactly, and why:
- PCB-Merging, CART and LiNeS: FusionBench 0.2.33 does not have them (known answers and properties are checked in
  test_spectral_family.py instead).
- Rank-deficient task matrices (identical experts, frozen rows): FusionBench orthogonalises and flattens with the
  singular vectors of zero singular values, which LAPACK picks arbitrarily; we drop those (``_spectral``), so only
  full-rank inputs are compared, and test_spectral_family.py checks what ours gives on rank-deficient ones.

FusionBench is imported inside the tests: it takes ~10 s to import.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from mergesmith.api import merge_state_dicts

pytestmark = pytest.mark.filterwarnings("ignore")


def _models(dtype: torch.dtype, n: int = 3, seed: int = 0) -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(seed)
    # 24x20, 60x24 (tall: QR first) and 12x60 (wide: transposed) weights; biases and a norm
    base = nn.Sequential(nn.Linear(20, 24), nn.LayerNorm(24), nn.Linear(24, 60), nn.Linear(60, 12)).to(dtype)
    experts = []
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(n):
        expert = copy.deepcopy(base)
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=dtype))
        experts.append(expert)
    return base, experts


def _fusion_bench(algorithm, base: nn.Module, experts: list[nn.Module]) -> dict[str, torch.Tensor]:
    from fusion_bench import BaseModelPool

    # a fresh pool each time: FusionBench loads the merge into the pool's pretrained model
    pool = BaseModelPool(
        {"_pretrained_": copy.deepcopy(base), **{f"task{i}": copy.deepcopy(e) for i, e in enumerate(experts)}}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = algorithm.run(pool)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def _ours(method: str, base: nn.Module, experts: list[nn.Module], **params) -> dict[str, torch.Tensor]:
    return merge_state_dicts(base.state_dict(), [e.state_dict() for e in experts], method, **params)


def _assert_task_vectors_close(ours: dict, theirs: dict, base: nn.Module, rtol: float = 1e-5) -> None:
    base_sd = base.state_dict()
    assert ours.keys() == theirs.keys()
    for name in base_sd:
        mine, other = (ours[name] - base_sd[name]).double(), (theirs[name] - base_sd[name]).double()
        scale = float(other.abs().max())
        assert scale > 0, name
        error = float((mine - other).abs().max()) / scale
        assert error < rtol, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tsv_m_matches_fusion_bench(dtype):
    from fusion_bench.method.task_singular_vector.TSVM import TaskSingularVectorMerging

    base, experts = _models(dtype)
    # rank budgets: 24x20 -> k = 6, 18 of 20 directions; 12x60 -> k = 4, all 12
    theirs = _fusion_bench(TaskSingularVectorMerging(alpha=0.8), base, experts)
    _assert_task_vectors_close(_ours("tsv_m", base, experts, alpha=0.8), theirs, base)


def test_tsv_m_two_tasks_matches_fusion_bench():
    from fusion_bench.method.task_singular_vector.TSVM import TaskSingularVectorMerging

    base, experts = _models(torch.float64, n=2, seed=5)
    theirs = _fusion_bench(TaskSingularVectorMerging(alpha=1.0), base, experts)
    _assert_task_vectors_close(_ours("tsv_m", base, experts), theirs, base)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_iso_c_matches_fusion_bench(dtype):
    from fusion_bench.method.isotropic_merging.iso import IsotropicMergingInCommonSubspace

    base, experts = _models(dtype, seed=1)
    theirs = _fusion_bench(IsotropicMergingInCommonSubspace(scaling_factor=1.3), base, experts)
    _assert_task_vectors_close(_ours("iso_c", base, experts, alpha=1.3), theirs, base)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fraction", [0.8, 0.5])
def test_iso_cts_matches_fusion_bench(dtype, fraction):
    from fusion_bench.method.isotropic_merging.iso import IsotropicMergingInCommonAndTaskSubspace

    base, experts = _models(dtype, seed=2)
    algorithm = IsotropicMergingInCommonAndTaskSubspace(scaling_factor=1.1, common_space_fraction=fraction)
    theirs = _fusion_bench(algorithm, base, experts)
    ours = _ours("iso_cts", base, experts, alpha=1.1, common_space_fraction=fraction)
    _assert_task_vectors_close(ours, theirs, base)

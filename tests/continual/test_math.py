"""OPCM and DOP per-weight math against the papers' definitions and FusionBench's implementations."""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from mergesmith.continual import dop, opcm
from mergesmith.continual._spec import StepContext, is_linear_weight


def _fusion_bench(module: str):
    """A FusionBench algorithm module as a reference oracle. Its CLIP task pool does not import under transformers 5
    (it asks for ``CLIPVisionTransformer``) and the algorithms only name it in type hints: stand it in."""
    fb = pytest.importorskip("fusion_bench")
    try:
        from fusion_bench.taskpool import CLIPVisionModelTaskPool  # noqa: F401  (a lazy module: resolve it)
    except ImportError:
        stub = types.ModuleType("fusion_bench.taskpool")
        stub.CLIPVisionModelTaskPool = object
        sys.modules["fusion_bench.taskpool"] = stub
        fb.taskpool = stub
    return importlib.import_module(module)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _full_projection(previous_tv, new_tv, alpha):
    """OPCM step 2 written with the full SVD, as in the paper: U P' V^T with P = U^T tau V."""
    u, s, vh = torch.linalg.svd(previous_tv, full_matrices=True)
    r = opcm.split_rank(s, alpha)
    p = u.T @ new_tv @ vh.T
    p.diagonal().zero_()
    p[:r, :r] = 0
    return u @ p @ vh


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (7, 7)])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_thin_projection_equals_full_projection(shape, alpha):
    prev, new = _randn(*shape, seed=1), _randn(*shape, seed=2)
    assert torch.allclose(opcm.project_out(prev, new, alpha), _full_projection(prev, new, alpha), atol=1e-12)


def test_split_rank():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert [opcm.split_rank(s, a) for a in (0.0, 0.39, 0.4, 0.5, 0.7, 0.95)] == [0, 0, 1, 1, 2, 3]
    assert opcm.split_rank(torch.zeros(3), 0.5) == 0  # a zero merge removes only nothing


def test_projection_removes_the_merged_directions_and_keeps_orthogonal_ones():
    q, _ = torch.linalg.qr(_randn(8, 8, seed=3))
    # full rank with distinct singular values, so every singular pair is defined; shares pass 0.5 at r = 2
    prev = q @ torch.diag(torch.arange(8, 0, -1, dtype=torch.float64)) @ q.T
    inside = q[:, :1] @ q[:, :1].T * 5 + q[:, 1:2] @ q[:, 0:1].T  # on a singular pair, and in the leading block
    outside = q[:, 4:5] @ q[:, 6:7].T  # an off-diagonal pair of directions outside the leading block
    assert opcm.project_out(prev, inside, 0.5).abs().max() < 1e-12
    assert torch.allclose(opcm.project_out(prev, outside, 0.5), outside, atol=1e-12)


def test_projection_matches_fusion_bench_opcm():
    fb = _fusion_bench("fusion_bench.method.opcm.opcm")
    oracle = fb.OPCMForCLIP.__new__(fb.OPCMForCLIP)
    oracle.previous_lambda_t, oracle.lambda_t = 1.7, 1.0
    base, merged, task = _randn(10, 12, seed=4), _randn(10, 12, seed=5), _randn(10, 12, seed=6)
    expected = oracle.merge_linear_weights(merged, base, task, param_name="w", alpha=0.5, accelerator="cpu")
    ctx = StepContext(name="layer.weight", is_matrix=True, count=2, scale=1.7)
    ours = opcm.step(base, merged, task, opcm.OpcmParams(alpha=0.5), ctx)
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-12)
    bias = oracle.merge_other_parameters(merged[0], base[0], task[0], param_name="b", accelerator="cpu")
    ours_bias = opcm.step(base[0], merged[0], task[0], opcm.OpcmParams(), StepContext("layer.bias", False, 2, 1.7))
    assert torch.allclose(ours_bias, bias, rtol=1e-12)


def test_next_lambda_keeps_the_average_task_vector_norm():
    assert opcm.next_lambda(6.0, 2.0) == 3.0
    assert opcm.next_lambda(0.0, 2.0) == 1.0 and opcm.next_lambda(1.0, 0.0) == 1.0


@pytest.mark.parametrize("g1,g2", [((1.0, 0.0), (0.0, 1.0)), ((2.0, 1.0), (1.0, 3.0)), ((1.0, 1.0), (2.0, 2.0))])
def test_min_norm_pair_is_the_minimiser(g1, g2):
    a, b = torch.tensor(g1), torch.tensor(g2)
    gamma = dop.min_norm_pair(a, b)
    grid = torch.linspace(0, 1, 10001)
    norms = torch.stack([(g * a + (1 - g) * b).norm() for g in grid])
    # the solver keeps gamma in [0.001, 0.999], as Sener & Koltun's (and FusionBench's) does
    assert float((gamma * a + (1 - gamma) * b).norm()) <= float(norms.min()) + 2e-3 * float(norms.max())


def test_principal_rank():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert [dop.principal_rank(s, e) for e in (0.3, 0.4, 0.7, 0.99999, 1.0)] == [0, 0, 1, 3, 3]
    assert dop.principal_rank(torch.zeros(2), 0.5) == 0


def test_dop_without_steps_is_the_average_and_its_losses_fall():
    base, prev, new = _randn(12, 16, seed=7), _randn(12, 16, seed=8), _randn(12, 16, seed=9)
    params = dop.DopParams(num_steps=0)
    assert torch.equal(dop.merge_matrix(base, prev, new, params), (prev + new) / 2)
    subspaces = [dop._subspace(base, prev, 0.99999), dop._subspace(base, new, 0.99999)]
    start = [sub.gradient((prev + new) / 2)[1] for sub in subspaces]
    w = dop.merge_matrix(base, prev, new, dop.DopParams(num_steps=300, lr=1e-2, mgda=False, alpha=0.5))
    end = [sub.gradient(w)[1] for sub in subspaces]
    assert sum(end) < 0.8 * sum(start)


def test_dop_gradient_matches_autograd():
    base, target = _randn(9, 5, seed=10), _randn(9, 5, seed=11)
    sub = dop._subspace(base, target, 0.9)
    w = _randn(9, 5, seed=12).requires_grad_(True)
    delta = w - target
    u, s, vh = torch.linalg.svd(target - base, full_matrices=False)
    r = dop.principal_rank(s, 0.9)
    loss = (torch.diag(s[:r]) @ u[:, :r].T @ delta).square().sum() + (
        delta @ vh[:r].T @ torch.diag(s[:r])
    ).square().sum()
    loss.backward()
    grad, value = sub.gradient(w.detach())
    assert torch.allclose(grad, w.grad, rtol=1e-10) and abs(value - float(loss)) < 1e-9 * float(loss)


@pytest.mark.parametrize("mgda,ema", [(True, True), (True, False), (False, False)])
def test_dop_matches_fusion_bench(mgda, ema):
    fb = _fusion_bench("fusion_bench.method.dop.dop")

    class _Fabric:
        world_size = 1

        @staticmethod
        def to_device(x):
            return x

    class Oracle(fb.ContinualDOPForCLIP):
        fabric = _Fabric()

    oracle = Oracle.__new__(Oracle)
    settings = dop.DopParams(lr=1e-3, num_steps=40, alpha=0.8, ema_beta=0.9, svd_epsilon=0.95, mgda=mgda, ema=ema)
    for key, value in settings.model_dump().items():
        setattr(oracle, key, value)
    oracle.svd_proj_space = "uv"
    base, prev, new = _randn(12, 20, seed=13), _randn(12, 20, seed=14), _randn(12, 20, seed=15)
    prev, new = base + 0.1 * prev, base + 0.1 * new
    expected = oracle._optimize_weight(base, {"merged": prev, "new": new}, "w", 1)
    ours = dop.merge_matrix(base, prev, new, settings)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-9), (ours - expected).abs().max()


def test_dop_averages_tensors_that_are_not_linear_weights():
    ctx = StepContext(name="norm.weight", is_matrix=False, count=3, scale=1.0)
    b, p, n = torch.zeros(4), torch.ones(4), torch.full((4,), 3.0)
    assert torch.equal(dop.step(b, p, n, dop.DopParams(), ctx), torch.full((4,), 2.0))


@pytest.mark.parametrize(
    "name,shape,expected",
    [
        ("model.layers.0.mlp.up_proj.weight", (4, 3), True),
        ("transformer.h.0.attn.c_attn.weight", (4, 12), True),
        ("model.embed_tokens.weight", (10, 4), False),
        ("transformer.wte.weight", (10, 4), False),
        ("transformer.wpe.weight", (10, 4), False),
        ("embeddings.word_embeddings.weight", (10, 4), False),
        ("model.layers.0.input_layernorm.weight", (4,), False),
        ("model.layers.0.mlp.up_proj.bias", (4,), False),
    ],
)
def test_linear_weights_are_told_from_embeddings_and_vectors(name, shape, expected):
    assert is_linear_weight(name, torch.zeros(shape)) is expected

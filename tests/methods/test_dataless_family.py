"""Known answers for the data-free optimisation and mask methods: WUDI-Merging, DOGE-TA, Consensus / TALL
masks and EMR-Merging (the shared contract is in test_contract.py; fusion-bench parity in
test_fusionbench_parity_dataless.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesmith.errors import ConfigError
from mergesmith.methods import METHODS, consensus, doge_ta, emr, wudi
from mergesmith.methods._per_task import pack_mask, rescalers, single_tensor_task_model, task_model, unpack_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _family(shape=(24, 20), n=3, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g)
    return base, [base + scale * torch.randn(*shape, generator=g) for _ in range(n)]


# --------------------------------------------------------------------------------------------------------------
# WUDI


@pytest.mark.parametrize("shape", [(24, 20), (6, 40)])  # the Gram form and (wide) the per-task form of the gradient
def test_wudi_loss_falls_from_the_task_arithmetic_sum(shape):
    base, experts = _family(shape)
    taus = [e - base for e in experts]
    start = wudi.wudi_loss(sum(taus), taus)
    losses = [wudi.wudi_loss(wudi.optimise(taus, steps, 1e-3), taus) for steps in (10, 50, 200)]
    assert start > losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.6 * start


def test_wudi_gradient_forms_agree_with_autograd():
    base, experts = _family((10, 8))
    taus = [e - base for e in experts]
    weights = [1.0 / t.square().sum() for t in taus]
    x = sum(taus).clone().requires_grad_(True)
    loss = sum(((x - t) @ t.T).square().sum() * w for t, w in zip(taus, weights))
    (expected,) = torch.autograd.grad(loss, x)
    gram = wudi._Gradient(taus, weights)
    per_task = wudi._Gradient(taus, weights)
    per_task.gram_form = False
    assert gram.gram_form
    torch.testing.assert_close(gram(x.detach()), expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(per_task(x.detach()), expected, rtol=1e-4, atol=1e-7)


def test_wudi_one_task_optimum_is_its_task_vector():
    base, experts = _family()
    zero = base.clone()  # a second expert equal to the base: a zero task vector, left out of the loss
    out = wudi.merge(base, [experts[0], zero], wudi.Params(steps=300, lr=1e-3))
    assert torch.equal(out, base + (experts[0] - base))  # the gradient is exactly 0 at tau_1: Adam never moves


def test_wudi_is_deterministic_and_non_matrices_are_averaged():
    base, experts = _family()
    a = wudi.merge(base, experts, wudi.Params(steps=30))
    b = wudi.merge(base.clone(), [e.clone() for e in experts], wudi.Params(steps=30))
    assert torch.equal(a, b)
    bias, bias_experts = _family((7,))
    expected = bias + sum(e - bias for e in bias_experts) / 3
    torch.testing.assert_close(wudi.merge(bias, bias_experts, wudi.Params()), expected)


def test_wudi_bad_parameters():
    with pytest.raises(ConfigError, match="steps must be in \\[0, 100000\\], got -1"):
        wudi.SPEC.make_params(2, {"steps": -1})
    with pytest.raises(ConfigError, match="steps must be in \\[0, 100000\\], got an integer of 997 bits"):
        wudi.SPEC.make_params(2, {"steps": 10**300})  # a typo that would run for ages


# --------------------------------------------------------------------------------------------------------------
# DOGE-TA


def test_doge_adaptive_coefficients_and_shared_basis():
    base, experts = _family((30, 24))
    taus = [e - base for e in experts]
    lambdas = doge_ta.adaptive_lambdas(taus + [torch.zeros_like(taus[0])], 0.07)
    for t, lam in zip(taus, lambdas):
        assert float(torch.linalg.vector_norm(lam * t)) == pytest.approx(0.07, rel=1e-5)
    assert float(lambdas[-1]) == 0.0  # a zero task vector gets no coefficient (not 1/0)
    basis = doge_ta.shared_basis(taus, subspace=6)
    assert basis.shape == (30, 24 // 6)
    torch.testing.assert_close(basis.T @ basis, torch.eye(4), atol=1e-5, rtol=0)


def test_doge_loss_falls_and_steps_zero_is_trimmed_adaptive_task_arithmetic():
    base, experts = _family((30, 24))
    taus = [e - base for e in experts]
    lambdas = doge_ta.adaptive_lambdas(taus, 0.07)
    basis = doge_ta.shared_basis(taus, 6)
    start = doge_ta.doge_loss(torch.zeros_like(taus[0]), taus, lambdas)
    delta = doge_ta.optimise_delta(taus, lambdas, basis, 200, 1e-3)
    assert doge_ta.doge_loss(delta, taus, lambdas) < 0.9 * start
    out = doge_ta.merge(base, experts, doge_ta.Params(steps=0, density=1.0))
    torch.testing.assert_close(out, base + sum(lam * t for lam, t in zip(lambdas, taus)), rtol=1e-5, atol=1e-6)
    trimmed = doge_ta.merge(base, experts, doge_ta.Params(steps=0, density=0.3))
    kept = [doge_ta.top_magnitude_mask(t, 0.3) for t in taus]
    # as fusion-bench's topk_values_mask: entries >= the (numel - keep)-th smallest, i.e. keep + 1 of them
    assert all(int(k.sum()) == int(0.3 * t.numel()) + 1 for k, t in zip(kept, taus))
    torch.testing.assert_close(
        trimmed, base + sum(lam * t * k for lam, t, k in zip(lambdas, taus, kept)), rtol=1e-5, atol=1e-6
    )


def test_doge_bad_parameters():
    for bad in ({"density": 0.0}, {"subspace": 0}, {"steps": -1}, {"steps": 2.5}):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))} must be"):
            doge_ta.SPEC.make_params(2, bad)


# --------------------------------------------------------------------------------------------------------------
# TALL masks and consensus


def _tall(base, experts, **kw):
    n = len(experts)
    params = consensus.TALL_MASKS_SPEC.make_params(n, {"tall_mask_lambda": kw.pop("lam", 0.4), **kw})
    return consensus.merge_tall_masks(base, experts, params)


def test_tall_masks_follow_the_definition():
    base, experts = _family()
    _, parts = _tall(base, experts, lam=0.5)
    tau_mtl = sum(e - base for e in experts)
    torch.testing.assert_close(parts.task_vector, tau_mtl)
    for e, mask in zip(experts, parts.masks):
        expected = (base - e).abs() >= 0.5 * (base + tau_mtl - e).abs()
        assert torch.equal(mask, expected)
        assert 0.1 < float(mask.float().mean()) < 0.95  # a real selection


def test_tall_lambda_zero_gives_the_multi_task_model_for_every_task():
    base, experts = _family()
    tensor, parts = _tall(base, experts, lam=0.0)
    assert all(bool(m.all()) for m in parts.masks)
    mtl = base + parts.task_vector
    for t in range(len(experts)):
        assert torch.equal(
            single_tensor_task_model(tensor, parts, t), task_model(base, parts.task_vector, parts.masks[t], 1.0)
        )
        torch.testing.assert_close(single_tensor_task_model(tensor, parts, t), mtl, rtol=0, atol=1e-6)


def test_tall_masks_with_ties_aggregation_use_the_ties_vector():
    base, experts = _family()
    _, parts = _tall(base, experts, aggregation="ties", density=0.3)
    ties = METHODS["ties"]
    expected = ties.merge(base, experts, ties.make_params(3, {"weight": 1.0, "density": 0.3})) - base
    torch.testing.assert_close(parts.task_vector, expected, rtol=1e-5, atol=1e-6)


def test_consensus_threshold_k():
    base, experts = _family()
    n = len(experts)
    _, parts = _tall(base, experts)
    votes = torch.stack(parts.masks).sum(0)

    def run(k):
        params = consensus.CONSENSUS_SPEC.make_params(n, {"k": k, "lambda": 0.5})
        return consensus.merge_consensus(base, experts, params)

    tau = parts.task_vector
    torch.testing.assert_close(run(0), base + 0.5 * tau)  # k = 0: plain task arithmetic
    torch.testing.assert_close(run(1), base + 0.5 * tau * (votes >= 1))  # any task's mask
    torch.testing.assert_close(run(n), base + 0.5 * tau * (votes == n))  # every task's mask
    assert torch.equal(run(n + 1), base)  # nobody can reach k: the base
    kept = [int((run(k) != base).sum()) for k in range(n + 2)]
    assert kept == sorted(kept, reverse=True) and kept[1] > kept[n] > 0
    with pytest.raises(ConfigError, match="k must be in \\[0, inf\\), got -1"):
        run(-1)


# --------------------------------------------------------------------------------------------------------------
# EMR


def test_emr_elect_mask_rescale_by_hand():
    base = torch.zeros(5)
    taus = torch.tensor([[0.5, -1.0, 0.2, 0.0, 0.3], [0.25, 0.5, -0.6, 0.0, -0.3]])
    tensor, parts = emr.merge(base, list(taus), emr.Params())
    assert torch.equal(tensor, base)
    # signs of the sums: +, -, -, (0: negative), (0: negative); max magnitude among the agreeing tasks
    assert torch.equal(parts.task_vector, torch.tensor([0.5, -1.0, -0.6, 0.0, -0.3]))
    assert torch.equal(parts.masks[0], torch.tensor([True, True, False, False, False]))
    assert torch.equal(parts.masks[1], torch.tensor([True, False, True, False, True]))
    # lambda_t = sum |tau_t| / sum |M_t * tau_uni|
    assert parts.scale_terms[0] == pytest.approx((2.0, 1.5))
    assert parts.scale_terms[1] == pytest.approx((1.65, 1.4))
    assert rescalers([[parts.scale_terms[0]], [parts.scale_terms[1]]]) == pytest.approx([2.0 / 1.5, 1.65 / 1.4])
    means = emr.merge(base, list(taus), emr.Params(rescale_by="tensor_means"))[1].scale_terms
    assert means[0] == pytest.approx((2.0 / 5, 1.5 / 5))


def test_emr_one_expert_is_reproduced_exactly():
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-64, 64, (12, 10), generator=g).float() / 64  # dyadic: expert - base is exact
    expert = base + torch.randint(-8, 8, (12, 10), generator=g).float() / 256
    tensor, parts = emr.merge(base, [expert], emr.Params())
    assert torch.equal(single_tensor_task_model(tensor, parts, 0), expert)


def test_emr_task_models_follow_their_experts():
    base, experts = _family()
    forward = emr.merge(base, experts, emr.Params())
    backward = emr.merge(base, experts[::-1], emr.Params())
    assert torch.equal(forward[1].task_vector, backward[1].task_vector)
    for t in range(3):
        assert torch.equal(single_tensor_task_model(*forward, t), single_tensor_task_model(*backward, 2 - t))


def test_bit_packing_matches_numpy_and_round_trips():
    g = torch.Generator().manual_seed(0)
    for shape in [(13,), (5, 7), (8, 8), (1,)]:
        mask = torch.rand(shape, generator=g) > 0.5
        packed = pack_mask(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
        assert np.array_equal(packed.numpy(), np.packbits(mask.numpy().reshape(-1)))
        assert torch.equal(unpack_mask(packed, shape), mask)

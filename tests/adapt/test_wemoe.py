"""WEMoE and E-WEMoE: a one-hot router reproduces its expert's MLP blocks (BERT, GPT-2 Conv1D, LLaMA gate/up/down),
E-WEMoE adds far fewer parameters, the routers' entropy falls, save -> load_merged gives the same outputs, and an
architecture without MLP blocks fails with one line naming what was looked for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mergesmith.adapt.modules import mlp_blocks
from mergesmith.adapt.problem import AdaptProblem
from mergesmith.adapt.wemoe import EWemoeParams, WemoeParams, run_e_wemoe, run_wemoe
from mergesmith.adapt.wemoe_model import Router, build_wemoe, mlp_tensor_names, sparsify
from mergesmith.errors import MergesmithError


def _perturbed(state: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_one_hot_router_reproduces_the_expert_mlp(arch):
    from mergesmith.tiny_models import tiny_model

    lm = tiny_model(arch)
    model = lm.base_model if arch != "gpt2" else lm.transformer  # the encoder/decoder stack without the LM head
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = [_perturbed(base, s) for s in (1, 2, 3)]
    floating = [k for k, v in base.items() if v.is_floating_point()]
    vectors = [{k: e[k] - base[k] for k in floating} for e in experts]
    blocks = mlp_blocks(model)
    mlp = set(mlp_tensor_names(model, blocks))
    lam = 0.3
    merged = {
        k: (base[k] if k in mlp else base[k] + lam * sum(v[k] for v in vectors)) if k in vectors[0] else base[k]
        for k in base
    }
    ids = torch.randint(2, 200, (3, 7), generator=torch.Generator().manual_seed(0))
    for t in range(3):
        reference = tiny_model(arch)
        reference = reference.base_model if arch != "gpt2" else reference.transformer
        reference.load_state_dict({k: experts[t][k] if k in mlp else merged[k] for k in base})
        routed = tiny_model(arch)
        routed = routed.base_model if arch != "gpt2" else routed.transformer
        routed.load_state_dict(merged)
        routers = nn.ModuleList(Router(64, 3, 8, 0.0) for _ in blocks)
        with torch.no_grad():
            for router in routers:  # fixed one-hot coefficients: W = W_0 + tau_t = the expert's weights
                router.fc2.weight.zero_()
                router.fc2.bias.copy_(torch.nn.functional.one_hot(torch.tensor(t), 3).float())
        moe = build_wemoe(routed, {k: base[k].float() for k in mlp}, [{k: v[k] for k in mlp} for v in vectors], routers)
        with torch.no_grad():
            expected = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            got = moe(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_routing_is_per_input_and_ignores_padding():
    router = Router(4, 2, 3, 0.3, torch.Generator().manual_seed(0))
    torch.nn.init.normal_(router.fc2.weight, std=1.0, generator=torch.Generator().manual_seed(1))
    h = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    r = router(h, mask)
    assert r.shape == (2, 2)
    torch.testing.assert_close(r[0], router(h[:1, :3]).squeeze(0))  # padding tokens do not count
    assert not torch.allclose(r[0], r[1])


@pytest.mark.parametrize("conv1d", [False, True])
def test_training_and_inference_paths_agree(conv1d):
    """RoutedLinear computes W(x) = W_0 + sum_t r_t tau_t by activations when training and by per-example weights
    otherwise: the same values, and gradients reach the router."""
    from mergesmith.adapt.wemoe_model import RoutedLinear, _Routing

    g = torch.Generator().manual_seed(0)
    shape = (6, 5) if conv1d else (5, 6)  # Conv1D stores [in, out]
    weight, bias = torch.randn(shape, generator=g), torch.randn(5, generator=g)
    taus, tau_b = torch.randn((3, *shape), generator=g), torch.randn(3, 5, generator=g)
    router = Router(6, 3, 4, 0.3, g)
    torch.nn.init.normal_(router.fc2.weight, generator=g)
    layer = RoutedLinear(weight, bias, taus, tau_b, _Routing(router, {"mask": None}), entry=True, conv1d=conv1d)
    x = torch.randn(4, 7, 6, generator=g)
    trained = layer(x)
    with torch.no_grad():
        inferred = layer(x)
        r = router(x)
    expected = torch.stack(
        [
            x[b]
            @ (
                (weight + torch.einsum("t,t...->...", r[b], taus))
                if conv1d
                else (weight + torch.einsum("t,t...->...", r[b], taus)).t()
            )
            + bias
            + r[b] @ tau_b
            for b in range(4)
        ]
    )
    torch.testing.assert_close(trained, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inferred, expected, atol=1e-5, rtol=1e-5)
    trained.sum().backward()
    assert router.fc2.weight.grad is not None and router.fc2.weight.grad.abs().sum() > 0


def test_sparsify_keeps_the_largest_fraction():
    t = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    assert torch.equal(sparsify(t, 2 / 6), torch.tensor([[0.0, -5.0, 0.0], [2.0, 0.0, 0.0]]))
    assert torch.equal(sparsify(t, 1.0), t)


@pytest.fixture(scope="module")
def results(tiny_problem):
    wemoe = run_wemoe(tiny_problem, WemoeParams(steps=12, lr=1e-2, batch_size=10), seed=0)
    e_wemoe = run_e_wemoe(tiny_problem, EWemoeParams(steps=3, batch_size=10), seed=0)
    return wemoe, e_wemoe


def test_entropy_falls_and_one_model_serves_every_task(results):
    wemoe, _ = results
    assert wemoe.info["entropy_last"] < wemoe.info["entropy_first"]
    assert wemoe.encoder_for("reviews") is wemoe.encoder_for("topics")
    assert wemoe.kind == "wemoe"


def test_static_part_is_task_arithmetic_and_the_moe_holds_the_mlp_vectors(tiny_problem: AdaptProblem, results):
    """Step 2 and 3, from the experts streamed one at a time: outside the MLPs base + 0.3 sum tau, inside the base
    (the MoE adds the routed vectors), and the MoE's stacked vectors are the experts' MLP task vectors."""
    wemoe, _ = results
    base, vectors = tiny_problem.base_state(), tiny_problem.task_vectors()
    names = tiny_problem.task_names
    attention = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(
        wemoe.merged[attention], base[attention] + 0.3 * sum(vectors[t][attention] for t in names)
    )
    mlp = "encoder.layer.1.intermediate.dense.weight"
    assert torch.equal(wemoe.merged[mlp], base[mlp])
    for i, t in enumerate(names):
        assert torch.equal(wemoe.extras[f"tau.{i}.{mlp}"], vectors[t][mlp])


def test_e_wemoe_adds_far_fewer_parameters(results):
    wemoe, e_wemoe = results
    # tiny BERT: 2 layers x (64x128 + 128 + 128x64 + 64) MLP parameters per model, 2 task vectors
    mlp = 2 * (64 * 128 + 128 + 128 * 64 + 64)
    assert wemoe.info["mlp_parameters_per_model"] == mlp
    assert wemoe.info["task_vector_parameters"] == 2 * mlp
    assert wemoe.info["trainable_parameters"] == 2 * (64 * 64 + 64 + 64 * 2 + 2)
    assert e_wemoe.info["trainable_parameters"] == wemoe.info["trainable_parameters"] // 2  # one shared router
    assert e_wemoe.info["task_vector_parameters"] <= 0.11 * wemoe.info["task_vector_parameters"]
    assert e_wemoe.info["added_parameters"] < 0.2 * wemoe.info["added_parameters"]


@pytest.mark.parametrize("which", [0, 1])
def test_save_and_load_merged_round_trip(tiny_problem: AdaptProblem, results, tmp_path, which):
    from mergesmith import load_merged
    from mergesmith.adapt.result import save_result

    result = results[which]
    out = save_result(result, tiny_problem, tmp_path / "moe")
    loaded = load_merged(out)
    for task in tiny_problem.tasks:
        batch = next(iter(tiny_problem.batches(task.unlabeled, 10)))
        with torch.no_grad():
            ours = tiny_problem.pooled(result.encoder_for(task.name), batch)
            again = tiny_problem.pooled(loaded, batch)
        torch.testing.assert_close(again, ours, atol=1e-6, rtol=1e-6)
    with pytest.raises(MergesmithError, match="no task 'x'"):
        load_merged(out, task="x")


def test_unknown_architecture_names_what_was_looked_for():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(4, 4)

    class NoMlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(2))

    for model in (NoBlocks(), NoMlp()):
        with pytest.raises(
            MergesmithError, match="intermediate.dense -> output.dense.*mlp.c_fc.*gate_proj.*mlp.fc1"
        ) as err:
            mlp_blocks(model)
        assert "\n" not in str(err.value)

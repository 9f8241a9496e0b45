"""AdaMerging on a tiny BERT pool: the entropy objective's gradient w.r.t. lambda matches finite differences, the loss
falls, frozen task-wise lambdas are task arithmetic, the written config makes `mergesmith merge` reproduce the
in-memory weights, AdaMerging++ uses TIES's own trim/elect steps, and the same seed gives the same coefficients."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mergesmith.adapt import ADAPT_METHODS
from mergesmith.adapt._spec import parse_params
from mergesmith.adapt.adamerging import ties_processed
from mergesmith.adapt.functional import coefficient_groups, combine, entropy, learnable_names
from mergesmith.adapt.result import save_result
from mergesmith.api import merge_state_dicts
from tests.helpers import load_tensors, run_cli

FAST = {"steps": 2, "lr": 0.05, "batch_size": 4, "progress": False}


def _run(problem, name, seed=0, **overrides):
    spec = ADAPT_METHODS[name]
    return spec.run(problem, parse_params(spec, {**FAST, **overrides}), seed)


def test_entropy_gradient_matches_finite_differences(tiny_problem):
    """gradcheck (float64) of lambda -> sum_k H(head_k(pool(f_{theta_0 + sum lambda tau}(x_k)))), layer-wise."""
    from torch.func import functional_call

    base = {k: v.double() for k, v in tiny_problem.base_state().items()}
    vectors = [{k: v.double() for k, v in tiny_problem.task_vectors()[t].items()} for t in tiny_problem.task_names]
    names = learnable_names(base, vectors)
    index, labels = coefficient_groups(names, "layer")
    groups = {n: index.get(n) for n in base}
    encoder = tiny_problem.load_encoder(tiny_problem.base_dir).double().requires_grad_(False)
    batches = [next(tiny_problem.batches(t.unlabeled, 3)) for t in tiny_problem.tasks]
    heads = [(t.head.weight.detach().double(), t.head.bias.detach().double()) for t in tiny_problem.tasks]

    def objective(lam):
        params = combine(base, vectors, lam, groups)
        total = lam.new_zeros(())
        for batch, (w, b) in zip(batches, heads):
            out = functional_call(encoder, params, (), tiny_problem.forward_kwargs(batch), strict=False)
            feats = tiny_problem.pool_hidden(out.last_hidden_state, batch)
            total = total + entropy(torch.nn.functional.linear(feats, w, b))
        return total

    lam = torch.full((len(vectors), len(labels)), 0.3, dtype=torch.float64) + 0.05 * torch.randn(
        len(vectors), len(labels), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    lam.requires_grad_(True)
    assert len(labels) >= 3  # embeddings + 2 blocks: a real layer-wise problem
    assert torch.autograd.gradcheck(objective, (lam,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_layerwise_entropy_falls_and_weights_are_theta_of_lambda(tiny_problem):
    result = _run(tiny_problem, "adamerging_layerwise", steps=12)
    info = result.info
    assert info["loss_mean_last_tenth"] < 0.8 * info["loss_mean_first_tenth"]
    lam = result.extras["adamerging.coefficients"]
    assert lam.shape == (2, info["groups"]) and info["groups"] == info["learnable_tensors"]
    assert not torch.allclose(lam, torch.full_like(lam, 0.3))  # the coefficients moved, per tensor
    assert float(lam.min()) >= 0 and float(lam.max()) <= 1  # clamped as applied
    vectors = [tiny_problem.task_vectors()[t] for t in tiny_problem.task_names]
    name = "encoder.layer.1.attention.self.query.weight"
    g = json.loads(json.dumps(result.spec["groups"])).index(name)
    expected = tiny_problem.base_state()[name] + lam[0, g] * vectors[0][name] + lam[1, g] * vectors[1][name]
    torch.testing.assert_close(result.merged[name], expected)


def test_taskwise_with_fixed_lambda_is_task_arithmetic(tiny_problem):
    base = tiny_problem.base_state()
    vectors = [tiny_problem.task_vectors()[t] for t in tiny_problem.task_names]
    experts = [{k: base[k] + v[k] for k in base} for v in vectors]
    groups = {n: 0 for n in base}
    ours = combine(base, vectors, torch.tensor([[0.3], [0.7]]), groups)
    reference = merge_state_dicts(base, experts, "task_arithmetic", weight=[0.3, 0.7])
    for k in base:
        torch.testing.assert_close(ours[k], reference[k], atol=1e-6, rtol=0)
    # and the method's output is task arithmetic with the coefficients it learned
    result = _run(tiny_problem, "adamerging_taskwise", steps=2)
    learned = result.info["coefficients"]
    assert set(learned) == set(tiny_problem.task_names)
    reference = merge_state_dicts(
        base, experts, "task_arithmetic", weight=[learned[t] for t in tiny_problem.task_names]
    )
    for k in base:
        torch.testing.assert_close(result.merged[k], reference[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["adamerging_layerwise", "adamerging_taskwise"])
def test_written_config_reproduces_the_weights_through_mergesmith_merge(tiny_problem, tmp_path, name):
    result = _run(tiny_problem, name, steps=2)
    out = save_result(result, tiny_problem, tmp_path / "adapted")
    config = yaml.safe_load((out / "adamerging.yaml").read_text())
    assert config["merge_method"] == "task_arithmetic"
    coefficients = json.loads((out / "adamerging_coefficients.json").read_text())["coefficients"]
    assert set(coefficients) == set(tiny_problem.task_names)
    outcome = run_cli("merge", out / "adamerging.yaml", tmp_path / "engine", "--quiet")
    assert outcome.exit_code == 0, outcome.output
    engine = load_tensors(tmp_path / "engine")
    saved = load_tensors(out)
    base = load_tensors(tiny_problem.base_dir)
    compared = 0
    for k, v in engine.items():
        name = k.removeprefix("bert.")  # the tiny checkpoints are saved from a masked-LM model
        if name in result.merged:
            assert torch.equal(v, result.merged[name]), k  # same operations in the same order: same bits
            assert torch.equal(saved[k], v), k  # written under the checkpoint's own name
            compared += 1
        else:  # the masked-LM head: not merged, the base's own
            assert torch.equal(saved[k], base[k]), k
    assert compared >= 30
    assert set(saved) - set(engine) == {"adamerging.coefficients"}  # the extras file's coefficients


def test_plusplus_uses_ties_trimmed_sign_elected_vectors(tiny_problem):
    base = tiny_problem.base_state()
    vectors = [tiny_problem.task_vectors()[t] for t in tiny_problem.task_names]
    processed = ties_processed(base, vectors, 0.2)
    experts = [{k: base[k] + v[k] for k in base} for v in vectors]
    # TIES's disjoint SUM (normalize false, equal weights) is exactly the sum of the processed task vectors
    ties = merge_state_dicts(base, experts, "ties", density=0.2, weight=1.0, normalize=False)
    name = "encoder.layer.0.output.dense.weight"
    torch.testing.assert_close(base[name] + processed[0][name] + processed[1][name], ties[name], atol=1e-6, rtol=0)
    kept = (processed[0][name] != 0).float().mean()
    assert 0.05 < float(kept) <= 0.2 + 1e-6
    result = _run(tiny_problem, "adamerging_plusplus", steps=2)
    assert "adamerging.yaml" not in result.files and "adamerging_coefficients.json" in result.files


def test_same_seed_same_coefficients(tiny_problem):
    first = _run(tiny_problem, "adamerging_layerwise", seed=3, steps=2).extras["adamerging.coefficients"]
    again = _run(tiny_problem, "adamerging_layerwise", seed=3, steps=2).extras["adamerging.coefficients"]
    other = _run(tiny_problem, "adamerging_layerwise", seed=4, steps=2).extras["adamerging.coefficients"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_unknown_parameter_is_a_one_line_error():
    from mergesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="allowed"):
        parse_params(ADAPT_METHODS["adamerging_taskwise"], {"grouping": "tensor"})

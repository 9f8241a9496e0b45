"""aTLAS on a tiny BERT pool: the supervised loss falls, there is one coefficient per tensor per task vector, the
entropy objective and few-shot subsets work, and the written config reproduces the weights through the engine."""

from __future__ import annotations

import torch
import yaml

from mergesmith.adapt import ADAPT_METHODS
from mergesmith.adapt._spec import parse_params
from mergesmith.adapt.atlas import few_shot
from mergesmith.adapt.result import save_result
from tests.helpers import load_tensors, run_cli


def _run(problem, seed=0, **overrides):
    spec = ADAPT_METHODS["atlas"]
    return spec.run(
        problem, parse_params(spec, {"steps": 2, "batch_size": 4, "lr": 0.05, "progress": False, **overrides}), seed
    )


def test_supervised_loss_falls_with_one_coefficient_per_tensor(tiny_problem):
    result = _run(tiny_problem, steps=12)
    info = result.info
    assert info["objective"] == "supervised" and info["labeled_examples"] == sum(
        len(t.validation) for t in tiny_problem.tasks
    )
    assert info["loss_mean_last_tenth"] < 0.8 * info["loss_mean_first_tenth"]
    lam = result.extras["atlas.coefficients"]
    assert (
        lam.shape == (len(tiny_problem.tasks), info["learnable_tensors"])
        and info["groups"] == info["learnable_tensors"]
    )
    assert len(set(lam[0].tolist())) > lam.shape[1] // 2  # anisotropic: blocks get their own values
    vectors = [tiny_problem.task_vectors()[t] for t in tiny_problem.task_names]
    name = "encoder.layer.0.intermediate.dense.bias"
    g = result.spec["groups"].index(name)
    expected = tiny_problem.base_state()[name] + lam[0, g] * vectors[0][name] + lam[1, g] * vectors[1][name]
    torch.testing.assert_close(result.merged[name], expected)


def test_starts_at_the_pretrained_model_and_is_deterministic(tiny_problem):
    first = _run(tiny_problem, seed=5)
    again = _run(tiny_problem, seed=5)
    assert torch.equal(first.extras["atlas.coefficients"], again.extras["atlas.coefficients"])
    zero = _run(tiny_problem, steps=1, lr=1e-12)
    base = tiny_problem.base_state()
    torch.testing.assert_close(
        zero.merged["encoder.layer.1.output.dense.weight"], base["encoder.layer.1.output.dense.weight"]
    )


def test_entropy_objective_and_few_shot(tiny_problem):
    result = _run(tiny_problem, objective="entropy", steps=2)
    assert result.info["objective"] == "entropy" and result.info["labeled_examples"] == 0
    shots = few_shot(tiny_problem, 3, seed=0)
    assert [len(t.validation) for t in shots.tasks] == [3, 3]
    assert shots.task_vectors() is tiny_problem.task_vectors()  # the same vectors, not a copy
    assert _run(tiny_problem, shots=3).info["labeled_examples"] == 6


def test_config_reproduces_the_weights(tiny_problem, tmp_path):
    result = _run(tiny_problem)
    out = save_result(result, tiny_problem, tmp_path / "atlas")
    assert yaml.safe_load((out / "atlas.yaml").read_text())["merge_method"] == "task_arithmetic"
    outcome = run_cli("merge", out / "atlas.yaml", tmp_path / "engine", "--quiet")
    assert outcome.exit_code == 0, outcome.output
    compared = 0
    for k, v in load_tensors(tmp_path / "engine").items():
        name = k.removeprefix("bert.")
        if name in result.merged:
            assert torch.equal(v, result.merged[name]), k
            compared += 1
    assert compared >= 30

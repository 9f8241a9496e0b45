"""RegMean / RegMean++: the closed form's known answers, the singular-Gram ridge, and both methods end to end
(statistics saved, engine merge equal to the in-memory solution)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from mergesmith.methods.regmean_combine import reduce_off_diagonal, regmean_weight


def test_identity_grams_give_the_average():
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    merged, regularised = regmean_weight(weights, [torch.eye(4, dtype=torch.float64)] * 3, alpha=1.0, ridge=1e-4)
    torch.testing.assert_close(merged, torch.stack(weights).mean(0))
    assert not regularised
    # alpha = 0 keeps only the diagonals: with equal diagonals, averaging again, whatever the off-diagonals
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    merged0, _ = regmean_weight(weights, [x.T @ x] * 3, alpha=0.0, ridge=1e-4)
    torch.testing.assert_close(merged0, torch.stack(weights).mean(0))


def test_recovers_a_planted_linear_map_from_disjoint_input_subspaces():
    g = torch.Generator().manual_seed(2)
    d_in, d_out = 6, 5
    target = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    # expert 1 sees inputs in the first 3 coordinates, expert 2 in the last 3; each agrees with the target there and
    # is arbitrary elsewhere (its data never constrains those columns)
    x1 = torch.cat([torch.randn(30, 3, generator=g, dtype=torch.float64), torch.zeros(30, 3, dtype=torch.float64)], 1)
    x2 = torch.cat([torch.zeros(30, 3, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64)], 1)
    w1, w2 = target.clone(), target.clone()
    w1[:, 3:] = torch.randn(d_out, 3, generator=g, dtype=torch.float64)
    w2[:, :3] = torch.randn(d_out, 3, generator=g, dtype=torch.float64)
    merged, regularised = regmean_weight([w1, w2], [x1.T @ x1, x2.T @ x2], alpha=1.0, ridge=1e-4)
    torch.testing.assert_close(merged, target)
    assert not regularised
    # and the merged layer reproduces each expert's outputs on that expert's inputs
    torch.testing.assert_close(x1 @ merged.T, x1 @ w1.T)
    torch.testing.assert_close(x2 @ merged.T, x2 @ w2.T)


def test_singular_gram_is_regularised_and_reported():
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(10, 2, generator=g, dtype=torch.float64), torch.zeros(10, 2, dtype=torch.float64)], 1)
    weights = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    merged, regularised = regmean_weight(weights, [x.T @ x, x.T @ x], alpha=1.0, ridge=1e-4)
    assert regularised and torch.isfinite(merged).all()
    # the seen subspace is still solved (up to the small ridge)
    torch.testing.assert_close(x @ merged.T, x @ torch.stack(weights).mean(0).T, atol=1e-3, rtol=1e-3)
    assert torch.equal(reduce_off_diagonal(torch.ones(2, 2), 0.5), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


def test_regmean_and_plusplus_end_to_end(tiny_problem, tmp_path: Path):
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.adapt.result import save_result

    states = {}
    for name in ("regmean", "regmean_plusplus"):
        spec = get_adapt_method(name)
        result = spec.run(tiny_problem, parse_params(spec, {"num_examples": 6, "batch_size": 4}), 0)
        assert result.info["linear_layers"] == 13  # 2 layers x 6 linears + the pooler
        out = save_result(result, tiny_problem, tmp_path / name)
        grams = load_file(str(out / "statistics" / "topics.safetensors"))
        gram = grams["bert.encoder.layer.1.intermediate.dense.weight"]
        assert gram.shape == (64, 64) and torch.allclose(gram, gram.T)
        if name == "regmean_plusplus":
            assert result.info["engine_max_abs_difference"] < 1e-5  # engine + saved Grams == the layer sweep's
        else:  # the Grams went to disk task by task; solved in memory they give the engine's weights
            w = "encoder.layer.1.intermediate.dense.weight"
            base, vectors = tiny_problem.base_state(), tiny_problem.task_vectors()
            saved = [
                load_file(str(out / "statistics" / f"{t}.safetensors"))[f"bert.{w}"] for t in ("reviews", "topics")
            ]
            expected, _ = regmean_weight([base[w] + vectors[t][w] for t in ("reviews", "topics")], saved, 0.95, 1e-4)
            torch.testing.assert_close(result.merged[w], expected, atol=1e-5, rtol=1e-5)
        assert "regmean_combine" in (out / "merge.yaml").read_text()
        states[name] = result.merged
    # RegMean++ feeds every layer (layer 0 included: its input is the averaged embeddings) from the merged model
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.dense.weight"):
        assert not torch.allclose(states["regmean"][name], states["regmean_plusplus"][name], atol=1e-6)
    # tensors that are not linear weights are averaged by both
    base = tiny_problem.base_state()
    vectors = tiny_problem.task_vectors()
    norm = "encoder.layer.1.output.LayerNorm.weight"
    average = base[norm] + (vectors["reviews"][norm] + vectors["topics"][norm]) / 2
    for name in states:
        torch.testing.assert_close(states[name][norm], average)


def test_plusplus_grams_come_from_merged_earlier_layers_and_the_experts_own_layer(tiny_problem, tmp_path: Path):
    """RegMean++'s Gram for a layer-1 linear equals the Gram recorded on a model with the merged embeddings and
    layer 0 and expert's own layer 1 (built here from the result, independently of the layer sweep)."""
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.adapt.regmean import task_grams
    from mergesmith.adapt.result import save_result
    from mergesmith.adapt.statistics import linear_modules

    spec = get_adapt_method("regmean_plusplus")
    params = parse_params(spec, {"num_examples": 6, "batch_size": 4})
    result = spec.run(tiny_problem, params, 0)
    out = save_result(result, tiny_problem, tmp_path / "pp")
    i, task = 1, tiny_problem.tasks[1]
    expert = tiny_problem.load_encoder(tiny_problem.expert_dirs[task.name]).state_dict()
    state = {k: (expert[k] if k.startswith("encoder.layer.1.") else result.merged[k]) for k in result.merged}
    encoder = tiny_problem.load_encoder(tiny_problem.base_dir)
    module = "encoder.layer.1.intermediate.dense"
    found = task_grams(
        tiny_problem, task, encoder, {module: linear_modules(encoder, "test")[module]}, params, 0 + i, state=state
    )
    saved = load_file(str(out / "statistics" / f"{task.name}.safetensors"))[f"bert.{module}.weight"]
    torch.testing.assert_close(saved, found[module], atol=1e-6, rtol=1e-5)

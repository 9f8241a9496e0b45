"""Fisher merging: eq. (3)'s combination (pure and through the engine with statistics files), the config errors, and
`fisher` end to end on the tiny pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergesmith.methods.fisher_combine import fisher_average
from tests.helpers import load_tensors, write_yaml


def test_equal_fishers_give_the_average():
    g = torch.Generator().manual_seed(0)
    thetas = [torch.randn(5, 7, generator=g) for _ in range(3)]
    fisher = torch.rand(5, 7, generator=g) + 0.1
    merged = fisher_average(thetas, [fisher, fisher, fisher], [1.0, 1.0, 1.0], 1e-6)
    torch.testing.assert_close(merged, torch.stack(thetas).mean(0))
    weighted = fisher_average(thetas, [fisher] * 3, [1.0, 2.0, 1.0], 1e-6)
    torch.testing.assert_close(weighted, (thetas[0] + 2 * thetas[1] + thetas[2]) / 4)


def test_fisher_weights_each_parameter_by_its_own_fisher():
    a, b = torch.zeros(4), torch.ones(4)
    fa = torch.tensor([1.0, 3.0, 0.0, 0.0])
    fb = torch.tensor([1.0, 1.0, 2.0, 0.0])
    merged = fisher_average([a, b], [fa, fb], [1.0, 1.0], 1e-6)
    # 1/2, 1/4, ~1 (a's Fisher is floored), 1/2 (nobody's data touched it: the plain average)
    torch.testing.assert_close(merged, torch.tensor([0.5, 0.25, 2 / (2 + 1e-6), 0.5]))


def _family_with_statistics(root: Path, fishers):
    from mergesmith.tiny_models import build_tiny_family

    family = build_tiny_family(root / "models", "bert", 2, layers=1)
    files = []
    for i, expert in enumerate(family.experts):
        tensors = {k: v for k, v in load_tensors(expert).items() if v.is_floating_point()}
        stats = {k: fishers(i, k, v) for k, v in tensors.items()}
        path = root / "stats" / f"stats_{i}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file(stats, str(path))
        files.append(path)
    return family, files


def test_engine_with_equal_statistics_matches_linear(tmp_path: Path):
    from mergesmith.api import merge

    family, files = _family_with_statistics(tmp_path, lambda i, k, v: torch.full_like(v, 0.5))
    models = [{"model": str(e), "statistics": str(f)} for e, f in zip(family.experts, files)]
    merge(
        write_yaml(tmp_path / "fisher.yaml", {"merge_method": "fisher_combine", "models": models}), tmp_path / "fisher"
    )
    linear = [{"model": str(e), "parameters": {"weight": 1.0}} for e in family.experts]
    merge(write_yaml(tmp_path / "linear.yaml", {"merge_method": "linear", "models": linear}), tmp_path / "linear")
    ours, ref = load_tensors(tmp_path / "fisher"), load_tensors(tmp_path / "linear")
    assert ours.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k])


def test_engine_uses_the_statistics(tmp_path: Path):
    from mergesmith.api import merge

    # expert 0's Fisher dominates every tensor: the merge is (almost exactly) expert 0
    family, files = _family_with_statistics(tmp_path, lambda i, k, v: torch.full_like(v, 1e6 if i == 0 else 1e-3))
    models = [{"model": str(e), "statistics": str(f)} for e, f in zip(family.experts, files)]
    merge(write_yaml(tmp_path / "fisher.yaml", {"merge_method": "fisher_combine", "models": models}), tmp_path / "out")
    ours, first = load_tensors(tmp_path / "out"), load_tensors(family.experts[0])
    for k, v in ours.items():
        torch.testing.assert_close(v, first[k], atol=1e-6, rtol=1e-6)


def test_statistics_config_errors(tmp_path: Path):
    from mergesmith.api import plan_merge
    from mergesmith.errors import ConfigError

    family, files = _family_with_statistics(tmp_path, lambda i, k, v: torch.ones_like(v))
    experts = [str(e) for e in family.experts]
    with pytest.raises(ConfigError, match=r"models\[1\]: fisher_combine needs the model's statistics file"):
        plan_merge(
            {
                "merge_method": "fisher_combine",
                "models": [{"model": experts[0], "statistics": str(files[0])}, {"model": experts[1]}],
            }
        )
    with pytest.raises(ConfigError, match=r"models\[0\]\.statistics: linear reads no statistics"):
        plan_merge(
            {
                "merge_method": "linear",
                "models": [{"model": experts[0], "statistics": str(files[0])}, {"model": experts[1]}],
            }
        )
    bad = dict(load_file(str(files[1])))
    name = next(k for k, v in bad.items() if v.dim() == 2)
    bad[name] = torch.ones(3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="has shape \\[3, 3\\] but fisher_combine expects"):
        plan_merge(
            {
                "merge_method": "fisher_combine",
                "models": [
                    {"model": experts[0], "statistics": str(files[0])},
                    {"model": experts[1], "statistics": str(tmp_path / "bad.safetensors")},
                ],
            }
        )


def test_fisher_end_to_end(tiny_problem, tmp_path: Path, monkeypatch):
    from mergesmith import load_merged
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params
    from mergesmith.adapt.result import save_result

    spec = get_adapt_method("fisher")
    result = spec.run(tiny_problem, parse_params(spec, {"num_examples": 3}), 0)
    out = save_result(result, tiny_problem, tmp_path / "out")
    manifest = json.loads((out / "mergesmith.json").read_text())
    assert (
        manifest["kind"] == "weights"
        and manifest["method"] == "fisher"
        and manifest["details"]["spec"]["method"] == "fisher"
    )
    stats = load_file(str(out / "statistics" / "reviews.safetensors"))
    query = "bert.encoder.layer.0.attention.self.query.weight"  # the checkpoints' names (a BertForMaskedLM save)
    assert stats[query].shape == (64, 64) and float(stats[query].sum()) > 0
    model = load_merged(out).base_model  # the encoder, whether the model comes with its head or not
    torch.testing.assert_close(
        model.state_dict()["encoder.layer.0.attention.self.query.weight"],
        result.merged["encoder.layer.0.attention.self.query.weight"],
    )
    # the saved merge.yaml rebuilds the weights from the experts and the saved statistics
    from mergesmith.api import merge

    monkeypatch.chdir(out)
    merge("merge.yaml", tmp_path / "rebuilt")
    rebuilt, written = load_tensors(tmp_path / "rebuilt"), load_tensors(out)
    compared = [
        n for n in rebuilt if n.removeprefix("bert.") in result.merged
    ]  # the MLM head is not part of the encoder
    assert len(compared) > 30
    for name in compared:
        torch.testing.assert_close(rebuilt[name], written[name])
    again = spec.run(tiny_problem, parse_params(spec, {"num_examples": 3}), 0)
    assert all(torch.equal(again.merged[k], v) for k, v in result.merged.items())  # seeded label draws

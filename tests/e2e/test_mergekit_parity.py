"""Golden parity with mergekit 0.1.5: the same YAML, run by both tools on tiny LLaMA checkpoints in fp32.

Per-model weights, layer gradients and filters are in the configs so parameter resolution is compared too.
linear, task_arithmetic, ties and passthrough must match bit for bit; the others within 1e-6 relative.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import load_tensors, run_cli, write_yaml

BITWISE = {"linear", "task_arithmetic", "ties", "passthrough"}


def _configs(fam) -> dict[str, dict]:
    e0, e1, e2 = (str(p) for p in fam.experts)
    base = str(fam.base)
    attn_mlp = [
        {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
        {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
        {"value": 0.5},
    ]
    return {
        "linear": {
            "models": [
                {"model": e0, "parameters": {"weight": 0.6}},
                {"model": e1, "parameters": {"weight": [0.1, 0.9]}},
                {"model": e2, "parameters": {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.4}]}},
            ],
        },
        "task_arithmetic": {
            "base_model": base,
            "parameters": {"lambda": 0.7},
            "models": [
                {"model": e0, "parameters": {"weight": 0.5}},
                {"model": e1, "parameters": {"weight": [0.2, 0.6, 1.0]}},
            ],
        },
        "ties": {
            "base_model": base,
            "parameters": {"normalize": True, "weight": 1.0},
            "models": [
                {"model": e0, "parameters": {"density": 0.3}},
                {"model": e1, "parameters": {"density": [0.2, 0.8], "weight": 0.7}},
                {"model": e2, "parameters": {"density": [{"filter": "self_attn", "value": 0.5}, {"value": 0.25}]}},
            ],
        },
        "breadcrumbs": {
            "base_model": base,
            "models": [
                {"model": e0, "parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.02}},
                {"model": e1, "parameters": {"weight": 0.5, "density": 0.7, "gamma": 0.05}},
            ],
        },
        "breadcrumbs_ties": {
            "base_model": base,
            "models": [
                {"model": e0, "parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.02}},
                {"model": e1, "parameters": {"weight": 0.5, "density": 0.7, "gamma": 0.05}},
            ],
        },
        "sce": {
            "base_model": base,
            "parameters": {"select_topk": 0.5},
            "models": [{"model": e0}, {"model": e1}, {"model": e2}],
        },
        "slerp": {
            "base_model": base,
            "parameters": {"t": attn_mlp},
            "models": [{"model": base}, {"model": e0}],
        },
        "nuslerp": {
            "models": [
                {"model": e0, "parameters": {"weight": 0.3}},
                {"model": e1, "parameters": {"weight": 0.7}},
            ],
        },
        "multislerp": {
            "models": [
                {"model": e0, "parameters": {"weight": 1.0}},
                {"model": e1, "parameters": {"weight": 2.0}},
                {"model": e2, "parameters": {"weight": 0.5}},
            ],
        },
        "karcher": {"models": [{"model": e0}, {"model": e1}, {"model": e2}]},
        "model_stock": {"base_model": base, "models": [{"model": e0}, {"model": e1}, {"model": e2}]},
        "nearswap": {"base_model": base, "parameters": {"t": 0.001}, "models": [{"model": base}, {"model": e0}]},
        "passthrough": {
            "slices": [
                {"sources": [{"model": e0, "layer_range": [0, 3]}]},
                {"sources": [{"model": e1, "layer_range": [1, 4]}]},
            ],
        },
    }


def _run_mergekit(config: dict, out) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(config), str(out), MergeOptions(quiet=True, write_model_card=False))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "method",
    [
        "linear",
        "task_arithmetic",
        "ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "sce",
        "slerp",
        "nuslerp",
        "multislerp",
        "karcher",
        "model_stock",
        "nearswap",
        "passthrough",
    ],
)
def test_matches_mergekit(method, llama_family, tmp_path):
    config = {"merge_method": method, "dtype": "float32", **_configs(llama_family)[method]}
    _run_mergekit(config, tmp_path / "mergekit")
    path = write_yaml(tmp_path / "config.yaml", config)
    result = run_cli("merge", path, tmp_path / "ours", "--quiet")
    assert result.exit_code == 0, result.output
    theirs = load_tensors(tmp_path / "mergekit")
    ours = load_tensors(tmp_path / "ours")
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        got = ours[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if method in BITWISE:
            assert torch.equal(got, expected), f"{method}: {name} differs by {(got - expected).abs().max().item():.3g}"
        else:
            scale = expected.abs().max().clamp_min(1e-12)
            err = ((got - expected).abs().max() / scale).item()
            assert err <= 1e-6, f"{method}: {name} relative error {err:.3g}"

"""Inputs with NaN/Inf, task vectors that are all zero, and merged values beyond the output dtype's range."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.faults._faults import expect_refusal, with_first_expert
from tests.helpers import load_tensors, run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e

POISONED = "model.layers.0.mlp.up_proj.weight"


def _poisoned_copy(fam, tmp_path, value: float):
    """Expert 0 as one model.safetensors with one non-finite value in POISONED."""
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    tensors = load_tensors(fam.experts[0])
    tensors[POISONED][0, 0] = value
    save_file(tensors, str(poisoned / "model.safetensors"))
    (poisoned / "config.json").write_bytes((fam.experts[0] / "config.json").read_bytes())
    return poisoned


@pytest.mark.parametrize(("value", "label"), [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
def test_non_finite_inputs_warn_then_strict_refuses(llama_family, tmp_path, value, label):
    poisoned = _poisoned_copy(llama_family, tmp_path, value)
    cfg = with_first_expert(llama_family, poisoned)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    before = tree_hashes(poisoned)
    warned = run_cli("merge", path, tmp_path / "warned", "--quiet")
    assert warned.exit_code == 0, warned.output
    lines = [line for line in warned.output.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and POISONED in lines[0] and str(poisoned) in lines[0] and "--strict" in lines[0]
    line = expect_refusal(
        tmp_path,
        cfg,
        label,
        POISONED,
        str(poisoned),
        "--strict",
        args=("--strict",),
        inputs=[poisoned, llama_family.base],
    )
    assert "fix or drop that model" in line
    assert tree_hashes(poisoned) == before


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della", "model_stock"])
def test_all_zero_task_vectors_give_the_base(llama_family, tmp_path, method):
    """Experts identical to the base: sign election, trimming and rescaling see only zeros and must not divide by
    them; the merge is exactly the base."""
    twin = tmp_path / "twin"
    twin.mkdir()
    save_file(load_tensors(llama_family.base), str(twin / "model.safetensors"))
    twin2 = tmp_path / "twin2"
    twin2.mkdir()
    save_file(load_tensors(llama_family.base), str(twin2 / "model.safetensors"))
    cfg = {
        "merge_method": method,
        "base_model": str(llama_family.base),
        "models": [{"model": str(twin)}, {"model": str(twin2)}],
    }
    if method != "model_stock":
        cfg["parameters"] = {"weight": 1.0} if method == "task_arithmetic" else {"weight": 1.0, "density": 0.5}
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    merged, base = load_tensors(tmp_path / "out"), load_tensors(llama_family.base)
    assert merged.keys() == base.keys()
    for name, tensor in base.items():
        assert torch.isfinite(merged[name]).all(), name
        assert torch.equal(merged[name], tensor), name


def test_fp16_overflow_on_cast_is_clamped_and_reported(tmp_path):
    base, big = tmp_path / "base", tmp_path / "big"
    base.mkdir()
    big.mkdir()
    save_file({"a": torch.zeros(4, 4), "b": torch.zeros(3)}, str(base / "model.safetensors"))
    save_file({"a": torch.full((4, 4), 1.0e6), "b": torch.ones(3)}, str(big / "model.safetensors"))
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "out_dtype": "float16",
        "models": [{"model": str(big), "parameters": {"weight": 1.0}}],
    }
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert lines == ["warning: values beyond float16 range clamped in a (16 values)"], result.output
    out = load_tensors(tmp_path / "out")
    assert out["a"].dtype == torch.float16 and torch.equal(out["a"], torch.full((4, 4), 65504.0, dtype=torch.float16))
    assert torch.equal(out["b"], torch.ones(3, dtype=torch.float16))

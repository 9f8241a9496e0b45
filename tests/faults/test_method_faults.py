"""Methods that meet inputs they cannot merge: NaN/Inf reaching an SVD, and a method raising on a tensor inside a
worker thread. Both are a warning or a one-line refusal naming the tensor, never a traceback."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.faults._faults import expect_refusal, with_first_expert
from tests.faults.test_numeric_faults import POISONED, _poisoned_copy
from tests.helpers import load_tensors, run_cli, write_yaml

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("method", ["tsv_m", "iso_c", "iso_cts", "cart"])
def test_non_finite_input_to_a_spectral_method_warns_then_strict_refuses(llama_family, tmp_path, method):
    """The SVD of a matrix with NaN is undefined: the merged matrix is NaN (as any arithmetic on a NaN), the merge
    warns and names the input, and --strict refuses it."""
    poisoned = _poisoned_copy(llama_family, tmp_path, float("nan"))
    cfg = with_first_expert(llama_family, poisoned, merge_method=method, parameters={})
    if method == "cart":
        del cfg["base_model"]
    warned = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "warned", "--quiet")
    assert warned.exit_code == 0, warned.output
    lines = [line for line in warned.output.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and POISONED in lines[0] and "--strict" in lines[0], warned.output
    merged = load_tensors(tmp_path / "warned")
    assert torch.isnan(merged[POISONED]).all()
    assert all(torch.isfinite(t).all() for name, t in merged.items() if name != POISONED)
    expect_refusal(
        tmp_path, cfg, "NaN/Inf", POISONED, "--strict", args=("--strict",), inputs=[poisoned, llama_family.base]
    )


def _antipodal_family(root):
    """A base and three experts whose task vectors tau, -2 tau, 4 tau have unit directions that cancel under the
    weights 1, 2, 1 (dyadic values: every step is exact)."""
    g = torch.Generator().manual_seed(0)
    base = torch.round(torch.randn(6, 8, generator=g) * 8) / 8
    tau = torch.round(torch.randn(6, 8, generator=g) * 64) / 64
    paths = []
    for name, tensor in (("base", base), ("a", base + tau), ("b", base - 2 * tau), ("c", base + 4 * tau)):
        path = root / name
        path.mkdir()
        save_file({"layer.weight": tensor, "layer.bias": torch.zeros(8)}, str(path / "model.safetensors"))
        paths.append(path)
    return paths


def test_a_method_failing_on_a_tensor_is_one_line_naming_it(tmp_path):
    base, *experts = _antipodal_family(tmp_path)
    cfg = {
        "merge_method": "multislerp",
        "base_model": str(base),
        "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(experts, (1.0, 2.0, 1.0))],
    }
    expect_refusal(
        tmp_path,
        cfg,
        "multislerp: merging tensor 'layer.weight' failed: ValueError",
        "no direction",
        inputs=[base, *experts],
    )

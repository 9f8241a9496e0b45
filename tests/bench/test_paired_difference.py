"""benchmarks/paired_difference.py: the paired bootstrap the closing notes' "not a difference" claims rest on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paired_difference.py"


def _module():
    spec = importlib.util.spec_from_file_location("paired_difference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_bootstrap_separates_a_real_gain_from_a_relabelling():
    pd = _module()
    g = torch.Generator().manual_seed(0)
    reference = {t: torch.rand(1000, generator=g) < 0.6 for t in ("a", "b")}
    # the same correct count, on other examples: unpaired noise only, no real difference
    shuffled = {t: v[torch.randperm(1000, generator=g)] for t, v in reference.items()}
    # right wherever the reference is, plus 60 more examples per task: a small but real, paired gain
    better = {}
    for t, v in reference.items():
        extra = (~v).nonzero().flatten()[:60]
        b = v.clone()
        b[extra] = True
        better[t] = b
    expert = {"a": 0.8, "b": 0.8}
    table = pd.compare({"ref": reference, "shuffled": shuffled, "better": better}, expert, 400, 0)
    score, vs_first, vs_previous = table["better"]
    assert abs(score - table["ref"][0] - 0.06 / 0.8) < 1e-6 and abs(vs_first.difference - 0.06 / 0.8) < 1e-6
    assert vs_first.low > 0 and vs_first.real  # the whole interval above zero
    shuffled_vs_ref = table["shuffled"][1]
    assert shuffled_vs_ref.low < 0 < shuffled_vs_ref.high and table["shuffled"][0] == table["ref"][0]
    text = pd.report(table, 400, 1000)
    assert "vs ref" in text and "better" in text and "no difference" in text


def test_merges_are_checked_before_scoring():
    import pytest

    from mergesmith.errors import MergesmithError

    pd = _module()
    assert pd.parse_merge("ties:{density: 0.5, lambda: 0.7}") == (False, "ties", {"density": 0.5, "lambda": 0.7})
    assert pd.parse_merge("adapt:regmean") == (True, "regmean", {})
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        pd.parse_merge("nosuch:{}")
    with pytest.raises(ValueError, match="not YAML"):
        pd.parse_merge("ties:{lambda: [")
    with pytest.raises(MergesmithError, match="parameter 'lr'"):
        pd.parse_merge("adapt:wemoe:{lr: -1}")

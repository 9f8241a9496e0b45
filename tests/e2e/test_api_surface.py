"""What a user discovers without reading the source: ``dir(mergesmith)``, a readable ``repr`` of a merge result and
the ``methods`` listing of every kind of method."""

from __future__ import annotations

import pytest

import mergesmith
from tests.helpers import run_cli, write_yaml


def test_dir_lists_the_lazy_public_api():
    names = dir(mergesmith)
    for name in mergesmith.__all__:
        assert name in names
    assert {"merge", "plan_merge", "merge_state_dicts", "load_merged", "METHODS"} <= set(names)


def test_merge_result_repr_is_short(llama_family, tmp_path):
    cfg = {
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in llama_family.experts[:2]],
    }
    result = mergesmith.merge(write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out")
    text = repr(result)
    assert len(text) < 300, text
    assert text.startswith("MergeResult(") and str(tmp_path / "out") in text and "'linear'" in text
    assert f"tensors={result.report.tensors}" in text and f"shards={len(result.shards)}" in text


@pytest.fixture(scope="module")
def listing():
    result = run_cli("methods")
    assert result.exit_code == 0
    return result.output


def test_methods_lists_adapt_methods_with_parameters_and_data(listing):
    from mergesmith.adapt import ADAPT_METHODS

    section = listing.split("Data-driven methods", 1)[1].split("Continual methods", 1)[0]
    for name in ADAPT_METHODS:
        assert f"\n{name}: " in section, name
    regmean = section.split("\nregmean: ", 1)[1].split("\nregmean_plusplus: ", 1)[0]
    assert "reads: a small labeled validation split" in regmean
    assert "alpha (float in [0, 1], default 0.95)" in regmean
    assert "data (one of validation, unlabeled, default 'validation')" in regmean
    assert "reads: unlabeled test inputs" in section.split("\nadamerging_taskwise: ", 1)[1]


def test_methods_lists_continual_methods(listing):
    from mergesmith.continual import CONTINUAL_METHODS

    section = listing.split("Continual methods", 1)[1]
    for name in CONTINUAL_METHODS:
        assert f"\n{name}: " in section, name
    assert "lambda (float in (0, 10], default 0.3)" in section
    assert "(no parameters)" in section.split("\naveraging: ", 1)[1].split("\n", 2)[1]
    alone = run_cli("continual", "methods")
    assert alone.exit_code == 0 and alone.output.strip() == ("Continual methods" + section).strip()

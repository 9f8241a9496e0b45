"""Models that declare different architectures in config.json: refused unless --allow-crimes (mergekit's rule)."""

from __future__ import annotations

import json

import pytest

from mergesmith.architectures import Declared, declared_architecture, find_conflict
from mergesmith.errors import ConfigError
from tests.faults._faults import copy_model, expect_refusal, ties_config, with_first_expert
from tests.helpers import load_tensors, run_cli, write_yaml

pytestmark = pytest.mark.e2e


def _relabel(source, dest, **fields):
    """A copy of ``source`` whose config.json says ``fields`` (same tensors)."""
    copy_model(source, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(fields)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture
def as_mistral(llama_family, tmp_path):
    return _relabel(
        llama_family.experts[0], tmp_path / "mistral", architectures=["MistralForCausalLM"], model_type="mistral"
    )


def test_relabelled_model_is_refused_naming_both(llama_family, as_mistral, tmp_path):
    cfg = with_first_expert(llama_family, as_mistral)
    line = expect_refusal(
        tmp_path,
        cfg,
        "architectures differ",
        str(as_mistral),
        str(llama_family.base),
        "MistralForCausalLM",
        "LlamaForCausalLM",
        "--allow-crimes",
        inputs=[llama_family.base, as_mistral, llama_family.experts[1]],
    )
    assert "mistral" in line and "llama" in line


def test_plan_refuses_too(llama_family, as_mistral, tmp_path):
    path = write_yaml(tmp_path / "c.yaml", with_first_expert(llama_family, as_mistral))
    result = run_cli("plan", path)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: architectures differ") and "--allow-crimes" in lines[0]
    assert run_cli("plan", path, "--allow-crimes").exit_code == 0


def test_allow_crimes_merges(llama_family, as_mistral, tmp_path):
    path = write_yaml(tmp_path / "c.yaml", with_first_expert(llama_family, as_mistral))
    crime = run_cli("merge", path, tmp_path / "crime", "--quiet", "--allow-crimes")
    assert crime.exit_code == 0, crime.output
    lawful = run_cli(
        "merge", write_yaml(tmp_path / "d.yaml", ties_config(llama_family)), tmp_path / "lawful", "--quiet"
    )
    assert lawful.exit_code == 0, lawful.output
    crime_t, lawful_t = load_tensors(tmp_path / "crime"), load_tensors(tmp_path / "lawful")
    assert crime_t.keys() == lawful_t.keys() and all((crime_t[k] == lawful_t[k]).all() for k in crime_t)


def test_only_model_type_differs(llama_family, tmp_path):
    other = _relabel(llama_family.experts[0], tmp_path / "other", model_type="mistral")
    expect_refusal(tmp_path, with_first_expert(llama_family, other), "model_type mistral", "model_type llama")


def test_models_without_config_are_not_refused(llama_family, tmp_path):
    bare = copy_model(llama_family.experts[0], tmp_path / "bare")
    (bare / "config.json").unlink()
    result = run_cli(
        "merge", write_yaml(tmp_path / "c.yaml", with_first_expert(llama_family, bare)), tmp_path / "out", "--quiet"
    )
    assert result.exit_code == 0, result.output


def test_python_api(llama_family, as_mistral):
    from mergesmith import plan_merge

    cfg = with_first_expert(llama_family, as_mistral)
    with pytest.raises(ConfigError, match="allow_crimes=True"):
        plan_merge(cfg)
    plan = plan_merge(cfg, allow_crimes=True)
    for ckpt in plan.checkpoints:
        ckpt.close()


def test_declarations_compared_field_by_field():
    llama = Declared(("LlamaForCausalLM",), "llama")
    assert declared_architecture({}) is None and declared_architecture({"architectures": []}) is None
    assert declared_architecture({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}) == llama
    assert declared_architecture({"model_type": "llama"}) == Declared(None, "llama")
    assert find_conflict({"a": llama, "b": None, "c": Declared(None, "llama"), "d": llama}) is None
    conflict = find_conflict({"a": llama, "b": Declared(None, "llama"), "c": Declared(("MistralForCausalLM",), None)})
    assert (conflict.model, conflict.reference) == ("c", "a")

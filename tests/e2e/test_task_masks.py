"""Per-task outputs end to end: ``mergesmith merge`` with emr / tall_masks on tiny LLaMA checkpoints, then
``load_merged(out, task=...)`` gives each task's model, equal to the in-memory computation."""

from __future__ import annotations

import json

import pytest
import torch

from mergesmith.errors import MergesmithError
from tests.helpers import run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e


def _config(fam, method: str, **params) -> dict:
    cfg = {"merge_method": method, "base_model": str(fam.base), "models": [{"model": str(p)} for p in fam.experts]}
    if params:
        cfg["parameters"] = params
    return cfg


def _state(path) -> dict:
    from mergesmith.io import open_checkpoint

    with open_checkpoint(path) as ckpt:
        return {name: ckpt.read(name, None) for name in ckpt.tensors}


@pytest.mark.parametrize("method,params", [("emr", {}), ("tall_masks", {"tall_mask_lambda": 0.5})])
def test_per_task_models_load_and_match_memory(llama_family, tmp_path, method, params):
    import mergesmith

    fam = llama_family
    inputs_before = {str(p): tree_hashes(p) for p in [fam.base, *fam.experts]}
    out = tmp_path / "out"
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", _config(fam, method, **params)), out, "--quiet")
    assert result.exit_code == 0, result.output
    assert {str(p): tree_hashes(p) for p in [fam.base, *fam.experts]} == inputs_before

    # manifest: kind, tasks (expert directory names) and the sha256 of every side file
    manifest = json.loads((out / "mergesmith.json").read_text())
    tasks = [p.name for p in fam.experts]
    assert manifest["kind"] == method and manifest["details"]["tasks"] == tasks
    files = tree_hashes(out)
    assert {"task_vector.safetensors", "task_masks.safetensors", "tasks.json", "model.safetensors"} <= set(
        manifest["outputs"]
    )
    assert manifest["outputs"] == {n: h for n, h in files.items() if n != "mergesmith.json"}
    assert "load_merged(path, task=" in (out / "README.md").read_text()
    assert not [n for n in files if n.startswith(".")], "no staging leftovers"

    base = _state(fam.base)
    experts = [_state(p) for p in fam.experts]
    in_memory = mergesmith.merge_state_dicts_per_task(base, experts, method, tasks=tasks, **params)
    with pytest.raises(MergesmithError, match="pass task= one of: " + ", ".join(tasks)):
        mergesmith.load_merged(out)
    with pytest.raises(MergesmithError, match="no task 'nope'"):
        mergesmith.load_merged(out, task="nope")
    seen = []
    for task in tasks:
        model = mergesmith.load_merged(out, task=task)
        assert type(model).__name__ == "LlamaForCausalLM"
        loaded = model.state_dict()
        expected = in_memory[task]
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), task
        seen.append(expected["model.layers.0.mlp.up_proj.weight"])
        tokens = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.isfinite(model(tokens).logits).all()
    assert not torch.equal(seen[0], seen[1]), "each task gets its own model"


def test_emr_one_expert_reproduces_it(llama_family, tmp_path):
    """EMR with one task: tau_uni = tau, the mask keeps every non-zero entry, lambda = 1: the expert's own model
    (up to the rounding of base + (expert - base))."""
    import mergesmith

    fam = llama_family
    cfg = {"merge_method": "emr", "base_model": str(fam.base), "models": [{"model": str(fam.experts[0])}]}
    assert run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet").exit_code == 0
    info = json.loads((tmp_path / "out" / "tasks.json").read_text())
    assert info["rescalers"] == {fam.experts[0].name: 1.0}
    model = mergesmith.load_merged(tmp_path / "out", task=fam.experts[0].name)
    expert = _state(fam.experts[0])
    loaded = model.state_dict()
    for name, tensor in expert.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=1e-6)


def test_in_memory_plain_api_refuses_per_task_methods(llama_family):
    import mergesmith

    base = _state(llama_family.base)
    with pytest.raises(MergesmithError, match="merge_state_dicts_per_task"):
        mergesmith.merge_state_dicts(base, [base], "emr")


@pytest.mark.parametrize(
    "method,params",
    [
        ("wudi", {"steps": 20, "lr": 1e-4}),
        ("doge_ta", {"steps": 20}),
        ("consensus", {"k": 2, "lambda": 0.5, "aggregation": "ties"}),
    ],
)
def test_optimising_and_consensus_merges_equal_memory(llama_family, tmp_path, method, params):
    """The engine (threads, streaming order) and merge_state_dicts give the same bytes; the plan notes the 1-D
    fallback of the matrix methods once."""
    import mergesmith

    fam = llama_family
    out = tmp_path / "out"
    result = run_cli(
        "merge", write_yaml(tmp_path / "c.yaml", _config(fam, method, **params)), out, "--quiet", "--threads", "2"
    )
    assert result.exit_code == 0, result.output
    on_disk = _state(out)
    in_memory = mergesmith.merge_state_dicts(_state(fam.base), [_state(p) for p in fam.experts], method, **params)
    assert on_disk.keys() == in_memory.keys()
    assert all(torch.equal(on_disk[k], in_memory[k]) for k in on_disk)
    assert not torch.equal(
        on_disk["model.layers.0.mlp.up_proj.weight"], _state(fam.base)["model.layers.0.mlp.up_proj.weight"]
    )
    if method != "consensus":
        plan = run_cli("plan", write_yaml(tmp_path / "c.yaml", _config(fam, method, **params)))
        assert plan.output.count("are not 2-D matrices") == 1, plan.output


@pytest.mark.parametrize(
    "cfg_update,message",
    [
        ({"merge_method": "tall_masks", "parameters": {"aggregation": "mean"}}, "aggregation must be one of"),
        ({"merge_method": "emr", "parameters": {"rescale_by": "max"}}, "rescale_by must be one of"),
        ({"merge_method": "doge_ta", "parameters": {"subspace": 0}}, "subspace must be in"),
        ({"merge_method": "consensus", "parameters": {"k": -1}}, "k must be in"),
    ],
)
def test_bad_parameters_are_plan_errors(llama_family, tmp_path, cfg_update, message):
    cfg = {**_config(llama_family, "emr"), **cfg_update}
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["emr", "tall_masks"])
def test_a_task_applies_to_the_bare_encoder_of_a_checkpoint_saved_with_its_head(bert_family, tmp_path, method):
    """A BertForMaskedLM merge read back as a bare BertModel (what the bench's text featurizer loads): each task's
    tensors land on the encoder without the ``bert.`` prefix, equal to load_merged's full model."""
    from transformers import AutoModel

    import mergesmith
    from mergesmith.engine.side_outputs import apply_task, read_tasks

    out = tmp_path / "out"
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", _config(bert_family, method)), out, "--quiet")
    assert result.exit_code == 0, result.output
    task = read_tasks(out)["tasks"][1]
    encoder = apply_task(AutoModel.from_pretrained(out), out, task)
    full = mergesmith.load_merged(out, task=task)
    expected = {k.removeprefix("bert."): v for k, v in full.state_dict().items() if k.startswith("bert.")}
    got = encoder.state_dict()
    assert got and all(torch.equal(got[k], expected[k]) for k in got if k in expected)
    assert any(not torch.equal(got[k], AutoModel.from_pretrained(out).state_dict()[k]) for k in got)

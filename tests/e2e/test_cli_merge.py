"""``mergesmith merge`` end to end on tiny real checkpoints: outputs load and run, runs are reproducible."""

from __future__ import annotations

import json

import pytest
import torch

from mergesmith.io.manifest import read_manifest
from tests.helpers import load_tensors, run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e


def _ties_config(fam, **extra) -> dict:
    return {
        "merge_method": "ties",
        "base_model": str(fam.base),
        "parameters": {"weight": 1.0, "density": 0.4},
        "models": [{"model": str(p)} for p in fam.experts],
        **extra,
    }


def _forward(model_dir, arch: str) -> torch.Tensor:
    import transformers

    cls = {
        "llama": transformers.AutoModelForCausalLM,
        "gpt2": transformers.AutoModelForCausalLM,
        "bert": transformers.AutoModelForMaskedLM,
    }[arch]
    model = cls.from_pretrained(model_dir).eval()
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_merged_model_loads_and_runs(arch, request, tmp_path):
    fam = request.getfixturevalue(f"{arch}_family")
    inputs_before = {str(p): tree_hashes(p) for p in [fam.base, *fam.experts]}
    config = write_yaml(tmp_path / "c.yaml", _ties_config(fam))
    result = run_cli("merge", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    logits = _forward(tmp_path / "out", arch)
    assert torch.isfinite(logits).all()
    # the merge is not one of its inputs
    merged = load_tensors(tmp_path / "out")
    expert = load_tensors(fam.experts[0])
    assert any(not torch.equal(merged[k], expert[k]) for k in expert)
    assert {str(p): tree_hashes(p) for p in [fam.base, *fam.experts]} == inputs_before


def test_output_files_and_manifest(llama_family, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", _ties_config(llama_family, out_dtype="bfloat16"))
    out = tmp_path / "out"
    result = run_cli("merge", config, out, "--quiet", "--max-shard-size", "100KB")
    assert result.exit_code == 0, result.output
    files = tree_hashes(out)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    assert {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "mergesmith.json",
    } <= set(files)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_tensors(out).values())
    manifest = json.loads((out / "mergesmith.json").read_text())
    assert manifest["outputs"] == {n: h for n, h in files.items() if n != "mergesmith.json"}  # shards and side files
    assert manifest["seed"] == 0 and manifest["method"] == "ties" and manifest["kind"] == "weights"
    base = manifest["inputs"][str(llama_family.base)]
    assert base["path"] == str(llama_family.base)
    assert base["files"] == {
        n: h for n, h in tree_hashes(llama_family.base).items() if n.endswith(".safetensors") or n == "config.json"
    }
    assert read_manifest(out).model_dump(mode="json") == manifest
    card = (out / "README.md").read_text()
    assert "ties" in card and str(llama_family.experts[0]) in card


def test_passthrough_slices_change_depth(llama_family, tmp_path):
    e0, e1 = (str(p) for p in llama_family.experts[:2])
    config = write_yaml(
        tmp_path / "c.yaml",
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": e0, "layer_range": [0, 3]}]},
                {"sources": [{"model": e1, "layer_range": [1, 4]}]},
            ],
        },
    )
    assert run_cli("merge", config, tmp_path / "out", "--quiet").exit_code == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 6
    merged, src1 = load_tensors(tmp_path / "out"), load_tensors(llama_family.experts[1])
    assert torch.equal(merged["model.layers.5.mlp.up_proj.weight"], src1["model.layers.3.mlp.up_proj.weight"])
    assert torch.isfinite(_forward(tmp_path / "out", "llama")).all()


def test_bf16_inputs_compute_in_fp32_and_keep_dtype(llama_bf16_family, tmp_path):
    fam = llama_bf16_family
    config = write_yaml(
        tmp_path / "c.yaml",
        {
            "merge_method": "linear",
            "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in fam.experts],
        },
    )
    assert run_cli("merge", config, tmp_path / "out", "--quiet").exit_code == 0
    merged = load_tensors(tmp_path / "out")
    a, b = load_tensors(fam.experts[0]), load_tensors(fam.experts[1])
    name = "model.layers.0.mlp.up_proj.weight"
    expected = ((a[name].float() + b[name].float()) / 2).to(torch.bfloat16)
    assert merged[name].dtype == torch.bfloat16 and torch.equal(merged[name], expected)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_plan_reads_no_weights(llama_family, tmp_path, monkeypatch):
    from mergesmith.io.checkpoint import Checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("plan read a tensor")

    monkeypatch.setattr(Checkpoint, "read", refuse)
    config = write_yaml(tmp_path / "c.yaml", _ties_config(llama_family))
    result = run_cli("plan", config)
    assert result.exit_code == 0, result.output
    assert "model.layers.3.mlp.up_proj.weight" in result.output and "density=[0.4, 0.4, 0.4]" in result.output
    assert not (tmp_path / "out").exists()


def test_python_api_matches_cli(llama_family, tmp_path):
    import mergesmith

    cfg = _ties_config(llama_family)
    mergesmith.merge(cfg, tmp_path / "api")
    base = load_tensors(llama_family.base)
    experts = [load_tensors(p) for p in llama_family.experts]
    in_memory = mergesmith.merge_state_dicts(base, experts, "ties", density=0.4, weight=1.0)
    on_disk = load_tensors(tmp_path / "api")
    assert all(torch.equal(in_memory[k], on_disk[k]) for k in on_disk)

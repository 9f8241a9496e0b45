"""Bad input: a one-line error naming the problem, exit code 2, no output directory, inputs untouched."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e


def _ties(fam, **over) -> dict:
    cfg = {
        "merge_method": "ties",
        "base_model": str(fam.base),
        "parameters": {"weight": 1.0, "density": 0.5},
        "models": [{"model": str(p)} for p in fam.experts[:2]],
    }
    cfg.update(over)
    return cfg


def _expect_refusal(tmp_path, config, *needles, args=()):
    path = write_yaml(tmp_path / "c.yaml", config) if isinstance(config, dict) else config
    out = tmp_path / "out"
    result = run_cli("merge", path, out, "--quiet", *args)
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in message[0], message[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".out.mergesmith-tmp-*"))
    return message[0]


def test_missing_model_path(llama_family, tmp_path):
    cfg = _ties(llama_family, base_model=str(tmp_path / "nope"))
    _expect_refusal(tmp_path, cfg, "nope")


def test_directory_that_is_not_a_checkpoint(llama_family, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    cfg = _ties(llama_family)
    cfg["models"][0]["model"] = str(empty)
    _expect_refusal(tmp_path, cfg, str(empty))


def test_truncated_safetensors(llama_family, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(llama_family.experts[0], broken)
    shard = sorted(broken.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    cfg = _ties(llama_family)
    cfg["models"][0]["model"] = str(broken)
    _expect_refusal(tmp_path, cfg, shard.name)


def test_models_with_different_shapes(llama_family, gpt2_family, tmp_path):
    cfg = _ties(llama_family)
    cfg["models"][1]["model"] = str(gpt2_family.experts[0])
    _expect_refusal(tmp_path, cfg, "tensors")


def test_different_shapes_same_names(llama_family, tmp_path):
    other = tmp_path / "wide"
    other.mkdir()
    save_file({"w": torch.zeros(3, 4)}, str(other / "model.safetensors"))
    first = tmp_path / "narrow"
    first.mkdir()
    save_file({"w": torch.zeros(3, 5)}, str(first / "model.safetensors"))
    cfg = {"merge_method": "linear", "models": [{"model": str(first), "parameters": {"weight": 1}}, {"model": str(other), "parameters": {"weight": 1}}]}
    _expect_refusal(tmp_path, cfg, "'w'", "shape")


def test_base_model_missing_for_ties(llama_family, tmp_path):
    cfg = _ties(llama_family)
    del cfg["base_model"]
    _expect_refusal(tmp_path, cfg, "base_model")


def test_unknown_method(llama_family, tmp_path):
    _expect_refusal(tmp_path, _ties(llama_family, merge_method="tiez"), "tiez", "known methods")


def test_typo_in_parameter(llama_family, tmp_path):
    cfg = _ties(llama_family)
    cfg["models"][1]["parameters"] = {"desnity": 0.5}
    _expect_refusal(tmp_path, cfg, "models[1].parameters.desnity", "allowed:", "density")


def test_unknown_top_level_key(llama_family, tmp_path):
    _expect_refusal(tmp_path, _ties(llama_family, merge_methd="ties"), "merge_methd", "allowed keys")


@pytest.mark.parametrize("density", [0, 1.5, -0.1])
def test_density_out_of_range(llama_family, tmp_path, density):
    cfg = _ties(llama_family)
    cfg["parameters"]["density"] = density
    _expect_refusal(tmp_path, cfg, "density must be in (0, 1]")


def test_zero_models(llama_family, tmp_path):
    _expect_refusal(tmp_path, _ties(llama_family, models=[]), "models")


def test_output_exists(llama_family, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    path = write_yaml(tmp_path / "c.yaml", _ties(llama_family))
    result = run_cli("merge", path, out, "--quiet")
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    assert run_cli("merge", path, out, "--quiet", "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_yaml_python_tags_refused(llama_family, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("merge_method: !!python/object/apply:os.system ['touch pwned']\nmodels: []\n")
    _expect_refusal(tmp_path, path, "not valid YAML")
    assert not (tmp_path / "pwned").exists()


def test_nan_input_warns_then_strict_refuses(llama_family, tmp_path):
    poisoned = tmp_path / "poisoned"
    shutil.copytree(llama_family.experts[0], poisoned)
    from tests.helpers import load_tensors

    tensors = load_tensors(poisoned)
    for shard in poisoned.glob("*.safetensors"):
        shard.unlink()
    (poisoned / "model.safetensors.index.json").unlink()
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, str(poisoned / "model.safetensors"))
    cfg = _ties(llama_family)
    cfg["models"][0]["model"] = str(poisoned)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    before = tree_hashes(poisoned)
    warned = run_cli("merge", path, tmp_path / "warned", "--quiet")
    assert warned.exit_code == 0 and "model.layers.0.mlp.up_proj.weight" in warned.output and "warning" in warned.output
    _expect_refusal(tmp_path, path, "NaN", "model.layers.0.mlp.up_proj.weight", args=("--strict",))
    assert tree_hashes(poisoned) == before


def test_slice_out_of_range(llama_family, tmp_path):
    cfg = {"merge_method": "passthrough", "slices": [{"sources": [{"model": str(llama_family.experts[0]), "layer_range": [0, 9]}]}]}
    _expect_refusal(tmp_path, cfg, "layer_range", "4 layers")


def test_tokenizer_union_refused(llama_family, tmp_path):
    _expect_refusal(tmp_path, _ties(llama_family, tokenizer_source="union"), "union")


def test_bad_shard_size(llama_family, tmp_path):
    path = write_yaml(tmp_path / "c.yaml", _ties(llama_family))
    result = run_cli("merge", path, tmp_path / "out", "--max-shard-size", "lots")
    assert result.exit_code == 2 and "lots" in result.output and not (tmp_path / "out").exists()


def test_header_whose_offsets_lie(llama_family, tmp_path):
    import json
    import struct

    liar = tmp_path / "liar"
    shutil.copytree(llama_family.experts[0], liar)
    shard = sorted(liar.glob("*.safetensors"))[0]
    raw = shard.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 10_000_000]
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    cfg = _ties(llama_family)
    cfg["models"][0]["model"] = str(liar)
    _expect_refusal(tmp_path, cfg, shard.name)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_bin_that_needs_arbitrary_pickle(llama_family, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": _Payload(marker)}, evil / "pytorch_model.bin")
    cfg = _ties(llama_family)
    cfg["models"][0]["model"] = str(evil)
    _expect_refusal(tmp_path, cfg, "pytorch_model.bin", "safetensors")
    assert not marker.exists()


def test_bin_checkpoints_merge_like_safetensors(llama_family, tmp_path):
    from tests.helpers import load_tensors

    as_bin = tmp_path / "as_bin"
    as_bin.mkdir()
    shutil.copy(llama_family.experts[0] / "config.json", as_bin / "config.json")
    torch.save(load_tensors(llama_family.experts[0]), as_bin / "pytorch_model.bin")
    cfgs = {}
    for label, first in {"st": llama_family.experts[0], "bin": as_bin}.items():
        cfg = _ties(llama_family)
        cfg["models"][0]["model"] = str(first)
        assert run_cli("merge", write_yaml(tmp_path / f"{label}.yaml", cfg), tmp_path / label, "--quiet").exit_code == 0
        cfgs[label] = load_tensors(tmp_path / label)
    assert all(torch.equal(cfgs["st"][k], cfgs["bin"][k]) for k in cfgs["st"])


def test_integer_buffers_missing_from_some_models_are_carried_over(tmp_path):
    from tests.helpers import load_tensors

    base, expert = tmp_path / "base", tmp_path / "expert"
    base.mkdir()
    expert.mkdir()
    save_file({"w": torch.zeros(2, 3), "position_ids": torch.arange(4).unsqueeze(0)}, str(base / "model.safetensors"))
    save_file({"w": torch.ones(2, 3)}, str(expert / "model.safetensors"))
    cfg = {"merge_method": "task_arithmetic", "base_model": str(base), "models": [{"model": str(expert), "parameters": {"weight": 0.5}}]}
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    out = load_tensors(tmp_path / "out")
    assert torch.equal(out["position_ids"], torch.arange(4).unsqueeze(0)) and torch.equal(out["w"], torch.full((2, 3), 0.5))

"""MergeLock: function preservation on BERT, GPT-2 and LLaMA (rotary, grouped-query attention), merge collapse,
byte-reproducibility, the unknown-architecture error and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mergesmith.errors import MergesmithError
from mergesmith.protect import VerifyReport, detect_layout, protect_checkpoint, verify_protection
from mergesmith.protect.report import format_verify
from mergesmith.protect.transforms import dense_invertible, rotary_invertible
from mergesmith.protect.verify import MAX_COLLAPSED_AGREEMENT
from tests.helpers import load_tensors, run_cli, tree_hashes


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Per architecture: a base and two fine-tunes close to it (task vectors ~5% of the weights)."""
    from mergesmith.tiny_models import build_tiny_family

    root = tmp_path_factory.mktemp("protect")
    fams = {arch: build_tiny_family(root / arch, arch, 2, noise=0.001) for arch in ("bert", "gpt2", "llama")}
    # A LLaMA with q/k/v biases (attention_bias=True, as Qwen2 has) and 4 query heads per key/value head.
    import transformers

    torch.manual_seed(5)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=128,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    model.save_pretrained(root / "llama_bias")
    fams["llama_bias"] = root / "llama_bias"
    return fams


def _source(families, arch):
    fam = families[arch]
    return (fam, fam.experts[0], fam.experts[1]) if arch != "llama_bias" else (None, fam, fam)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "llama_bias"])
def test_outputs_preserved_and_merge_collapses(families, arch, tmp_path):
    _, model, other = _source(families, arch)
    result = protect_checkpoint(model, tmp_path / "locked", seed=1)
    before, after = load_tensors(model), load_tensors(tmp_path / "locked")
    assert set(before) == set(after)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    block = result.layout.blocks[0]
    assert set(block.names) <= set(changed)  # q, k, v, o (and q/k/v biases) all transformed
    assert len(changed) == len(result.layout.blocks) * len(block.names)  # nothing else touched
    rel = (after[block.q] - before[block.q]).norm() / before[block.q].norm()
    assert rel > 0.5  # the weights really moved

    report = verify_protection(model, tmp_path / "locked", merge_with=other)
    assert report.max_abs_diff <= 1e-4, report
    assert report.circuit_preservation < 1e-6
    if arch != "llama_bias":  # merging with another fine-tune: the attention circuits land far from the plain merge
        assert report.plain_merge_circuit_divergence < 0.2
        assert report.protected_merge_circuit_divergence > 0.5
        # (the outputs of a tiny random model barely depend on its nearly uniform attention, so whether they collapse
        # differs by architecture; the bench measures the accuracy collapse on the real MiniLM experts)
    assert report.collapsed == (report.protected_merge_agreement < MAX_COLLAPSED_AGREEMENT)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_collapse_verdict_comes_from_the_outputs(families, arch, tmp_path):
    fam = families[arch]
    protect_checkpoint(fam.experts[0], tmp_path / "locked", seed=1)
    report = verify_protection(fam.experts[0], tmp_path / "locked", merge_with=fam.experts[1])
    # the circuits move far on both; the outputs tell them apart: GPT-2's protected merge keeps nearly every top-1
    # output of the unprotected merge, LLaMA's (rotary attention) loses most of them
    assert report.protected_merge_circuit_divergence > 0.5
    assert report.collapsed == (arch == "llama")
    assert report.collapsed == (report.protected_merge_agreement < MAX_COLLAPSED_AGREEMENT)
    verdict = format_verify(report).splitlines()[-1]
    assert verdict.startswith(f"merge collapses: {'yes' if report.collapsed else 'no'} ")
    assert f"{report.protected_merge_agreement:.1%}" in verdict


def test_collapse_verdict_ignores_circuits_when_outputs_agree():
    numbers = dict(
        max_abs_diff=0.0,
        output_scale=1.0,
        merge_with="other",
        plain_merge_divergence=0.1,
        protected_merge_divergence=0.01,
        plain_merge_agreement=0.9,
        circuit_preservation=0.0,
        plain_merge_circuit_divergence=0.1,
        protected_merge_circuit_divergence=0.9,
    )
    assert not VerifyReport(protected_merge_agreement=1.0, **numbers).collapsed
    assert VerifyReport(protected_merge_agreement=0.2, **numbers).collapsed


def test_layouts_detected(families):
    from mergesmith.io import open_checkpoint

    with open_checkpoint(families["llama"].base) as ckpt:
        layout = detect_layout(ckpt)
    assert (layout.family, layout.num_heads, layout.num_kv_heads, layout.head_dim, layout.rotary) == (
        "llama",
        4,
        2,
        16,
        True,
    )
    assert [b.prefix for b in layout.blocks] == ["model.layers.0.", "model.layers.1."]
    with open_checkpoint(families["gpt2"].base) as ckpt:
        layout = detect_layout(ckpt)
    assert layout.fused and layout.blocks[0].q.endswith("attn.c_attn.weight") and layout.blocks[0].q_bias


def test_rotary_transform_commutes_with_hf_rotary_embedding():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    d, gen = 16, torch.Generator().manual_seed(0)
    a, a_inv = rotary_invertible(d, 3.0, gen)
    assert torch.allclose(a @ a_inv, torch.eye(d, dtype=torch.float64), atol=1e-12)
    q = torch.randn(1, 1, 5, d, dtype=torch.float64)
    freqs = torch.arange(5, dtype=torch.float64)[:, None] * (
        1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    )
    emb = torch.cat([freqs, freqs], -1)[None]
    cos, sin = emb.cos(), emb.sin()
    rotate = lambda x: apply_rotary_pos_emb(x, x, cos, sin)[0]  # noqa: E731
    assert torch.allclose(rotate(q @ a), rotate(q) @ a, atol=1e-12)  # A commutes with every position's rotation
    dense, _ = dense_invertible(d, 3.0, gen)
    assert not torch.allclose(rotate(q @ dense), rotate(q) @ dense, atol=1e-3)  # a generic A would not


def test_same_seed_same_bytes_and_inputs_untouched(families, tmp_path):
    model = families["gpt2"].experts[0]
    before = tree_hashes(model)
    protect_checkpoint(model, tmp_path / "a", seed=7)
    protect_checkpoint(model, tmp_path / "b", seed=7)
    protect_checkpoint(model, tmp_path / "c", seed=8)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    assert tree_hashes(tmp_path / "a")["model.safetensors"] != tree_hashes(tmp_path / "c")["model.safetensors"]
    assert tree_hashes(model) == before
    manifest = json.loads((tmp_path / "a" / "mergesmith.json").read_text())
    assert manifest["method"] == "mergelock" and manifest["seed"] == 7 and manifest["details"]["architecture"] == "gpt2"
    assert manifest["kind"] == "protected" and manifest["inputs"]["model"]["path"] == str(model)
    assert manifest["outputs"] == {n: h for n, h in tree_hashes(tmp_path / "a").items() if n != "mergesmith.json"}
    assert "MergeLock" in (tmp_path / "a" / "README.md").read_text()


def test_unknown_architecture_is_one_line_error(tmp_path):
    model = tmp_path / "mystery"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"model_type": "mystery", "num_attention_heads": 2, "hidden_size": 8})
    )
    save_file(
        {"blocks.0.mixer.in_proj.weight": torch.zeros(8, 8), "blocks.0.mixer.out_proj.weight": torch.zeros(8, 8)},
        model / "model.safetensors",
    )
    with pytest.raises(MergesmithError, match="cannot identify the attention projections"):
        protect_checkpoint(model, tmp_path / "out")
    result = run_cli("protect", model, tmp_path / "out", "-q")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "attention.self.{query,key,value}" in lines[0] and "self_attn.{q,k,v,o}_proj" in lines[0]
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_bad_strength_and_existing_output(families, tmp_path):
    model = families["bert"].experts[0]
    assert run_cli("protect", model, tmp_path / "o", "--strength", "0.5", "-q").exit_code == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    result = run_cli("protect", model, tmp_path / "full", "-q")
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_cli_end_to_end(families, tmp_path):
    fam = families["bert"]
    result = run_cli(
        "protect", fam.experts[0], tmp_path / "locked", "--seed", "3", "--verify", "--merge-with", fam.experts[1], "-q"
    )
    assert result.exit_code == 0, result.output
    assert "protected 2 attention layers (bert, 4 heads" in result.output
    assert "function preserved: OK" in result.output
    verdict = next(line for line in result.output.splitlines() if line.startswith("merge collapses: "))
    kept = float(verdict.split(" keeps ")[1].split("%")[0]) / 100
    assert verdict.startswith("merge collapses: yes" if kept < MAX_COLLAPSED_AGREEMENT else "merge collapses: no")
    assert (tmp_path / "locked" / "config.json").is_file() and (tmp_path / "locked" / "tokenizer.json").is_file()

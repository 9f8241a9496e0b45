"""``mergesmith continual add`` end to end on tiny transformers checkpoints: output loads, equals the in-memory
step byte for byte, is deterministic, records its state; bad input is refused with one line and no output."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from mergesmith.continual import continual_add_state_dicts
from mergesmith.continual.state import read_state
from tests.faults._faults import leftovers
from tests.helpers import load_tensors, run_cli, tree_hashes


def _add(prev, new, out, *args):
    result = run_cli("continual", "add", prev, new, out, "--quiet", *args)
    assert result.exit_code == 0, result.output
    return result.output


def _sequence(fam, root: Path, method: str, *params: str) -> list[Path]:
    outs = [root / f"{method}-2", root / f"{method}-3"]
    extra = [a for p in params for a in ("--param", p)]
    _add(fam.experts[0], fam.experts[1], outs[0], "--base", fam.base, "--method", method, *extra)
    _add(outs[0], fam.experts[2], outs[1])  # the method, parameters and base come from outs[0]'s manifest
    return outs


@pytest.mark.parametrize(
    "method,params",
    [
        ("opcm", ()),
        ("dop", ("num_steps=4",)),
        ("ties", ("density=0.5",)),
        ("averaging", ()),
        ("task_arithmetic", ("lambda=0.5",)),
    ],
)
def test_sequence_matches_the_in_memory_steps(llama_family, tmp_path, method, params):
    outs = _sequence(llama_family, tmp_path, method, *params)
    state = read_state(outs[-1])
    assert state.method == method and state.count == 3
    assert [e.name for e in state.experts] == ["expert_0", "expert_1", "expert_2"]
    assert state.base.path == str(llama_family.base.resolve())
    kwargs = {k: float(v) if "." in v else int(v) for k, v in (p.split("=") for p in params)}
    base, *experts = (load_tensors(p) for p in (llama_family.base, *llama_family.experts))
    merged, mem_state = continual_add_state_dicts(base, experts[0], experts[1], method, **kwargs)
    merged, mem_state = continual_add_state_dicts(base, merged, experts[2], method, state=mem_state)
    on_disk = load_tensors(outs[-1])
    assert set(on_disk) == set(merged)
    for name, tensor in merged.items():
        assert torch.equal(on_disk[name], tensor), name
    assert mem_state.scale == pytest.approx(state.scale, rel=1e-12)


def test_output_loads_with_transformers_and_reruns_byte_identical(llama_family, tmp_path):
    from transformers import AutoModelForCausalLM

    first = _sequence(llama_family, tmp_path / "a", "opcm")[-1]
    again = _sequence(llama_family, tmp_path / "b", "opcm")[-1]
    model = AutoModelForCausalLM.from_pretrained(first)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()
    hashes_a, hashes_b = tree_hashes(first), tree_hashes(again)
    for name in ("model.safetensors", "config.json"):
        assert hashes_a[name] == hashes_b[name]
    manifest = json.loads((first / "mergesmith.json").read_text())
    assert (
        manifest["method"] == "continual/opcm" and manifest["kind"] == "continual" and manifest["details"]["step"] == 3
    )
    assert manifest["details"]["state"] == read_state(first).model_dump(mode="json")
    assert set(manifest["inputs"]) == {"base", "previous", "new"}
    assert manifest["outputs"] == {n: h for n, h in hashes_a.items() if n != "mergesmith.json"}
    card = (first / "README.md").read_text()
    assert "Continual sequence" in card and "expert_2" in card


def test_bert_and_sharded_outputs(bert_family, tmp_path):
    out = tmp_path / "out"
    _add(bert_family.experts[0], bert_family.experts[1], out, "--base", bert_family.base, "--max-shard-size", "100KB")
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("*.safetensors"))) > 1
    assert read_state(out).count == 2


def _sha(path: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def _refused(tmp_path, *args, needles=(), inputs=()):
    out = tmp_path / "out"
    before = {str(p): _sha(p) for p in inputs}
    result = run_cli("continual", "add", *args[:2], out, "--quiet", *args[2:])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and leftovers(tmp_path) == []
    assert {str(p): _sha(p) for p in inputs} == before
    return lines[0]


def test_a_first_expert_needs_the_base(llama_family, tmp_path):
    _refused(tmp_path, llama_family.experts[0], llama_family.experts[1], needles=("pass --base",))


def test_an_expert_of_another_base_is_refused(llama_family, tmp_path):
    from mergesmith.tiny_models import build_tiny_family

    other = build_tiny_family(tmp_path / "other", "llama", 1, layers=4, seed=7)
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", llama_family.base)
    _refused(
        tmp_path,
        prev,
        other.experts[0],
        needles=("not a fine-tune of base", "expert_0"),
        inputs=[prev, other.experts[0], llama_family.base],
    )
    # the same base given under another path is fine; a different one is caught by its fingerprint
    _refused(tmp_path, prev, llama_family.experts[2], "--base", other.base, needles=("fingerprint", "--base"))


def test_a_continual_merge_over_another_base_is_refused_as_an_expert(llama_family, tmp_path):
    from mergesmith.tiny_models import build_tiny_family

    other = build_tiny_family(tmp_path / "other", "llama", 2, layers=4, seed=7)
    foreign = tmp_path / "foreign"
    _add(other.experts[0], other.experts[1], foreign, "--base", other.base)
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", llama_family.base)
    _refused(tmp_path, prev, foreign, needles=("continual merge over another base",))


def test_another_architecture_is_refused(llama_family, gpt2_family, tmp_path):
    _refused(
        tmp_path,
        llama_family.experts[0],
        gpt2_family.experts[0],
        "--base",
        llama_family.base,
        needles=("architectures differ",),
    )


def test_an_expert_already_in_the_merge_is_refused(llama_family, tmp_path):
    fam = llama_family
    _refused(tmp_path, fam.experts[0], fam.experts[0], "--base", fam.base, needles=("the model it would be added to",))
    first_copy = tmp_path / "first-copy"
    shutil.copytree(fam.experts[0], first_copy)
    _refused(
        tmp_path, fam.experts[0], first_copy, "--base", fam.base, needles=(str(first_copy), "already in this merge")
    )
    prev = tmp_path / "prev"
    _add(fam.experts[0], fam.experts[1], prev, "--base", fam.base)
    second_copy = tmp_path / "second-copy"
    shutil.copytree(fam.experts[1], second_copy)
    for again in (fam.experts[1], second_copy, fam.experts[0]):
        _refused(tmp_path, prev, again, needles=("already in this merge", "add each expert once"), inputs=[prev, again])
    _add(prev, fam.experts[2], tmp_path / "next")  # a new expert is still accepted


def test_a_changed_method_or_parameter_is_refused(llama_family, tmp_path):
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", llama_family.base)
    _refused(tmp_path, prev, llama_family.experts[2], "--method", "ties", needles=("built with 'opcm'",))
    _refused(tmp_path, prev, llama_family.experts[2], "--param", "alpha=0.9", needles=("alpha=0.9 differs",))
    _refused(
        tmp_path,
        llama_family.experts[0],
        llama_family.experts[1],
        "--base",
        llama_family.base,
        "--param",
        "nope=1",
        needles=("nope",),
    )


def test_a_damaged_state_is_refused(llama_family, tmp_path):
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", llama_family.base)
    manifest = json.loads((prev / "mergesmith.json").read_text())
    manifest["details"]["state"]["experts"] = "two"
    (prev / "mergesmith.json").write_text(json.dumps(manifest))
    _refused(tmp_path, prev, llama_family.experts[2], needles=("mergesmith.json", "not a valid continual-merge state"))
    (prev / "mergesmith.json").write_text("{not json")
    _refused(tmp_path, prev, llama_family.experts[2], needles=("mergesmith.json", "not valid JSON"))


@pytest.mark.parametrize("field,value", [("scale", "NaN"), ("scale", "Infinity"), ("task_norm_sum", "NaN")])
def test_a_non_finite_scalar_in_the_state_is_refused(llama_family, tmp_path, field, value):
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", llama_family.base)
    text = (prev / "mergesmith.json").read_text()
    manifest = json.loads(text)
    manifest["details"]["state"][field] = 12345.5
    (prev / "mergesmith.json").write_text(json.dumps(manifest).replace("12345.5", value))
    _refused(tmp_path, prev, llama_family.experts[2], needles=("mergesmith.json", "finite"))


def test_a_state_of_an_earlier_version_is_read(llama_family, tmp_path):
    """Outputs written before the state moved into the manifest kept it in continual.json beside an older manifest."""
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", llama_family.base, "--method", "ties")
    manifest = json.loads((prev / "mergesmith.json").read_text())
    (prev / "continual.json").write_text(json.dumps(manifest["details"]["state"]))
    old = {
        "mergesmith_version": "0.1.0",
        "method": manifest["method"],
        "paper": manifest["paper"],
        "params": manifest["config"],
        "step": 2,
        "inputs": manifest["inputs"],
        "outputs": {},
    }
    (prev / "mergesmith.json").write_text(json.dumps(old))
    assert read_state(prev).method == "ties"
    out = tmp_path / "next"
    _add(prev, llama_family.experts[2], out)
    assert read_state(out).count == 3 and not (out / "continual.json").exists()


def test_a_missing_recorded_base_asks_for_base(llama_family, tmp_path):
    base = tmp_path / "base-copy"
    shutil.copytree(llama_family.base, base)
    prev = tmp_path / "prev"
    _add(llama_family.experts[0], llama_family.experts[1], prev, "--base", base)
    shutil.rmtree(base)
    line = _refused(tmp_path, prev, llama_family.experts[2], needles=(str(base),))
    _add(prev, llama_family.experts[2], tmp_path / "resumed", "--base", llama_family.base)  # same weights: accepted
    assert line


def test_existing_output_needs_force(llama_family, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(
        "continual",
        "add",
        llama_family.experts[0],
        llama_family.experts[1],
        out,
        "--base",
        llama_family.base,
        "--quiet",
    )
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_tensors_outside_the_matrix_rule_are_noted_once(llama_family, tmp_path):
    out = _add(llama_family.experts[0], llama_family.experts[1], tmp_path / "o", "--base", llama_family.base)
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "not linear weights" in notes[0] and "without projection" in notes[0]
    out = _add(
        llama_family.experts[0],
        llama_family.experts[1],
        tmp_path / "a",
        "--base",
        llama_family.base,
        "--method",
        "averaging",
    )
    assert "note:" not in out

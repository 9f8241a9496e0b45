"""Inputs that used to give a wrong output with exit code 0: a continual state with a non-finite scale, one model
listed twice under two spellings, a shard rewritten while it is read, NaN reaching ``inspect``'s SVD."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.faults._faults import copy_model, expect_cli_refusal, expect_refusal, first_shard, ties_config
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e


# ---- continual state ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def continual_merge(llama_family, tmp_path_factory):
    out = tmp_path_factory.mktemp("continual") / "merge2"
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
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.update(scale=float("nan")), "scale: Input should be a finite number"),
        (lambda s: s.update(scale=0.0), "scale"),
        (lambda s: s.update(scale=-1.0), "scale"),
        (lambda s: s.update(task_norm_sum=-3.0), "task_norm_sum"),
        (lambda s: s.update(experts=s["experts"][:1]), "experts"),
        (lambda s: s.update(scale="1.0"), "scale"),
        (lambda s: s["base"].update(fingerprint="../../etc"), "fingerprint"),
    ],
)
def test_a_continual_state_with_bad_numbers_is_refused(llama_family, tmp_path, continual_merge, edit, needle):
    previous = copy_model(continual_merge, tmp_path / "prev")
    manifest = json.loads((previous / "mergesmith.json").read_text())
    edit(manifest["details"]["state"])
    (previous / "mergesmith.json").write_text(json.dumps(manifest))  # json writes NaN as NaN, as Python would
    out = tmp_path / "out"
    expect_cli_refusal(
        ("continual", "add", previous, llama_family.experts[2], out, "--quiet"),
        "mergesmith.json",
        needle,
        out=out,
        inputs=[previous],
    )


def test_a_continual_scale_overflowing_to_infinity_is_refused(llama_family, tmp_path, continual_merge):
    previous = copy_model(continual_merge, tmp_path / "prev")
    text = (previous / "mergesmith.json").read_text()
    state = json.loads(text)["details"]["state"]
    text = text.replace(f'"scale": {json.dumps(state["scale"])}', '"scale": 1e999')
    (previous / "mergesmith.json").write_text(text)
    out = tmp_path / "out"
    expect_cli_refusal(
        ("continual", "add", previous, llama_family.experts[2], out, "--quiet"),
        "mergesmith.json",
        "float64 range",
        out=out,
    )


def test_nan_in_a_continual_expert_is_refused_not_recorded_as_scale_one(llama_family, tmp_path):
    expert = copy_model(llama_family.experts[1], tmp_path / "nan_expert")
    shard = first_shard(expert)
    tensors = load_file(shard)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.dim() == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    out = tmp_path / "out"
    expect_cli_refusal(
        ("continual", "add", llama_family.experts[0], expert, out, "--base", llama_family.base, "--quiet"),
        "NaN",
        out=out,
        inputs=[expert],
    )


# ---- one model, two spellings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["trailing_slash", "dot_slash", "symlink", "relative"])
def test_the_same_model_under_two_spellings_is_listed_twice(llama_family, tmp_path, monkeypatch, spelling):
    expert = llama_family.experts[0]
    if spelling == "trailing_slash":
        other = str(expert) + "/"
    elif spelling == "dot_slash":
        monkeypatch.chdir(expert.parent)
        other = f"./{expert.name}"
    elif spelling == "symlink":
        link = tmp_path / "alias"
        link.symlink_to(expert)
        other = str(link)
    else:
        monkeypatch.chdir(expert.parent)
        other = expert.name
    cfg = ties_config(llama_family)
    cfg["models"] = [{"model": str(expert)}, {"model": other}]
    expect_refusal(tmp_path, cfg, "models[1]", "listed twice", "the same model as")


def test_hub_ids_differing_in_case_or_default_revision_are_one_model(tmp_path):
    from mergesmith.config import load_config
    from mergesmith.errors import ConfigError

    cfg = {
        "merge_method": "ties",
        "base_model": "org/base",
        "parameters": {"weight": 1.0, "density": 0.5},
        "models": [{"model": "Org/Expert"}, {"model": "org/expert@main"}],
    }
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(cfg)
    cfg["models"][1]["model"] = "org/expert@v2"
    load_config(cfg)  # another revision is another model


# ---- an input rewritten during the merge ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["in_place", "replaced", "removed"])
def test_a_shard_rewritten_during_the_merge_is_detected(llama_family, tmp_path, monkeypatch, how):
    from mergesmith import cli

    expert = copy_model(llama_family.experts[0], tmp_path / "changing")
    shard = first_shard(expert)
    original = shard.read_bytes()
    update = cli._ProgressBar.update
    done = []

    def rewrite_once(self, job):
        update(self, job)
        if done:
            return
        done.append(job)
        if how == "in_place":  # same size, other bytes, as an editor or a second download would leave it
            with open(shard, "r+b") as handle:
                handle.seek(len(original) - 4)
                handle.write(b"\x01\x02\x03\x04")
        elif how == "replaced":
            fresh = shard.with_suffix(".new")
            fresh.write_bytes(original)
            os.replace(fresh, shard)
        else:
            shard.unlink()

    monkeypatch.setattr(cli._ProgressBar, "update", rewrite_once)
    cfg = ties_config(llama_family)
    cfg["models"][0]["model"] = str(expert)
    line = expect_refusal(tmp_path, cfg, shard.name, "while mergesmith was reading it")
    assert done and {"in_place": "modified", "replaced": "replaced", "removed": "removed"}[how] in line


# ---- NaN reaching inspect's SVD ------------------------------------------------------------------------------------


@pytest.fixture
def nan_expert(llama_family, tmp_path):
    expert = copy_model(llama_family.experts[1], tmp_path / "poisoned")
    shard = first_shard(expert)
    tensors = load_file(shard)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.dim() == 2 and min(t.shape) >= 2)
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    return expert, name


def test_inspect_warns_about_nan_and_leaves_the_tensor_out(llama_family, tmp_path, nan_expert):
    expert, name = nan_expert
    result = run_cli("inspect", llama_family.base, llama_family.experts[0], expert, "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and name in warnings[0] and "--strict" in warnings[0]
    assert "nan" not in result.output.replace(warnings[0], "").lower()


def test_inspect_strict_refuses_nan(llama_family, tmp_path, nan_expert):
    expert, name = nan_expert
    out = tmp_path / "report"
    expect_cli_refusal(
        ("inspect", llama_family.base, llama_family.experts[0], expert, "--quiet", "--strict", "--out", out),
        name,
        "NaN/Inf",
        out=out,
        inputs=[expert],
    )


def test_inspect_api_lists_the_non_finite_tensors(llama_family, nan_expert):
    from mergesmith.analysis import inspect_task_vectors

    expert, name = nan_expert
    diag = inspect_task_vectors(llama_family.base, [llama_family.experts[0], expert])
    assert [line.split(": ")[1].split(" (")[0] for line in diag.nonfinite] == [name]
    assert name not in {t.name for t in diag.tensors}
    assert all(torch.isfinite(torch.tensor(t.gram)).all() for t in diag.tensors)

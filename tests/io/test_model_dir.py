"""``io.model_dir.ModelDirectory``: staged until commit, every file hashed in the manifest, a card for every kind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergesmith.io import open_checkpoint
from mergesmith.io.manifest import read_manifest
from mergesmith.io.model_card import CardText
from mergesmith.io.model_dir import ModelDirectory, checkpoint_source


def _model(root: Path) -> Path:
    root.mkdir()
    save_file({"a.weight": torch.ones(4, 4), "b.weight": torch.zeros(8)}, root / "model.safetensors")
    (root / "config.json").write_text(
        json.dumps({"model_type": "toy", "num_hidden_layers": 2, "torch_dtype": "float32"})
    )
    (root / "tokenizer.json").write_text("{}")
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(source: Path, out: Path, *, fail: bool = False):
    with (
        open_checkpoint(source) as ckpt,
        ModelDirectory(out, {"model": checkpoint_source(ckpt, "given/path")}) as target,
    ):
        writer = target.open_shards([(n, ckpt.tensors[n].dtype, ckpt.tensors[n].shape) for n in ckpt.tensors], "5GB")
        for name in ckpt.tensors:
            writer.write(name, ckpt.read(name) * 2)
        target.finish_shards()
        target.write_config(ckpt.config_path, dtype="float32")
        target.copy_side_files(ckpt.root)
        (target.path / "extra.json").write_text("{}")
        assert not out.exists()  # nothing complete-looking before the commit
        if fail:
            raise RuntimeError("boom")
        return target.commit(
            kind="weights",
            method="double",
            seed=1,
            config={"factor": 2},
            card=CardText(title="Doubled", sections=("## Note\n\ntimes two",)),
        )


def test_commit_writes_card_and_manifest_with_every_hash(tmp_path):
    source = _model(tmp_path / "in")
    out = tmp_path / "out"
    manifest = _write(source, out)
    files = {p.name for p in out.iterdir()}
    assert files == {"model.safetensors", "config.json", "tokenizer.json", "extra.json", "README.md", "mergesmith.json"}
    assert manifest.outputs == {name: _sha(out / name) for name in files - {"mergesmith.json"}}
    assert manifest.inputs["model"].path == "given/path"
    assert manifest.inputs["model"].files == {n: _sha(source / n) for n in ("model.safetensors", "config.json")}
    assert read_manifest(out) == manifest
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "# Doubled" in card and "**double**" in card and "times two" in card
    assert "`given/path`" in card and "factor: 2" in card


def test_a_failure_leaves_nothing(tmp_path):
    source = _model(tmp_path / "in")
    with pytest.raises(RuntimeError, match="boom"):
        _write(source, tmp_path / "out", fail=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_commit_needs_the_shards_finished(tmp_path):
    source = _model(tmp_path / "in")
    with open_checkpoint(source) as ckpt, pytest.raises(ValueError, match="finish_shards"):
        with ModelDirectory(tmp_path / "out", {"model": checkpoint_source(ckpt)}) as target:
            target.open_shards([("a.weight", torch.float32, (4, 4))], "5GB").write("a.weight", torch.ones(4, 4))
            target.commit(kind="weights", method="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_output_overlapping_an_input_is_refused_before_anything_is_written(tmp_path):
    from mergesmith.errors import MergesmithError

    source = _model(tmp_path / "in")
    with open_checkpoint(source) as ckpt, pytest.raises(MergesmithError, match="overlaps input"):
        with ModelDirectory(source / "out", {"model": checkpoint_source(ckpt)}):
            pass
    assert sorted(p.name for p in source.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]

"""``io.manifest``: one manifest shape, read back validated and bounded; earlier shapes still read."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from mergesmith.errors import CheckpointError
from mergesmith.io.manifest import FORMAT, MAX_MANIFEST_BYTES, Manifest, manifest_text, read_manifest

SHA = "ab" * 32


def _manifest(**changes) -> Manifest:
    fields = dict(
        mergesmith_version="0.1.0",
        kind="weights",
        method="ties",
        seed=3,
        base_model="base",
        config={"merge_method": "ties"},
        inputs={"base": {"path": "base", "files": {"model.safetensors": SHA}}},
        outputs={"model.safetensors": SHA},
        details={"tensors": 2},
    )
    return Manifest.model_validate({**fields, **changes})


def _write(directory: Path, data, name: str = "mergesmith.json") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return directory


def test_round_trip(tmp_path):
    manifest = _manifest()
    (tmp_path / "mergesmith.json").write_text(manifest_text(manifest))
    assert read_manifest(tmp_path) == manifest
    assert json.loads(manifest_text(manifest))["format"] == FORMAT


def test_a_directory_without_manifest_has_none(tmp_path):
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nests 100000 levels deep"),
        ('{"format": "mergesmith-manifest/1", "seed": ' + "9" * 5000 + "}", "a number of 5000 digits"),
        ("[1, 2]", "not an object"),
        ('{"format": "mergesmith-manifest/9"}', "newer mergesmith"),
    ],
)
def test_unreadable_manifests_are_one_line_errors(tmp_path, text, needle):
    _write(tmp_path, text)
    with pytest.raises(CheckpointError, match=needle) as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value) and "mergesmith.json" in str(info.value)


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"surprise": 1}, "surprise"),
        ({"outputs": {"model.safetensors": "not a hash"}}, "outputs.model.safetensors"),
        ({"inputs": {"base": {"files": {}}}}, "inputs.base.path"),
        ({"method": None}, "method"),
    ],
)
def test_invalid_fields_are_one_line_errors(tmp_path, change, needle):
    data = {**json.loads(manifest_text(_manifest())), **change}
    _write(tmp_path, data)
    with pytest.raises(CheckpointError, match=needle) as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value)


def test_size_is_bounded_before_reading(tmp_path):
    path = _write(tmp_path, "{}") / "mergesmith.json"
    with open(path, "r+b") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing is allocated until read
    with pytest.raises(CheckpointError, match="more than the 16777216-byte limit for manifest"):
        read_manifest(tmp_path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "mergesmith.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_manifest(tmp_path)


def test_a_merge_manifest_of_an_earlier_version_is_read(tmp_path):
    old = {
        "mergesmith_version": "0.1.0",
        "method": "emr",
        "seed": 0,
        "config": {"base_model": "b", "merge_method": "emr"},
        "inputs": {"b": {"model.safetensors": SHA}},
        "outputs": {"model.safetensors": SHA},
        "tensors": 5,
        "kind": "emr",
        "tasks": ["x", "y"],
        "side_outputs": {"tasks.json": SHA},
    }
    manifest = read_manifest(_write(tmp_path, old))
    assert manifest.kind == "emr" and manifest.details == {"tensors": 5, "tasks": ["x", "y"]}
    assert manifest.inputs["b"].path == "b" and manifest.inputs["b"].files == {"model.safetensors": SHA}
    assert set(manifest.outputs) == {"model.safetensors", "tasks.json"} and manifest.base_model == "b"


def test_a_protect_manifest_of_an_earlier_version_is_read(tmp_path):
    old = {
        "method": "mergelock",
        "paper": "p",
        "seed": 7,
        "strength": 2.0,
        "architecture": "gpt2",
        "attention_layers": 2,
        "heads": {"query": 2},
        "inputs": {"model.safetensors": SHA},
        "outputs": {"model.safetensors": SHA},
    }
    manifest = read_manifest(_write(tmp_path, old))
    assert manifest.kind == "protected" and manifest.seed == 7 and manifest.config["strength"] == 2.0
    assert manifest.details["architecture"] == "gpt2" and manifest.inputs["model"].files == {"model.safetensors": SHA}


def test_an_adapt_json_of_an_earlier_version_is_read(tmp_path):
    old = {
        "kind": "surgery",
        "mergesmith_version": "0.1.0",
        "base_model": "/b",
        "experts": {"x": "/e0"},
        "tasks": ["x"],
        "spec": {"method": "surgery", "seed": 2, "params": {"rank": 4}, "tasks": ["x"]},
        "info": {"loss": 1},
    }
    manifest = read_manifest(_write(tmp_path, old, "adapt.json"))
    assert manifest.kind == "surgery" and manifest.method == "surgery" and manifest.seed == 2
    assert manifest.details["spec"]["tasks"] == ["x"] and manifest.config == {"rank": 4}
    assert manifest.inputs["expert:x"].path == "/e0"


def test_no_io_module_imports_the_layers_above():
    """io is the bottom layer: it imports none of engine, adapt, bench, continual, protect (at any depth in a module)."""
    above = (
        "mergesmith.engine",
        "mergesmith.adapt",
        "mergesmith.bench",
        "mergesmith.continual",
        "mergesmith.protect",
        "mergesmith.api",
        "mergesmith.methods",
    )
    root = Path(__file__).resolve().parents[2] / "mergesmith" / "io"
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in getattr(node, "names", [])]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(above)]
    assert offenders == []

"""Checkpoints that are truncated, lying, escaping their directory, of the wrong kind, or carrying code."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.faults._faults import (
    copy_model,
    expect_refusal,
    first_shard,
    read_raw_header,
    ties_config,
    with_first_expert,
    write_raw,
)
from tests.helpers import load_tensors, run_cli, write_yaml

pytestmark = pytest.mark.e2e


@pytest.fixture
def broken(llama_family, tmp_path) -> Path:
    """A private copy of expert 0 for a test to damage."""
    return copy_model(llama_family.experts[0], tmp_path / "broken")


def _refuse_with(llama_family, tmp_path, model: Path, *needles: str) -> str:
    """merge refuses (full contract) and so does plan, which reads the same headers, with the same line."""
    cfg = with_first_expert(llama_family, model)
    line = expect_refusal(tmp_path, cfg, *needles, inputs=[model, llama_family.base, llama_family.experts[1]])
    planned = run_cli("plan", tmp_path / "c.yaml")
    assert planned.exit_code == 2 and planned.output.strip() == line, planned.output
    return line


# ---- safetensors files that lie ----------------------------------------------------------------------------------


def test_truncated_safetensors(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    shard.write_bytes(shard.read_bytes()[:-100])
    _refuse_with(llama_family, tmp_path, broken, shard.name, "re-download")


def test_header_length_larger_than_the_file(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    raw = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(raw) + 1000) + raw[8:])
    _refuse_with(llama_family, tmp_path, broken, shard.name, "header claims")


def test_offsets_past_the_end(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    header, data = read_raw_header(shard)
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 10_000_000]
    write_raw(shard, header, data)
    _refuse_with(llama_family, tmp_path, broken, shard.name, f"'{name}'")


def test_overlapping_offsets(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    header, data = read_raw_header(shard)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    # Two tensors of the same size alias the same bytes; the file length still adds up if we drop the alias's data.
    a, b = next(
        (x, y)
        for x, y in zip(names, names[1:])
        if header[x]["shape"] == header[y]["shape"] and header[x]["dtype"] == header[y]["dtype"]
    )
    size = header[a]["data_offsets"][1] - header[a]["data_offsets"][0]
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    start_b = header[a]["data_offsets"][1]
    data = data[:start_b] + data[start_b + size :]
    for k in names:
        lo, hi = header[k]["data_offsets"]
        if k not in (a, b) and lo >= start_b:
            header[k]["data_offsets"] = [lo - size, hi - size]
    write_raw(shard, header, data)
    _refuse_with(llama_family, tmp_path, broken, shard.name, "overlapping")


def test_dtype_and_shape_disagree_with_the_byte_count(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    header, data = read_raw_header(shard)
    name = next(k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32")
    header[name]["dtype"] = "F16"  # half the bytes the offsets span
    write_raw(shard, header, data)
    _refuse_with(llama_family, tmp_path, broken, shard.name, f"'{name}'", "F16")


def test_duplicate_tensor_names(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    header, data = read_raw_header(shard)
    name = next(k for k in header if k != "__metadata__")
    entry = json.dumps(header[name])
    text = json.dumps(header)
    # json.dumps cannot write a duplicate key: splice a second copy of the entry in by hand.
    text = text[:-1] + f", {json.dumps(name)}: {entry}}}"
    write_raw(shard, text, data)
    _refuse_with(llama_family, tmp_path, broken, shard.name, f"'{name}' twice")


def test_huge_header_is_refused_with_a_bounded_read(llama_family, tmp_path, broken, monkeypatch):
    import os

    from mergesmith.io import safetensors_header

    shard = first_shard(broken)
    claimed = safetensors_header.MAX_HEADER_BYTES + 8
    with open(shard, "r+b") as f:  # a sparse file big enough that the claimed header would fit
        f.write(struct.pack("<Q", claimed))
        f.truncate(claimed + 4096)
    sizes: list[int] = []
    real_pread, real_read = os.pread, os.read

    def of_shard(fd: int) -> bool:
        return Path(os.readlink(f"/proc/self/fd/{fd}")) == shard.resolve()

    def counting_pread(fd, n, offset):
        if of_shard(fd):
            sizes.append(n)
        return real_pread(fd, n, offset)

    def counting_read(fd, n):
        if of_shard(fd):
            sizes.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "pread", counting_pread)
    monkeypatch.setattr(os, "read", counting_read)
    _refuse_with(llama_family, tmp_path, broken, shard.name, "limit")
    assert sizes and max(sizes) <= 8, sizes  # only the length prefix was read


def test_config_json_that_is_not_json(llama_family, tmp_path, broken):
    (broken / "config.json").write_text("{not json")
    cfg = ties_config(llama_family, base_model=str(broken))
    cfg["models"] = [{"model": str(p)} for p in llama_family.experts[1:3]]
    line = expect_refusal(tmp_path, cfg, str(broken / "config.json"), inputs=[broken, *llama_family.experts[1:3]])
    assert "config.json" in line.split(";")[-1]


# ---- indexes and directories -------------------------------------------------------------------------------------


def _point_index(directory: Path, shard: str) -> Path:
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))
    return index_path


def test_index_points_at_a_missing_shard(llama_family, tmp_path, broken):
    index = _point_index(broken, "model-00009-of-00009.safetensors")
    _refuse_with(llama_family, tmp_path, broken, str(index), "model-00009-of-00009.safetensors", "re-download")


def test_index_points_outside_the_directory(llama_family, tmp_path, broken):
    secret = tmp_path / "secret.safetensors"
    save_file({"w": torch.zeros(2)}, str(secret))
    index = _point_index(broken, "../secret.safetensors")
    _refuse_with(llama_family, tmp_path, broken, str(index), "../secret.safetensors", "plain file name")


def test_index_points_at_an_absolute_path(llama_family, tmp_path, broken):
    target = str(first_shard(llama_family.experts[1]).resolve())
    index = _point_index(broken, target)
    _refuse_with(llama_family, tmp_path, broken, str(index), target, "plain file name")


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_directory_without_weights(llama_family, tmp_path, content):
    empty = tmp_path / "empty"
    empty.mkdir()
    if content:
        (empty / content).write_text("hi")
    _refuse_with(llama_family, tmp_path, empty, str(empty), "no model weights")


def test_missing_model_path(llama_family, tmp_path):
    cfg = with_first_expert(llama_family, tmp_path / "nope")
    expect_refusal(tmp_path, cfg, str(tmp_path / "nope"), "check the path")


def test_directory_of_a_different_architecture(llama_family, gpt2_family, tmp_path):
    line = _refuse_with(
        llama_family, tmp_path, gpt2_family.experts[0], str(gpt2_family.experts[0]), "same architecture"
    )
    assert "tensors" in line


def test_same_names_different_shapes(tmp_path):
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    narrow.mkdir()
    wide.mkdir()
    save_file({"w": torch.zeros(3, 5)}, str(narrow / "model.safetensors"))
    save_file({"w": torch.zeros(3, 4)}, str(wide / "model.safetensors"))
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(narrow), "parameters": {"weight": 1}},
            {"model": str(wide), "parameters": {"weight": 1}},
        ],
    }
    expect_refusal(tmp_path, cfg, "'w'", "shape", inputs=[narrow, wide])


# ---- pickles that call functions ---------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object would run ``exec``: creating the marker file proves the code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_pickle_payload_executes_when_loaded_unsafely(tmp_path):
    """The control: the payload is live, so its absence in the next tests means it was never run."""
    marker = tmp_path / "ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_bin_whose_pickle_calls_a_function_is_refused_and_never_runs(llama_family, tmp_path, layout):
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(llama_family.experts[0] / "config.json", evil / "config.json")
    marker = tmp_path / "pwned"
    tensors = load_tensors(llama_family.experts[0])
    tensors["x"] = _Payload(marker)
    if layout == "single":
        culprit = evil / "pytorch_model.bin"
        torch.save(tensors, culprit)
    else:
        culprit = evil / "pytorch_model-00002-of-00002.bin"
        names = sorted(k for k in tensors if k != "x")
        torch.save({k: tensors[k] for k in names[:3]}, evil / "pytorch_model-00001-of-00002.bin")
        torch.save({k: tensors[k] for k in [*names[3:], "x"]}, culprit)
        weight_map = {k: ("pytorch_model-00001-of-00002.bin" if k in names[:3] else culprit.name) for k in names}
        (evil / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    line = _refuse_with(llama_family, tmp_path, evil, culprit.name, "exec", "arbitrary code", "safetensors")
    assert str(culprit) in line
    assert not marker.exists()


def test_plain_bin_checkpoints_merge_like_safetensors(llama_family, tmp_path):
    """The counterpart of the refusal: a state dict of plain tensors in a .bin is read, with the same result."""
    as_bin = tmp_path / "as_bin"
    as_bin.mkdir()
    shutil.copy(llama_family.experts[0] / "config.json", as_bin / "config.json")
    torch.save(load_tensors(llama_family.experts[0]), as_bin / "pytorch_model.bin")
    merged = {}
    for label, first in {"st": llama_family.experts[0], "bin": as_bin}.items():
        cfg = with_first_expert(llama_family, first)
        assert run_cli("merge", write_yaml(tmp_path / f"{label}.yaml", cfg), tmp_path / label, "--quiet").exit_code == 0
        merged[label] = load_tensors(tmp_path / label)
    assert merged["st"].keys() == merged["bin"].keys()
    assert all(torch.equal(merged["st"][k], merged["bin"][k]) for k in merged["st"])


def test_integer_buffers_missing_from_some_models_are_carried_over(tmp_path):
    from tests.helpers import load_tensors

    base, expert = tmp_path / "base", tmp_path / "expert"
    base.mkdir()
    expert.mkdir()
    save_file({"w": torch.zeros(2, 3), "position_ids": torch.arange(4).unsqueeze(0)}, str(base / "model.safetensors"))
    save_file({"w": torch.ones(2, 3)}, str(expert / "model.safetensors"))
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(expert), "parameters": {"weight": 0.5}}],
    }
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    out = load_tensors(tmp_path / "out")
    assert torch.equal(out["position_ids"], torch.arange(4).unsqueeze(0)) and torch.equal(
        out["w"], torch.full((2, 3), 0.5)
    )

"""Hostile bytes in every file mergesmith parses: nesting deep enough to exhaust Python's recursion, numbers too long
for Python's int conversion, tensor names the writer cannot write, shapes that describe astronomically many empty
rows. Each is one ``error:`` line naming the file, exit 2, nothing written, in ``plan`` as in ``merge``."""

from __future__ import annotations

import json
import struct

import pytest

from tests.faults._faults import (
    copy_model,
    expect_cli_refusal,
    expect_refusal,
    first_shard,
    read_raw_header,
    with_first_expert,
    write_raw,
)
from tests.helpers import run_cli, write_yaml

pytestmark = pytest.mark.e2e

DEEP = 50_000  # far past Python's recursion limit, a few kilobytes of brackets


@pytest.fixture
def broken(llama_family, tmp_path):
    return copy_model(llama_family.experts[0], tmp_path / "broken")


def _refused_by_merge_and_plan(fam, tmp_path, model, *needles) -> str:
    cfg = with_first_expert(fam, model)
    line = expect_refusal(tmp_path, cfg, *needles, inputs=[model, fam.base, fam.experts[1]])
    planned = run_cli("plan", tmp_path / "c.yaml")
    assert planned.exit_code == 2 and planned.output.strip() == line, planned.output
    return line


def _with_header_text(shard, text: str) -> None:
    """Replace the header of ``shard`` with ``text`` (data kept)."""
    _, data = read_raw_header(shard)
    write_raw(shard, text, data)


# ---- nesting and numbers ------------------------------------------------------------------------------------------


def test_deeply_nested_safetensors_header(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    _with_header_text(shard, '{"a": ' + "[" * DEEP + "]" * DEEP + "}")
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, shard.name, "nests", "levels deep")


def test_five_thousand_digit_integer_in_a_header(llama_family, tmp_path, broken):
    shard = first_shard(broken)
    header, data = read_raw_header(shard)
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header).replace(json.dumps(header[name]["data_offsets"]), "[0, " + "9" * 5000 + "]", 1)
    write_raw(shard, text, data)
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, shard.name, "5000 digits")


def test_deeply_nested_shard_index(llama_family, tmp_path, broken):
    index = broken / "model.safetensors.index.json"
    index.write_text('{"weight_map": ' + "[" * DEEP + "]" * DEEP + "}")
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, "model.safetensors.index.json", "levels deep")


def test_long_integer_in_the_shard_index(llama_family, tmp_path, broken):
    index = broken / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    text = json.dumps(data).replace('"metadata": {', '"metadata": {"total_size": ' + "1" * 5000 + ", ", 1)
    index.write_text(text)
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, "model.safetensors.index.json", "5000 digits")


@pytest.mark.parametrize("payload", ["nested", "long_number"])
def test_hostile_config_json_of_the_base(llama_family, tmp_path, payload):
    base = copy_model(llama_family.base, tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    text = json.dumps(config)[:-1]
    text += ', "x": ' + ("[" * DEEP + "]" * DEEP if payload == "nested" else "7" * 5000) + "}"
    (base / "config.json").write_text(text)
    cfg = with_first_expert(llama_family, llama_family.experts[0], base_model=str(base))
    expect_refusal(tmp_path, cfg, "config.json", inputs=[base, *llama_family.experts[:2]])


@pytest.mark.parametrize("payload", ["nested_flow", "nested_block", "long_number", "alias_bomb", "bad_date"])
def test_hostile_merge_config_yaml(llama_family, tmp_path, payload):
    base = f"merge_method: ties\nbase_model: {llama_family.base}\nmodels:\n  - model: {llama_family.experts[0]}\n"
    extra = {
        "nested_flow": "parameters: {density: " + "[" * DEEP + "]" * DEEP + "}\n",
        "nested_block": "parameters:\n"
        + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(2000))
        + "  " * 2001
        + "v\n",
        "long_number": "seed: " + "1" * 5000 + "\n",
        "alias_bomb": "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)),
        "bad_date": "name: 2024-13-45\n",
    }[payload]
    path = tmp_path / "hostile.yaml"
    path.write_text(base + extra)
    line = expect_refusal(tmp_path, path, str(path), inputs=[llama_family.base, llama_family.experts[0]])
    planned = run_cli("plan", path)
    assert planned.exit_code == 2 and planned.output.strip() == line


@pytest.mark.parametrize("payload", ["nested", "long_number"])
def test_hostile_pool_yaml(tmp_path, payload):
    pool = tmp_path / "pool.yaml"
    value = "[" * DEEP + "]" * DEEP if payload == "nested" else "9" * 5000
    pool.write_text(f"base_model: base\ntasks: {value}\n")
    out = tmp_path / "run"
    expect_cli_refusal(("bench", "--pool", pool, "--out", out, "--quiet"), str(pool), out=out, inputs=[pool])


# ---- tensor names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "needle"),
    [
        ('""', "is empty"),
        ('"bad\\ud800name"', "lone surrogate"),
        ('"line\\nbreak"', "U+000A"),
        ('"esc\\u001b[2Jname"', "U+001B"),
        ('"bidi\\u202ename"', "U+202E"),
        ('"' + "n" * 5000 + '"', "5000 bytes long"),
    ],
)
def test_tensor_names_the_writer_could_not_write_are_refused_when_the_header_is_read(
    llama_family, tmp_path, broken, escaped, needle
):
    """``plan`` said OK and ``merge`` crashed in the writer; now both refuse the same way, naming the file."""
    shard = first_shard(broken)
    header, data = read_raw_header(shard)
    name = next(k for k in header if k != "__metadata__")
    text = json.dumps(header).replace(json.dumps(name), escaped, 1)
    write_raw(shard, text, data)
    line = _refused_by_merge_and_plan(llama_family, tmp_path, broken, shard.name, needle)
    assert "\n" not in line and "\x1b" not in line


def test_index_naming_a_tensor_with_a_control_character(llama_family, tmp_path, broken):
    index = broken / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"]["evil\rname"] = data["weight_map"][name]
    index.write_text(json.dumps(data))
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, "model.safetensors.index.json", "U+000D")


# ---- shapes -------------------------------------------------------------------------------------------------------


def _add_empty_tensor(directory, shape) -> None:
    """Add a zero-byte tensor of ``shape`` to the first shard (and the index) of ``directory``."""
    shard = first_shard(directory)
    header, data = read_raw_header(shard)
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    header["model.empty"] = {"dtype": "F32", "shape": list(shape), "data_offsets": [end, end]}
    write_raw(shard, header, data)
    index = directory / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())
    weight_map["weight_map"]["model.empty"] = shard.name
    index.write_text(json.dumps(weight_map))


def test_zero_byte_tensor_with_an_astronomical_dimension_is_refused(llama_family, tmp_path, broken):
    _add_empty_tensor(broken, [2**62, 2**62, 0])
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, "model.empty", "2^48")


def test_zero_byte_tensor_with_many_rows_plans_and_merges_cheaply(llama_family, tmp_path):
    """2^44 empty rows pass the bounds; planning and merging them is one empty block, not 2^44 slices."""
    models = [copy_model(p, tmp_path / p.name) for p in (llama_family.base, *llama_family.experts[:2])]
    for model in models:
        _add_empty_tensor(model, [2**44, 0])
    cfg = {
        "merge_method": "dare_ties",
        "base_model": str(models[0]),
        "parameters": {"weight": 1.0, "density": 0.5},
        "models": [{"model": str(p)} for p in models[1:]],
    }
    config = write_yaml(tmp_path / "c.yaml", cfg)
    assert run_cli("plan", config).exit_code == 0
    merged = run_cli("merge", config, tmp_path / "out", "--quiet")
    assert merged.exit_code == 0, merged.output
    header, _ = read_raw_header(tmp_path / "out" / "model.safetensors")
    assert header["model.empty"]["shape"] == [2**44, 0]


def test_rank_beyond_the_bound_is_refused(llama_family, tmp_path, broken):
    _add_empty_tensor(broken, [1] * 17 + [0])
    _refused_by_merge_and_plan(llama_family, tmp_path, broken, "model.empty", "dimensions")


def test_header_shape_bounds_keep_struct_sized_numbers(tmp_path):
    """A dimension of 2^64 or more is refused by the shape bound, never converted into a buffer size."""
    from mergesmith.errors import CheckpointError
    from mergesmith.io.safetensors_header import read_header

    header = json.dumps({"a": {"dtype": "F32", "shape": [2**70, 0], "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="2\\^48"):
        read_header(path)

"""ShardedWriter / plan_shards: byte-exact safetensors, deterministic bytes and hashes, loadable by transformers."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from mergesmith.io import ShardedWriter, open_checkpoint, plan_shards
from mergesmith.io.safetensors_header import read_header
from tests.io.io_helpers import tiny_llama_model


def _entries(tensors: dict[str, torch.Tensor]):
    return [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]


def _write(directory, tensors, max_shard_bytes, how="whole"):
    writer = ShardedWriter(directory, _entries(tensors), max_shard_bytes)
    for name, t in tensors.items():
        if how == "whole":
            writer.write(name, t)
        elif how == "noncontiguous":
            # Same values, produced as a transposed view of a different layout.
            writer.write(name, t.T.contiguous().T if t.dim() == 2 else t)
        elif how == "rows" and t.dim() > 0:
            for start in range(0, t.shape[0], 2):
                writer.write_rows(name, t[start : start + 2])
            if t.shape[0] == 0:
                writer.write_rows(name, t)
        else:
            writer.write(name, t)
    return writer.finish()


def _sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "z.weight": torch.randn(8, 5, generator=g),
        "a.bias": torch.randn(5, generator=g).half(),
        "m.weight": torch.randn(6, 3, generator=g).bfloat16(),
        "ids": torch.arange(9, dtype=torch.int64),
        "flag": torch.tensor([True, False, True]),
        "scale": torch.tensor(0.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "f8": torch.randn(4, 2, generator=g).to(torch.float8_e4m3fn),
    }


def _equal_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    # fp8 has no equality kernel: compare the bytes.
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


# -- plan_shards ----------------------------------------------------------------------------------------------


def test_plan_is_greedy_in_the_given_order_and_big_tensors_stand_alone():
    f32 = torch.float32
    entries = [
        ("a", f32, (10,)),
        ("b", f32, (10,)),
        ("big", f32, (100,)),
        ("c", f32, (5,)),
        ("d", f32, (20,)),
        ("e", f32, (1,)),
    ]
    plans = plan_shards(entries, 100)  # bytes: 40, 40, 400, 20, 80, 4
    # c + d fill a shard exactly (the limit is inclusive); e starts the next.
    assert [[e[0] for e in p.entries] for p in plans] == [["a", "b"], ["big"], ["c", "d"], ["e"]]
    assert [p.nbytes for p in plans] == [80, 400, 100, 4]
    assert [p.file_name for p in plans] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


def test_plan_single_shard_is_model_safetensors_and_accepts_size_strings():
    plans = plan_shards([("a", torch.float16, (3, 4))], "2GB")
    assert len(plans) == 1 and plans[0].file_name == "model.safetensors" and plans[0].nbytes == 24
    assert plan_shards([], 10)[0].file_name == "model.safetensors"


@pytest.mark.parametrize(
    "entries,limit,message",
    [
        ([("a", torch.float32, (1,))], 0, "at least 1"),
        ([("a", torch.float32, (1,)), ("a", torch.float32, (1,))], 10, "listed twice"),
        ([("a", torch.complex64, (1,))], 10, "cannot be stored"),
        ([("a", torch.float32, (-1,))], 10, "non-negative"),
        ([("__metadata__", torch.float32, (1,))], 10, "reserved"),
    ],
)
def test_plan_rejects_bad_input(entries, limit, message):
    with pytest.raises(ValueError, match=message):
        plan_shards(entries, limit)


# -- bytes ----------------------------------------------------------------------------------------------------


def test_bytes_match_the_reference_serializer(tmp_path):
    tensors = _sample()
    reference = safetensors_save(tensors, metadata={"format": "pt"})
    # The reference orders data by dtype then name; write in the order it chose.
    ref_path = tmp_path / "ref.safetensors"
    ref_path.write_bytes(reference)
    order = list(read_header(ref_path)[0])
    _write(tmp_path / "out", {name: tensors[name] for name in order}, "1GB")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == reference


@pytest.mark.parametrize("how", ["noncontiguous", "rows"])
def test_bytes_and_hashes_do_not_depend_on_how_tensors_were_produced(tmp_path, how):
    tensors = _sample()
    expected = _write(tmp_path / "whole", tensors, 64)
    got = _write(tmp_path / how, tensors, 64, how=how)
    assert got == expected and len(expected) > 1
    for name, digest in expected.items():
        data = (tmp_path / how / name).read_bytes()
        assert data == (tmp_path / "whole" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest  # hashes are of the bytes on disk
    index_a = (tmp_path / "whole" / "model.safetensors.index.json").read_bytes()
    assert index_a == (tmp_path / how / "model.safetensors.index.json").read_bytes()


def test_output_loads_with_safe_open_and_index_is_complete(tmp_path):
    tensors = _sample()
    digests = _write(tmp_path, tensors, 64)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == set(digests)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in tensors.values())
    for name, ref in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert _equal_bits(f.get_tensor(name), ref)
    with open_checkpoint(tmp_path) as ckpt:
        for name, ref in tensors.items():
            assert _equal_bits(ckpt.read(name), ref)


def test_headers_are_padded_to_8_bytes(tmp_path):
    _write(tmp_path, {"odd_name_x": torch.ones(1)}, 100)
    raw = (tmp_path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8 : 8 + n].decode().startswith('{"__metadata__":{"format":"pt"}')


def test_empty_model_writes_a_loadable_file(tmp_path):
    assert list(_write(tmp_path, {}, 10)) == ["model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert list(f.keys()) == []


def test_extra_metadata_is_kept(tmp_path):
    writer = ShardedWriter(tmp_path, [("a", torch.float32, (1,))], 10, metadata={"merged_by": "mergesmith"})
    writer.write("a", torch.ones(1))
    writer.finish()
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt", "merged_by": "mergesmith"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool]),
            st.lists(st.integers(0, 5), min_size=0, max_size=3),
        ),
        max_size=8,
    ),
    limit=st.integers(1, 200),
    seed=st.integers(0, 2**16),
)
def test_property_round_trip_and_shard_limits(tmp_path_factory, specs, limit, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {f"t{i}": (torch.randn(shape, generator=g) * 50).to(dtype) for i, (dtype, shape) in enumerate(specs)}
    out = tmp_path_factory.mktemp("prop")
    digests = _write(out, tensors, limit)
    plans = plan_shards(_entries(tensors), limit)
    assert list(digests) == [p.file_name for p in plans]
    for plan in plans:
        assert plan.nbytes <= limit or len(plan.entries) == 1
        assert (out / plan.file_name).stat().st_size == read_header(out / plan.file_name)[2] + plan.nbytes
    with open_checkpoint(out) as ckpt:
        assert list(ckpt.tensors) == list(tensors)  # shards in name order, data in plan order
        for name, ref in tensors.items():
            got = ckpt.read(name)
            assert got.dtype == ref.dtype and torch.equal(got, ref)


# -- misuse ---------------------------------------------------------------------------------------------------


def test_tensors_must_arrive_in_plan_order_with_planned_dtype_and_shape(tmp_path):
    writer = ShardedWriter(tmp_path, [("a", torch.float32, (2, 3)), ("b", torch.float16, (4,))], 1000)
    with pytest.raises(ValueError, match="expected tensor 'a' next .* got 'b'"):
        writer.write("b", torch.ones(4, dtype=torch.float16))
    with pytest.raises(ValueError, match="float64 but the plan says torch.float32"):
        writer.write("a", torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(3, 2\) but the plan says \(2, 3\)"):
        writer.write("a", torch.ones(3, 2))
    with pytest.raises(ValueError, match="does not fit"):
        writer.write_rows("a", torch.ones(3, 3))
    writer.write_rows("a", torch.ones(1, 3))
    with pytest.raises(ValueError, match="started with write_rows"):
        writer.write("a", torch.ones(2, 3))
    writer.write_rows("a", torch.ones(1, 3))
    with pytest.raises(ValueError, match="after 1 of 2 tensors; 'b'"):
        writer.finish()
    writer.write("b", torch.ones(4, dtype=torch.float16))
    with pytest.raises(ValueError, match="all 2 tensors were written"):
        writer.write("c", torch.ones(1))
    writer.finish()
    with pytest.raises(ValueError, match="finished or closed"):
        writer.write("a", torch.ones(2, 3))
    with pytest.raises(ValueError, match="already called"):
        writer.finish()


def test_zero_d_tensors_have_no_rows(tmp_path):
    writer = ShardedWriter(tmp_path, [("s", torch.float32, ())], 1000)
    with pytest.raises(ValueError, match="0-d"):
        writer.write_rows("s", torch.ones(1))


def test_refuses_to_write_over_existing_output(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="already contains model.safetensors.index.json"):
        ShardedWriter(tmp_path, [("a", torch.float32, (1,))], 1000)


def test_shards_are_closed_as_they_fill(tmp_path):
    writer = ShardedWriter(tmp_path, [("a", torch.float32, (4,)), ("b", torch.float32, (4,))], 16)
    writer.write("a", torch.arange(4.0))
    first = tmp_path / writer.shards[0].file_name
    # The first shard is complete on disk before the second tensor arrives.
    with safe_open(first, framework="pt") as f:
        assert torch.equal(f.get_tensor("a"), torch.arange(4.0))
    writer.write("b", torch.ones(4))
    writer.finish()


# -- transformers ---------------------------------------------------------------------------------------------


def test_transformers_loads_a_model_written_by_the_writer(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    source_dir, state = tiny_llama_dir
    out = tmp_path / "written"
    digests = _write(out, state, "200KB")
    assert len(digests) > 1
    shutil.copy(source_dir / "config.json", out / "config.json")

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for name, ref in state.items():
        assert torch.equal(loaded_state[name], ref), name
    original = tiny_llama_model()
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, original(ids).logits)

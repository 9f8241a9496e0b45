"""open_checkpoint on safetensors layouts: exact round trips, row reads, index validation, no memory maps."""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergesmith.errors import CheckpointError
from mergesmith.io import Checkpoint, TensorInfo, open_checkpoint
from tests.io.io_helpers import raw_safetensors

ROW_SLICES = [slice(None), slice(0, 1), slice(3, 17), slice(-5, None), slice(2, 2), slice(10, 10_000), slice(None, -1)]


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_llama_bf16_dir"])
def test_sharded_transformers_checkpoint_round_trips(request, fixture):
    directory, state = request.getfixturevalue(fixture)
    with open_checkpoint(directory) as ckpt:
        assert isinstance(ckpt, Checkpoint)
        assert ckpt.root == directory
        assert len(ckpt.weight_files) > 1, "max_shard_size=200KB makes several shards"
        assert all(p.parent == directory and p.suffix == ".safetensors" for p in ckpt.weight_files)
        assert ckpt.config_path == directory / "config.json"
        assert ckpt.architecture() == "LlamaForCausalLM"
        assert set(ckpt.tensors) == set(state)
        for name, ref in state.items():
            info = ckpt.tensors[name]
            assert isinstance(info, TensorInfo) and info.dtype == ref.dtype and info.shape == tuple(ref.shape)
            _assert_same(ckpt.read(name), ref)
            for rows in ROW_SLICES:
                _assert_same(ckpt.read(name, rows=rows), ref[rows])


def test_index_file_path_opens_its_model(tiny_llama_dir):
    directory, state = tiny_llama_dir
    with open_checkpoint(directory / "model.safetensors.index.json") as ckpt:
        assert ckpt.root == directory and set(ckpt.tensors) == set(state)


def test_tensors_are_in_file_order(tiny_llama_dir):
    directory, _ = tiny_llama_dir
    with open_checkpoint(directory) as ckpt:
        keys = [(ckpt.weight_files.index(i.path), i.offset) for i in ckpt.tensors.values()]
        assert keys == sorted(keys)


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 5, generator=g)
    return {
        "f64": base.double(),
        "f32": base,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": (base * 100).long(),
        "i32": (base * 100).int(),
        "i16": (base * 100).short(),
        "i8": (base * 10).to(torch.int8),
        "u8": (base.abs() * 10).to(torch.uint8),
        "bool": base > 0,
        "f8a": base.to(torch.float8_e4m3fn),
        "f8b": base.to(torch.float8_e5m2),
        "vec": torch.randn(9, generator=g).half(),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "cube": torch.randn(4, 3, 2, generator=g),
    }


def _equal_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    # fp8 has no torch.equal kernel everywhere: compare the bytes.
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_every_dtype_and_rank_round_trips_with_rows(tmp_path):
    tensors = _all_dtypes()
    path = tmp_path / "all.safetensors"
    save_file(tensors, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.root == tmp_path and ckpt.weight_files == [path]
        for name, ref in tensors.items():
            assert _equal_bits(ckpt.read(name), ref), name
            if ref.dim() == 0:
                assert _equal_bits(ckpt.read(name, rows=slice(0, 1)), ref)
                continue
            for rows in ROW_SLICES:
                assert _equal_bits(ckpt.read(name, rows=rows), ref[rows]), (name, rows)


def test_single_file_directory(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(4)}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with open_checkpoint(str(tmp_path)) as ckpt:
        assert ckpt.weight_files == [tmp_path / "model.safetensors"]
        assert ckpt.architecture() == "gpt2"  # no architectures list: fall back to model_type
        for name, ref in tensors.items():
            _assert_same(ckpt.read(name), ref)


def test_architecture_is_none_without_config(tmp_path):
    save_file({"a": torch.ones(1)}, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.config_path is None and ckpt.architecture() is None


def test_broken_config_json_is_a_checkpoint_error(tmp_path):
    save_file({"a": torch.ones(1)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    with open_checkpoint(tmp_path) as ckpt, pytest.raises(CheckpointError, match="config.json"):
        ckpt.architecture()


def test_reads_return_fresh_writable_memory(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.arange(12.0).reshape(3, 4)}, path)
    with open_checkpoint(path) as ckpt:
        first = ckpt.read("a")
        first.add_(100)  # the caller owns the tensor
        second = ckpt.read("a")
        assert torch.equal(second, torch.arange(12.0).reshape(3, 4))
        assert first.data_ptr() != second.data_ptr()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_safetensors_files_are_never_memory_mapped(tiny_llama_dir):
    directory, state = tiny_llama_dir
    with open_checkpoint(directory) as ckpt:
        for name in state:
            ckpt.read(name)
            ckpt.read(name, rows=slice(0, 1))
        maps = Path("/proc/self/maps").read_text()
        for path in ckpt.weight_files:
            assert str(path.resolve()) not in maps and str(path) not in maps


def test_concurrent_reads_from_many_threads(tiny_llama_dir):
    directory, state = tiny_llama_dir
    jobs = [(name, rows) for name in state for rows in ROW_SLICES] * 4
    with open_checkpoint(directory) as ckpt, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: ckpt.read(*job), jobs))
    for (name, rows), got in zip(jobs, results):
        _assert_same(got, state[name][rows])


def test_bad_row_requests(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4, 2), "s": torch.tensor(1.0)}, path)
    with open_checkpoint(path) as ckpt:
        with pytest.raises(ValueError, match="step 2"):
            ckpt.read("a", rows=slice(0, 4, 2))
        with pytest.raises(ValueError, match="0-d"):
            ckpt.read("s", rows=slice(0, 0))
        with pytest.raises(KeyError, match="'nope'"):
            ckpt.read("nope")


def test_read_after_close_fails_and_close_is_idempotent(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2)}, path)
    ckpt = open_checkpoint(path)
    ckpt.close()
    ckpt.close()
    with pytest.raises(ValueError, match="closed"):
        ckpt.read("a")


# -- what is not a checkpoint ---------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing-model: no such file or directory"):
        open_checkpoint(tmp_path / "missing-model")


def test_directory_without_weights_lists_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(tmp_path)
    message = str(exc.value)
    assert str(tmp_path) in message and "no model weights" in message
    for name in (
        "model.safetensors.index.json",
        "model.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model.bin",
    ):
        assert name in message


def test_directory_with_unusual_weight_names_suggests_the_file(tmp_path):
    save_file({"a": torch.ones(1)}, tmp_path / "consolidated.safetensors")
    with pytest.raises(CheckpointError, match=r"consolidated\.safetensors: pass one of those files directly"):
        open_checkpoint(tmp_path)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK")
    with pytest.raises(CheckpointError, match=r"weights\.npz: unknown checkpoint file type '\.npz'"):
        open_checkpoint(path)


def test_corrupt_shard_is_reported_by_file_name(tmp_path, tiny_llama_dir):
    directory = shutil.copytree(tiny_llama_dir[0], tmp_path / "m")
    shard = sorted(directory.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated download
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor '.*' ends at byte \d+ but the file has"):
        open_checkpoint(directory)


# -- index validation -----------------------------------------------------------------------------------------


@pytest.fixture
def sharded_copy(tmp_path, tiny_llama_dir):
    directory = shutil.copytree(tiny_llama_dir[0], tmp_path / "model")
    index_path = directory / "model.safetensors.index.json"
    return directory, index_path, json.loads(index_path.read_text())


def _rewrite(index_path: Path, index: dict) -> None:
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize(
    "shard",
    ["../model-00001-of-00003.safetensors", "/etc/passwd", "sub/model-00001-of-00003.safetensors", "..", ""],
)
def test_index_shards_must_be_plain_names_inside_the_directory(sharded_copy, shard):
    directory, index_path, index = sharded_copy
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = shard
    _rewrite(index_path, index)
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(directory)
    message = str(exc.value)
    assert "model.safetensors.index.json" in message and f"'{name}'" in message and "plain file name" in message


def test_index_shard_must_exist(sharded_copy):
    directory, index_path, index = sharded_copy
    shard = sorted(set(index["weight_map"].values()))[-1]
    (directory / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"index\.json: shard {shard} \(holding tensor '.*'\) does not exist"):
        open_checkpoint(directory)


def test_index_must_name_the_shard_that_holds_each_tensor(sharded_copy):
    directory, index_path, index = sharded_copy
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][name] = shards[1]
    _rewrite(index_path, index)
    with pytest.raises(CheckpointError, match=rf"says tensor '{name}' is in {shards[1]} but it is in {shards[0]}"):
        open_checkpoint(directory)


def test_index_naming_a_tensor_no_shard_has(sharded_copy):
    directory, index_path, index = sharded_copy
    index["weight_map"]["ghost.weight"] = next(iter(index["weight_map"].values()))
    _rewrite(index_path, index)
    with pytest.raises(CheckpointError, match="'ghost.weight' is in .* but no shard has it"):
        open_checkpoint(directory)


@pytest.mark.parametrize("text", ["{oops", '{"metadata": {}}', '{"weight_map": []}', "[]"])
def test_unreadable_index(sharded_copy, text):
    directory, index_path, _ = sharded_copy
    index_path.write_text(text)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: "):
        open_checkpoint(directory)


def test_a_tensor_stored_in_two_shards_is_refused(tmp_path):
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, tmp_path / "s1.safetensors")
    save_file({"a": torch.zeros(2)}, tmp_path / "s2.safetensors")
    index = {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "x": "s2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="tensor 'a' is stored in both s1.safetensors and s2.safetensors"):
        open_checkpoint(tmp_path)


def test_lying_shard_in_a_directory_is_refused(tmp_path):
    # A header whose offsets overlap: two names aliasing the same bytes.
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    }
    raw_safetensors(tmp_path / "model.safetensors", header, b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.' starts at byte 0, inside tensor"):
        open_checkpoint(tmp_path)

"""Legacy PyTorch checkpoints: read through torch.load(weights_only=True) only; malicious pickles never run."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mergesmith.errors import CheckpointError
from mergesmith.io import open_checkpoint


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(10, 4, generator=g),
        "norm.weight": torch.randn(4, generator=g).bfloat16(),
        "proj.weight": torch.randn(6, 4, generator=g).half(),
        "steps": torch.tensor(7),
    }


def _check(ckpt, state):
    assert set(ckpt.tensors) == set(state)
    for name, ref in state.items():
        info = ckpt.tensors[name]
        assert info.dtype == ref.dtype and info.shape == tuple(ref.shape) and info.offset is None
        assert info.nbytes == ref.numel() * ref.element_size()
        got = ckpt.read(name)
        assert got.dtype == ref.dtype and torch.equal(got, ref)
        if ref.dim() > 0:
            assert torch.equal(ckpt.read(name, rows=slice(1, 3)), ref[1:3])
        else:
            assert torch.equal(ckpt.read(name, rows=slice(0, 1)), ref)


def test_pytorch_model_bin_directory_ignores_non_tensors(tmp_path):
    state = _state()
    torch.save({**state, "config": {"lr": 0.1}, "epoch": 3}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.weight_files == [tmp_path / "pytorch_model.bin"]
        assert ckpt.architecture() == "GPT2LMHeadModel"
        _check(ckpt, state)


def test_sharded_bin_with_index(tmp_path):
    state = _state()
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:2], "pytorch_model-00002-of-00002.bin": names[2:]}
    for file_name, keys in shards.items():
        torch.save({k: state[k] for k in keys}, tmp_path / file_name)
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with open_checkpoint(tmp_path) as ckpt:
        assert [p.name for p in ckpt.weight_files] == sorted(shards)
        _check(ckpt, state)


def test_sharded_bin_index_is_validated_like_safetensors(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00001.bin")
    index = {"weight_map": {"a": "../pytorch_model-00001-of-00001.bin"}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin\.index\.json: tensor 'a' .* plain file name"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_bare_torch_files(tmp_path, suffix):
    state = _state()
    path = tmp_path / f"weights{suffix}"
    torch.save(state, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.root == tmp_path
        _check(ckpt, state)


def test_legacy_non_zip_format_still_loads(tmp_path):
    state = _state()
    path = tmp_path / "old.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with open_checkpoint(path) as ckpt:
        _check(ckpt, state)


def test_views_and_shared_storage_read_as_independent_contiguous_tensors(tmp_path):
    big = torch.arange(24.0).reshape(4, 6)
    state = {"big": big, "tied": big, "t": big.t(), "slice": big[1:3, 2:5]}
    path = tmp_path / "views.pt"
    torch.save(state, path)
    with open_checkpoint(path) as ckpt:
        for name, ref in state.items():
            got = ckpt.read(name)
            assert got.is_contiguous() and torch.equal(got, ref)
        a = ckpt.read("big")
        a.zero_()
        assert torch.equal(ckpt.read("tied"), big)


# -- unsafe and unusable pickles ------------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls exec, which creates the marker file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _malicious_zip(path, marker):
    torch.save({"weight": torch.ones(2), "payload": _Payload(marker)}, path)


def _malicious_raw_pickle(path, marker):
    # Not a torch zip archive at all: a plain pickle, as some hand-rolled .bin files are.
    path.write_bytes(pickle.dumps({"payload": _Payload(marker), "weight": [1.0, 2.0]}, protocol=2))


@pytest.mark.parametrize("build", [_malicious_zip, _malicious_raw_pickle])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, build):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    build(path, marker)

    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(tmp_path)
    message = str(exc.value)
    assert "pytorch_model.bin" in message and "refusing" in message and "exec" in message
    assert "safetensors" in message and "\n" not in message
    assert not marker.exists(), "the payload ran"

    # Control: the payload is live. An unsafe load does run it, so the assertion above can fail.
    if build is _malicious_zip:
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_malicious_shard_in_an_indexed_directory(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    _malicious_zip(tmp_path / "pytorch_model-00002-of-00002.bin", marker)
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "weight": "pytorch_model-00002-of-00002.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"pytorch_model-00002-of-00002\.bin: refusing"):
        open_checkpoint(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello world" * 10, b""])
def test_garbage_bin_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a readable PyTorch checkpoint"):
        open_checkpoint(tmp_path)


def test_truncated_bin_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_state(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"model\.pt: not a readable PyTorch checkpoint.*re-download"):
        open_checkpoint(path)


def test_bin_without_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list, not a state dict"):
        open_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match=r"nested\.pt: no tensors at the top level \(keys: 'model'\)"):
        open_checkpoint(tmp_path / "nested.pt")

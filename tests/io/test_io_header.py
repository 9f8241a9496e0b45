"""read_header: valid files parse exactly; every kind of corrupt header is a one-line CheckpointError naming the file."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergesmith.errors import CheckpointError
from mergesmith.io.safetensors_header import MAX_HEADER_BYTES, read_header
from tests.io.io_helpers import raw_safetensors


def test_header_of_a_reference_file_matches_safe_open(tmp_path):
    tensors = {
        "w": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "h": torch.randn(2, 2).to(torch.float16),
        "s": torch.tensor(1.5, dtype=torch.bfloat16),
        "e": torch.zeros(0, 4),
    }
    path = tmp_path / "ref.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "hi"})

    infos, metadata, data_start = read_header(path)

    assert metadata == {"format": "pt", "note": "hi"}
    raw = path.read_bytes()
    assert data_start == 8 + struct.unpack("<Q", raw[:8])[0]
    assert set(infos) == set(tensors)
    offsets = [info.offset for info in infos.values()]
    assert offsets == sorted(offsets), "tensors are listed in file order"
    with safe_open(path, framework="pt") as f:
        for name, info in infos.items():
            ref = f.get_tensor(name)
            assert info.name == name and info.path == path
            assert info.dtype == ref.dtype and info.shape == tuple(ref.shape)
            assert info.numel == ref.numel()
            assert info.nbytes == ref.numel() * ref.element_size()
            # offsets are absolute: the bytes there are the tensor's bytes
            stored = raw[info.offset : info.offset + info.nbytes]
            assert stored == ref.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_fp8_and_bool_dtypes_are_known(tmp_path):
    path = tmp_path / "f8.safetensors"
    save_file(
        {
            "a": torch.ones(4).to(torch.float8_e4m3fn),
            "b": torch.ones(2).to(torch.float8_e5m2),
            "m": torch.tensor([True]),
        },
        path,
    )
    infos, _, _ = read_header(path)
    assert infos["a"].dtype == torch.float8_e4m3fn and infos["b"].dtype == torch.float8_e5m2
    assert infos["m"].dtype == torch.bool


def test_header_without_metadata_and_with_padding(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode() + b"   "
    path = raw_safetensors(tmp_path / "m.safetensors", header, b"\0" * 8)
    infos, metadata, data_start = read_header(path)
    assert metadata == {} and list(infos) == ["x"] and data_start == 8 + len(header)


def test_zero_size_tensors_may_share_an_offset(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "z1": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
        "z2": {"dtype": "I8", "shape": [0], "data_offsets": [4, 4]},
    }
    infos, _, _ = read_header(raw_safetensors(tmp_path / "z.safetensors", header, b"\0" * 4))
    assert list(infos) == ["a", "z1", "z2"]


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# (header, data bytes, substrings the message must contain)
CORRUPT = {
    "header_not_utf8": (b'{"a": "\xff\xfe"}', b"", ["not valid UTF-8"]),
    "header_not_json": (b'{"a": {"dtype": ', b"", ["not valid JSON"]),
    "header_not_object": (b"[1, 2]", b"", ["not an object"]),
    "duplicate_names": (
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        b"\0" * 8,
        ["'a' twice", "unique names"],
    ),
    "unknown_dtype": ({"a": _entry(dtype="Q7")}, b"\0" * 8, ["'a'", "'Q7'", "convert"]),
    "shape_disagrees_with_bytes": (
        {"a": _entry(shape=(3,), offsets=(0, 8))},
        b"\0" * 8,
        ["'a'", "F32 [3] (12 bytes)", "span 8 bytes"],
    ),
    "negative_offset": ({"a": _entry(offsets=(-8, 0))}, b"", ["'a'", "negative"]),
    "reversed_offsets": ({"a": _entry(shape=(0,), offsets=(8, 0))}, b"\0" * 8, ["'a'", "before it begins"]),
    "past_end_of_file": (
        {"x": _entry(shape=(300,), offsets=(0, 1200))},
        b"\0" * 1000,
        ["tensor 'x' ends at byte 1200 but the file has 1000 data bytes", "truncated or corrupt", "re-download"],
    ),
    "overlap": (
        {"a": _entry(shape=(4,), offsets=(0, 16)), "b": _entry(shape=(2,), offsets=(8, 16))},
        b"\0" * 16,
        ["'b' starts at byte 8, inside tensor 'a'", "overlapping"],
    ),
    "hole_between": (
        {"a": _entry(shape=(1,), offsets=(0, 4)), "b": _entry(shape=(1,), offsets=(8, 12))},
        b"\0" * 12,
        ["4 unused bytes after tensor 'a'", "'b' starts at byte 8"],
    ),
    "hole_at_start": ({"a": _entry(shape=(1,), offsets=(4, 8))}, b"\0" * 8, ["4 unused bytes at the start"]),
    "trailing_bytes": ({"a": _entry(shape=(1,), offsets=(0, 4))}, b"\0" * 10, ["6 bytes after the last tensor"]),
    "bad_shape": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", ["'a'", "shape [-1]"]),
    "bool_in_shape": ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, ["shape [True]"]),
    "offsets_not_pair": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"", ["data_offsets [0]"]),
    "missing_keys": ({"a": {"dtype": "F32"}}, b"", ["'a' lacks shape, data_offsets"]),
    "entry_not_object": ({"a": 3}, b"", ["'a' has no dtype/shape/data_offsets"]),
    "bad_metadata": ({"__metadata__": {"k": 1}}, b"", ["__metadata__ must map strings to strings"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_headers_are_refused_with_a_message_naming_the_file(tmp_path, case):
    header, data, expected = CORRUPT[case]
    path = raw_safetensors(tmp_path / f"{case}.safetensors", header, data)
    with pytest.raises(CheckpointError) as exc:
        read_header(path)
    message = str(exc.value)
    assert f"{case}.safetensors" in message
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_file_shorter_than_8_bytes(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: only 3 bytes.*re-download"):
        read_header(path)


def test_header_longer_than_the_file(tmp_path):
    path = raw_safetensors(tmp_path / "long.safetensors", b"{}", header_len=5000)
    with pytest.raises(CheckpointError, match=r"long\.safetensors: header claims 5000 bytes but the file has only 2"):
        read_header(path)


def test_header_over_the_bound_is_refused_without_reading_it(tmp_path, monkeypatch):
    # A sparse file really is large enough for the claimed header: only the bound can reject it.
    path = tmp_path / "huge.safetensors"
    claimed = MAX_HEADER_BYTES + 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", claimed))
        f.truncate(8 + claimed + 8)
    reads = []
    real_pread, real_read = os.pread, os.read

    def spy_pread(fd, n, offset):
        reads.append(n)
        return real_pread(fd, n, offset)

    def spy_read(fd, n):
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "pread", spy_pread)
    monkeypatch.setattr(os, "read", spy_read)
    with pytest.raises(CheckpointError, match=r"huge\.safetensors: header claims \d+ bytes, more than the 100000000"):
        read_header(path)
    assert max(reads) <= 8, "the oversized header must not be read"


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: no such file"):
        read_header(tmp_path / "nope.safetensors")

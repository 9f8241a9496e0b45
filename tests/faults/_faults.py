"""What every fault case asserts: exit code 2, one ``error:`` line naming the culprit, no output (or the previous
output untouched), no staging or lock leftovers, and inputs byte-identical (sha256 before and after)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

from tests.helpers import run_cli, tree_hashes, write_yaml


def ties_config(fam, **over) -> dict:
    cfg = {
        "merge_method": "ties",
        "base_model": str(fam.base),
        "parameters": {"weight": 1.0, "density": 0.5},
        "models": [{"model": str(p)} for p in fam.experts[:2]],
    }
    cfg.update(over)
    return cfg


def with_first_expert(fam, path: Path, **over) -> dict:
    cfg = ties_config(fam, **over)
    cfg["models"][0]["model"] = str(path)
    return cfg


def leftovers(parent: Path, name: str = "out") -> list[Path]:
    """Staging directories and lock files a run may leave beside its output."""
    return sorted(parent.glob(f".{name}.mergesmith-*"))


def expect_refusal(tmp_path: Path, config, *needles: str, args=(), inputs=(), out: Path | None = None) -> str:
    """Run ``mergesmith merge`` and assert the refusal contract; returns the error line.

    If ``out`` already exists it must come through byte-identical (a failed merge never damages the previous
    output, even with --force); otherwise it must not exist afterwards.
    """
    path = write_yaml(tmp_path / "c.yaml", config) if isinstance(config, dict) else Path(config)
    out = out or tmp_path / "out"
    watched = [Path(p) for p in inputs] + [path]
    before = {str(p): _hashes(p) for p in watched}
    previous = tree_hashes(out) if out.exists() else None
    result = run_cli("merge", path, out, "--quiet", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    if previous is None:
        assert not out.exists()
    else:
        assert tree_hashes(out) == previous
    assert leftovers(out.parent, out.name) == []
    assert {str(p): _hashes(p) for p in watched} == before, "an input was modified"
    return lines[0]


def expect_cli_refusal(args, *needles: str, out: Path | None = None, inputs=(), code: int = 2) -> str:
    """Run any ``mergesmith`` command and assert the same contract as ``expect_refusal``: exit ``code``, one
    ``error:`` line holding every needle, ``out`` absent (or byte-identical if it existed), no staging or lock
    beside it, every input byte-identical. Returns the error line."""
    watched = [Path(p) for p in inputs]
    before = {str(p): _hashes(p) for p in watched}
    previous = tree_hashes(out) if out is not None and out.is_dir() and not out.is_symlink() else None
    existed = out is not None and (out.exists() or out.is_symlink())
    result = run_cli(*args)
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out is not None:
        if previous is not None:
            assert tree_hashes(out) == previous
        elif not existed:
            assert not out.exists() and not out.is_symlink()
        assert leftovers(out.parent, out.name) == []
    assert {str(p): _hashes(p) for p in watched} == before, "an input was modified"
    return lines[0]


def _hashes(path: Path) -> dict[str, str]:
    if path.is_dir():
        return tree_hashes(path)
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()} if path.exists() else {}


def copy_model(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def first_shard(directory: Path) -> Path:
    return sorted(directory.glob("*.safetensors"))[0]


def read_raw_header(path: Path) -> tuple[dict, bytes]:
    """(header dict in file order, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_raw(path: Path, header: dict | str, data: bytes) -> None:
    """Write a safetensors file with an arbitrary (possibly lying) header, padded to 8 bytes."""
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)

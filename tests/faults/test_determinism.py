"""Same config + seed -> byte-identical shards and manifest, whatever the thread count, run or shard size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.faults._faults import ties_config
from tests.helpers import run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e

THREADS = (1, 2, 8)
SHARD_SIZES = ("5GB", "60KB", "20KB")


def _tensor_bytes(directory: Path) -> dict[str, str]:
    """sha256 of every tensor's raw little-endian bytes, whichever shard it landed in."""
    out = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name).contiguous()
                out[name] = hashlib.sha256(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_byte_identical_across_runs_threads_and_shard_sizes(llama_family, tmp_path, method):
    config = write_yaml(tmp_path / "c.yaml", ties_config(llama_family, merge_method=method, seed=7))
    trees: dict[tuple[str, int, int], dict[str, str]] = {}
    for size in SHARD_SIZES:
        for threads in THREADS:
            for run in (0, 1) if threads == 2 else (0,):
                out = tmp_path / f"{size}-{threads}-{run}"
                result = run_cli("merge", config, out, "--quiet", "--threads", threads, "--max-shard-size", size)
                assert result.exit_code == 0, result.output
                trees[size, threads, run] = tree_hashes(out)
    for size in SHARD_SIZES:
        # Threads and reruns change nothing: every file (shards, index, config, manifest, card) is identical.
        variants = [tree for key, tree in trees.items() if key[0] == size]
        assert all(tree == variants[0] for tree in variants), size
        manifest = json.loads((tmp_path / f"{size}-1-0" / "mergesmith.json").read_text())
        shards = {name: h for name, h in variants[0].items() if name.endswith(".safetensors")}
        assert shards.items() <= manifest["outputs"].items() and manifest["seed"] == 7
    assert len({len([n for n in trees[s, 1, 0] if n.endswith(".safetensors")]) for s in SHARD_SIZES}) == 3
    # Shard size changes how tensors are grouped into files, never a tensor's bytes or the input hashes.
    tensors = {size: _tensor_bytes(tmp_path / f"{size}-1-0") for size in SHARD_SIZES}
    assert tensors["5GB"] == tensors["60KB"] == tensors["20KB"]
    inputs = {
        size: json.loads((tmp_path / f"{size}-1-0" / "mergesmith.json").read_text())["inputs"] for size in SHARD_SIZES
    }
    assert inputs["5GB"] == inputs["60KB"] == inputs["20KB"]
    # The seed matters (so the equalities above are not vacuous).
    assert run_cli("merge", config, tmp_path / "seed8", "--quiet", "--seed", "8").exit_code == 0
    assert _tensor_bytes(tmp_path / "seed8") != tensors["5GB"]

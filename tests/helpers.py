"""Small helpers shared by tests: run the CLI in-process, read a merged model's tensors, hash a tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from click.testing import CliRunner
from safetensors import safe_open


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str):
    from mergesmith.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def load_tensors(directory: Path) -> dict:
    tensors = {}
    for shard in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).rglob("*"))
        if p.is_file()
    }

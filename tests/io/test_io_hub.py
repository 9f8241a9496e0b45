"""Hub repo ids: parsed strictly; offline resolution uses only the cache. Never touches the network.

huggingface_hub reads HF_HUB_OFFLINE and HF_HOME at import time, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergesmith.io.hub import parse_repo_id

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("org/name", ("org/name", None)),
        ("meta-llama/Llama-3.1-8B", ("meta-llama/Llama-3.1-8B", None)),
        ("org/name@main", ("org/name", "main")),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
        ("org/name@0123abc", ("org/name", "0123abc")),
        ("name", None),
        ("/abs/path", None),
        ("./rel/path", None),
        ("a/b/c", None),
        ("org/..", None),
        ("C:/models", None),
        ("org/name@", None),
    ],
)
def test_parse_repo_id(text, expected):
    assert parse_repo_id(text) == expected


def _run_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "repo,revision_flag", [("some-org/some-model", ""), ("some-org/some-model@v2", " --revision v2")]
)
def test_uncached_model_offline_is_a_clear_error(tmp_path, repo, revision_flag):
    result = _run_offline(
        tmp_path / "hf",
        f"""
        from mergesmith.errors import CheckpointError
        from mergesmith.io import open_checkpoint
        try:
            open_checkpoint({repo!r})
        except CheckpointError as e:
            print("MESSAGE:", e)
        else:
            print("NO ERROR")
        """,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.split("MESSAGE: ", 1)[1].strip()
    assert f"'{repo}' is not a local path" in message
    assert "not in the local cache" in message and "HF_HUB_OFFLINE is set" in message
    assert f"hf download some-org/some-model{revision_flag}" in message


def test_cached_model_offline_opens_from_the_cache(tmp_path):
    # Lay out the hub cache as huggingface_hub does: refs/main -> commit, snapshots/<commit>/<files>.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hf" / "hub" / "models--some-org--cached-model"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text('{"architectures": ["TinyModel"]}')

    result = _run_offline(
        tmp_path / "hf",
        """
        from mergesmith.io import open_checkpoint
        with open_checkpoint("some-org/cached-model") as ckpt:
            print(ckpt.root.name, ckpt.architecture(), ckpt.read("w", rows=slice(1, 2)).tolist())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [commit, "TinyModel", "[[3.0,", "4.0,", "5.0]]"]


def test_existing_local_path_wins_over_repo_id_lookalike(tmp_path, monkeypatch):
    local = tmp_path / "org" / "name"
    local.mkdir(parents=True)
    save_file({"w": torch.ones(1)}, local / "model.safetensors")
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be consulted for an existing local path")

    monkeypatch.setattr("mergesmith.io.checkpoint.resolve_hub", no_hub)
    from mergesmith.io import open_checkpoint

    with open_checkpoint("org/name") as ckpt:
        assert list(ckpt.tensors) == ["w"]

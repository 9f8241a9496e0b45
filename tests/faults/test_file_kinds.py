"""Files that are not what their names say: FIFOs named like checkpoints, configs or data (``open()`` on them blocks
for ever), and symlinks leading out of a model directory (a shard read from elsewhere, a private key copied into a
model people upload). Hugging Face cache snapshots, whose files are symlinks into the cache's ``blobs/``, must keep
working."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.faults._faults import (
    copy_model,
    expect_cli_refusal,
    expect_refusal,
    first_shard,
    ties_config,
    with_first_expert,
)
from tests.helpers import run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n"


@pytest.fixture(autouse=True)
def no_hang():
    """A regression would block in open() for ever: fail the test instead of hanging the suite."""

    def hung(signum, frame):
        raise AssertionError("blocked: a FIFO was opened for reading")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "private" / "id_ed25519"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def _fifo(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


# ---- FIFOs ------------------------------------------------------------------------------------------------------


def test_fifo_named_like_a_shard(llama_family, tmp_path):
    model = copy_model(llama_family.experts[0], tmp_path / "fifo_shard")
    shard = _fifo(first_shard(model))
    expect_refusal(tmp_path, with_first_expert(llama_family, model), shard.name, "not a regular file")


def test_fifo_given_as_the_checkpoint_file(llama_family, tmp_path):
    fifo = _fifo(tmp_path / "model.safetensors")
    expect_refusal(tmp_path, with_first_expert(llama_family, fifo), str(fifo), "not a regular file")


def test_fifo_named_model_safetensors_in_a_directory(llama_family, tmp_path):
    model = tmp_path / "single"
    model.mkdir()
    shutil.copy(llama_family.experts[0] / "config.json", model / "config.json")
    _fifo(model / "model.safetensors")
    expect_refusal(tmp_path, with_first_expert(llama_family, model), "model.safetensors", "not a regular file")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "generation_config.json"])
def test_fifo_named_like_a_side_file_of_the_base(llama_family, tmp_path, name):
    base = copy_model(llama_family.base, tmp_path / "base")
    _fifo(base / name)
    cfg = ties_config(llama_family, base_model=str(base))
    expect_refusal(tmp_path, cfg, name, "not a regular file")


def test_fifo_as_the_merge_config(tmp_path):
    fifo = _fifo(tmp_path / "config.yaml")
    expect_cli_refusal(
        ("merge", fifo, tmp_path / "out", "--quiet"), str(fifo), "not a regular file", out=tmp_path / "out"
    )
    expect_cli_refusal(("plan", fifo), str(fifo), "not a regular file")


def test_fifo_as_the_pool_file(tmp_path):
    fifo = _fifo(tmp_path / "pool.yaml")
    out = tmp_path / "run"
    expect_cli_refusal(("bench", "--pool", fifo, "--out", out, "--quiet"), str(fifo), "not a regular file", out=out)


def test_fifo_as_a_continual_state(llama_family, tmp_path):
    previous = copy_model(llama_family.experts[0], tmp_path / "prev")
    _fifo(previous / "continual.json")
    out = tmp_path / "out"
    expect_cli_refusal(
        ("continual", "add", previous, llama_family.experts[1], out, "--base", llama_family.base, "--quiet"),
        "continual.json",
        "not a regular file",
        out=out,
    )


# ---- symlinks out of a model directory -----------------------------------------------------------------------------


def test_shard_symlinked_to_a_file_elsewhere_is_refused(llama_family, tmp_path):
    model = copy_model(llama_family.experts[0], tmp_path / "linked")
    shard = first_shard(model)
    elsewhere = tmp_path / "elsewhere.safetensors"
    shard.rename(elsewhere)
    shard.symlink_to(elsewhere)
    line = expect_refusal(tmp_path, with_first_expert(llama_family, model), shard.name, "outside the model directory")
    assert str(elsewhere) in line
    planned = run_cli("plan", tmp_path / "c.yaml")
    assert planned.exit_code == 2 and planned.output.strip() == line


def test_symlink_inside_the_model_directory_is_fine(llama_family, tmp_path):
    model = copy_model(llama_family.experts[0], tmp_path / "inner")
    shard = first_shard(model)
    hidden = model / "blobs" / "shard"
    hidden.parent.mkdir()
    shard.rename(hidden)
    shard.symlink_to(Path("blobs") / "shard")
    config = write_yaml(tmp_path / "c.yaml", with_first_expert(llama_family, model))
    assert run_cli("merge", config, tmp_path / "out", "--quiet").exit_code == 0


@pytest.mark.parametrize("name", ["tokenizer.json", "generation_config.json", "config.json"])
def test_side_file_symlinked_to_a_private_key_is_never_copied_by_merge(llama_family, tmp_path, secret, name):
    base = copy_model(llama_family.base, tmp_path / "base")
    (base / name).unlink()
    (base / name).symlink_to(secret)
    cfg = ties_config(llama_family, base_model=str(base))
    expect_refusal(tmp_path, cfg, name, "outside the model directory", inputs=[base])


def test_protect_and_continual_refuse_a_symlinked_tokenizer(llama_family, tmp_path, secret):
    model = copy_model(llama_family.experts[0], tmp_path / "model")
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(secret)
    out = tmp_path / "protected"
    expect_cli_refusal(
        ("protect", model, out, "--quiet"), "tokenizer.json", "outside the model directory", out=out, inputs=[model]
    )
    out = tmp_path / "continued"
    expect_cli_refusal(
        ("continual", "add", model, llama_family.experts[1], out, "--base", llama_family.base, "--quiet"),
        "tokenizer.json",
        "outside the model directory",
        out=out,
        inputs=[model],
    )


def test_copy_side_files_refuses_a_link_out_and_copies_nothing_of_it(tmp_path, secret):
    from mergesmith.errors import CheckpointError
    from mergesmith.io.model_files import copy_side_files

    model, out = tmp_path / "model", tmp_path / "out"
    model.mkdir()
    out.mkdir()
    (model / "vocab.txt").symlink_to(secret)
    with pytest.raises(CheckpointError, match="vocab.txt.*outside the model directory"):
        copy_side_files(model, out)
    assert not (out / "vocab.txt").exists()


# ---- Hugging Face cache snapshots --------------------------------------------------------------------------------


def _as_hub_cache(model: Path, cache: Path, revision: str = "0123456789abcdef") -> Path:
    """Lay ``model`` out as the hub cache does: blobs named by hash, snapshot files symlinking to ../../blobs."""
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(model.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    return snapshot


def test_hub_cache_snapshot_merges_like_the_plain_directory(llama_family, tmp_path):
    snapshot = _as_hub_cache(llama_family.experts[0], tmp_path / "hub")
    config = write_yaml(
        tmp_path / "hub.yaml", with_first_expert(llama_family, snapshot, base_model=str(llama_family.base))
    )
    plain = write_yaml(tmp_path / "plain.yaml", with_first_expert(llama_family, llama_family.experts[0]))
    assert run_cli("merge", config, tmp_path / "from_hub", "--quiet").exit_code == 0
    assert run_cli("merge", plain, tmp_path / "from_plain", "--quiet").exit_code == 0
    hub, ref = tree_hashes(tmp_path / "from_hub"), tree_hashes(tmp_path / "from_plain")
    differ = {k for k in ref if hub.get(k) != ref[k]}
    assert differ <= {"README.md", "mergesmith.json"}  # they name the input paths; tensors and configs are equal


def test_hub_cache_snapshot_as_the_tokenizer_source(llama_family, tmp_path):
    snapshot = _as_hub_cache(llama_family.base, tmp_path / "hub")
    cfg = ties_config(llama_family, base_model=str(snapshot))
    config = write_yaml(tmp_path / "c.yaml", cfg)
    assert run_cli("merge", config, tmp_path / "out", "--quiet").exit_code == 0
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (llama_family.base / "tokenizer.json").read_bytes()


def test_hub_snapshot_link_into_another_repository_is_refused(llama_family, tmp_path, secret):
    snapshot = _as_hub_cache(llama_family.base, tmp_path / "hub")
    other = tmp_path / "hub" / "models--evil--repo" / "blobs"
    other.mkdir(parents=True)
    shutil.copyfile(secret, other / "key")
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to(Path("..") / ".." / ".." / "models--evil--repo" / "blobs" / "key")
    expect_refusal(
        tmp_path, ties_config(llama_family, base_model=str(snapshot)), "tokenizer.json", "outside the model directory"
    )

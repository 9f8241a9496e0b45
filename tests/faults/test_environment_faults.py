"""The machine misbehaves: a full disk, an unwritable output, two merges racing, a merge killed mid-way."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest

from tests.faults._child import run
from tests.faults._faults import expect_refusal, leftovers, ties_config
from tests.helpers import run_cli, tree_hashes, write_yaml

pytestmark = pytest.mark.e2e

SHARD = "60KB"  # several output shards, so the output has an index like a real model


class _Child:
    """A forked child running the CLI with a fault (tests.faults._child.run); its stderr goes to a file."""

    def __init__(self, tmp_path: Path, mode: str, value, *cli_args):
        self.stderr_path = tmp_path / f"child-{mode}-{time.monotonic_ns()}.err"
        ctx = multiprocessing.get_context("fork")
        self.process = ctx.Process(target=run, args=(mode, value, list(cli_args), str(self.stderr_path)))
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise AssertionError(f"the child did not finish in {timeout} s: {self.stderr()}")
        return self.process.exitcode, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""


def _config(fam, tmp_path: Path, method: str = "dare_ties") -> Path:
    cfg = ties_config(fam, merge_method=method)
    return write_yaml(tmp_path / "c.yaml", cfg)


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_disk_full_is_a_clean_error_and_keeps_the_previous_output(llama_family, tmp_path):
    config = _config(llama_family, tmp_path)
    out = tmp_path / "out"
    assert run_cli("merge", config, out, "--quiet", "--max-shard-size", SHARD).exit_code == 0
    previous = tree_hashes(out)
    inputs = {str(p): tree_hashes(p) for p in (llama_family.base, *llama_family.experts[:2])}
    code, stderr = _Child(tmp_path, "fsize", 100_000, "merge", config, out, "--quiet", "--force").wait()
    assert code == 2, stderr
    line = _error_line(stderr)
    assert str(out) in line and "File too large" in line and "free disk space" in line
    assert tree_hashes(out) == previous
    assert leftovers(tmp_path) == []
    assert {str(p): tree_hashes(p) for p in (llama_family.base, *llama_family.experts[:2])} == inputs


def test_output_directory_not_writable(llama_family, tmp_path):
    config = _config(llama_family, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        # Root ignores permission bits: the child gives up the capabilities that let it.
        mode = "nocaps" if os.geteuid() == 0 else "plain"
        code, stderr = _Child(tmp_path, mode, 0, "merge", config, locked / "out", "--quiet").wait()
        assert code == 2, stderr
        line = _error_line(stderr)
        assert str(locked) in line and "permission denied" in line and "writable output location" in line
        assert list(locked.iterdir()) == []
    finally:
        os.chmod(locked, 0o755)


def test_output_parent_is_a_file(llama_family, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    line = expect_refusal(tmp_path, ties_config(llama_family), str(blocker), out=blocker / "out")
    assert "choose a writable output location" in line
    assert blocker.read_text() == "not a directory"


def test_output_inside_an_input_is_refused(llama_family, tmp_path):
    inputs = [llama_family.base, *llama_family.experts[:2]]
    out = llama_family.experts[0] / "merged"
    expect_refusal(
        tmp_path, ties_config(llama_family), "overlaps input", str(llama_family.experts[0]), inputs=inputs, out=out
    )


def test_existing_output_needs_force_and_survives_the_refusal(llama_family, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    expect_refusal(tmp_path, ties_config(llama_family), str(out), "--force", out=out)
    config = write_yaml(tmp_path / "c.yaml", ties_config(llama_family))
    assert run_cli("merge", config, out, "--quiet", "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_a_failed_forced_merge_keeps_the_previous_output(llama_family, tmp_path):
    out = tmp_path / "out"
    assert run_cli("merge", write_yaml(tmp_path / "ok.yaml", ties_config(llama_family)), out, "--quiet").exit_code == 0
    bad = ties_config(llama_family)
    bad["models"][0]["model"] = str(tmp_path / "gone")
    expect_refusal(tmp_path, bad, "gone", args=("--force",), out=out)


def test_two_merges_writing_one_output_the_second_refuses(llama_family, tmp_path):
    config = _config(llama_family, tmp_path)
    out = tmp_path / "out"
    signal_base = str(tmp_path / "signal")
    first = _Child(tmp_path, "pause", (2, signal_base), "merge", config, out, "--quiet", "--max-shard-size", SHARD)
    try:
        deadline = time.monotonic() + 60
        while not Path(signal_base + ".paused").exists():
            assert first.poll() is None, first.stderr()
            assert time.monotonic() < deadline, "the first merge never reached its pause"
            time.sleep(0.02)
        staging_before = leftovers(tmp_path)
        second = run_cli("merge", config, out, "--quiet", "--force")
        assert second.exit_code == 2, second.output
        line = _error_line(second.output)
        assert "another mergesmith run is writing" in line and str(out) in line and "wait for it" in line
        assert leftovers(tmp_path) == staging_before  # the second run took nothing from the first
        assert not out.exists()
    finally:
        Path(signal_base + ".resume").touch()
        code, stderr = first.wait()
    assert code == 0, stderr
    assert run_cli("merge", config, tmp_path / "reference", "--quiet", "--max-shard-size", SHARD).exit_code == 0
    assert tree_hashes(out) == tree_hashes(tmp_path / "reference")
    assert leftovers(tmp_path) == []


def _looks_complete(path: Path) -> bool:
    return (path / "config.json").exists() and (
        (path / "model.safetensors.index.json").exists() or (path / "model.safetensors").exists()
    )


def test_killed_merges_leave_nothing_that_looks_complete_and_reruns_are_byte_identical(llama_family, tmp_path):
    config = _config(llama_family, tmp_path)
    reference = tmp_path / "reference"
    assert run_cli("merge", config, reference, "--quiet", "--max-shard-size", SHARD).exit_code == 0
    expected = tree_hashes(reference)
    assert "model.safetensors.index.json" in expected
    from mergesmith.api import plan_merge

    total = len(plan_merge(config).jobs)
    for n in (1, total // 2, total):  # the first tensor, mid-way, after the last tensor (before the index)
        out = tmp_path / f"out_{n}"
        child = _Child(tmp_path, "kill", n, "merge", config, out, "--quiet", "--max-shard-size", SHARD)
        polls, deadline = 0, time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline:  # watch the output the whole time it runs
            assert not out.exists(), f"{out} appeared before the merge finished"
            polls += 1
            time.sleep(0.001)
        code, stderr = child.wait()
        assert code == -9, f"child was not killed at tensor {n}: {stderr}"
        assert polls > 0 and not out.exists()
        staged = [p for p in leftovers(tmp_path, out.name) if p.is_dir()]
        assert len(staged) == 1 and not _looks_complete(staged[0])  # the killed run's debris is hidden, incomplete
        rerun = run_cli("merge", config, out, "--quiet", "--max-shard-size", SHARD)
        assert rerun.exit_code == 0, rerun.output
        assert tree_hashes(out) == expected
        assert leftovers(tmp_path, out.name) == []  # the rerun removed the dead run's staging and lock


def test_a_merge_opens_no_network_connection(llama_family, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    config = write_yaml(tmp_path / "c.yaml", ties_config(llama_family))
    result = run_cli("merge", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output


def test_lock_released_between_open_and_flock_is_not_shared(tmp_path, monkeypatch):
    """Run A finishes (unlinking its lock file) just after run B opened that file but before B locks it. B must not
    count a lock on the deleted file: otherwise run C creates a fresh lock file, locks it too, and B and C write
    (and clear each other's staging) at once."""
    import fcntl

    from mergesmith.errors import MergesmithError
    from mergesmith.io import atomic

    out = tmp_path / "out"
    first = atomic.StagedOutput(out)
    first.__enter__()
    real_flock = fcntl.flock
    state = {"raced": False}

    def racing_flock(fd, operation):
        if not state["raced"]:
            state["raced"] = True
            first.__exit__(None, None, None)  # A finishes right now: unlinks and releases its lock file
        return real_flock(fd, operation)

    monkeypatch.setattr(atomic.fcntl, "flock", racing_flock)
    second = atomic.StagedOutput(out)
    staging = second.__enter__()
    monkeypatch.setattr(atomic.fcntl, "flock", real_flock)
    try:
        assert state["raced"] and staging.is_dir()
        with pytest.raises(MergesmithError, match="another mergesmith run is writing"):
            atomic.StagedOutput(out).__enter__()
        assert staging.is_dir()  # the refused run did not clear B's staging
    finally:
        second.__exit__(None, None, None)
    assert leftovers(tmp_path) == []

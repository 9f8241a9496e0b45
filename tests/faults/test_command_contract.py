"""The error contract of every command: stop signals clean up like Ctrl-C, out of memory is one line, a bad
``--max-shard-size`` or output path is refused before any work, and no error line can be split by a control
character in a path."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults._faults import copy_model, expect_cli_refusal, expect_refusal, leftovers, ties_config
from tests.faults.test_environment_faults import SHARD, _Child, _config
from tests.helpers import run_cli, write_yaml

pytestmark = pytest.mark.e2e


# ---- signals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signals_mid_merge_remove_staging_and_lock(llama_family, tmp_path, signum):
    """What `timeout`, systemd and container runtimes send: the merge unwinds, leaving neither the staging
    directory nor the lock file, and exits with 128 + the signal number and one line."""
    config = _config(llama_family, tmp_path)
    out = tmp_path / "out"
    signal_base = str(tmp_path / "signal")
    child = _Child(tmp_path, "pause", (2, signal_base), "merge", config, out, "--quiet", "--max-shard-size", SHARD)
    deadline = time.monotonic() + 60
    while not Path(signal_base + ".paused").exists():
        assert child.poll() is None, child.stderr()
        assert time.monotonic() < deadline, "the merge never reached its pause"
        time.sleep(0.02)
    assert leftovers(tmp_path) != []  # mid-merge: staging and lock exist
    os.kill(child.process.pid, signum)
    code, stderr = child.wait()
    assert code == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no output was written" in lines[0], stderr
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_the_signal_handlers_are_restored_after_a_command(llama_family, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    run_cli("plan", write_yaml(tmp_path / "c.yaml", ties_config(llama_family)))
    assert {s: signal.getsignal(s) for s in before} == before


# ---- out of memory ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
)
def test_out_of_memory_during_a_merge_is_one_line(llama_family, tmp_path, monkeypatch, error):
    from mergesmith.io.safetensors_file import SafetensorsFile

    real = SafetensorsFile._pread
    calls = []

    def allocate(self, offset, nbytes, name):
        calls.append(name)
        if len(calls) > 3:  # mid-merge, in a worker thread, as a large tensor's buffer would fail
            raise error
        return real(self, offset, nbytes, name)

    monkeypatch.setattr(SafetensorsFile, "_pread", allocate)
    line = expect_refusal(
        tmp_path,
        ties_config(llama_family),
        "out of memory",
        "--threads 1",
        "--memory-budget",
        inputs=[llama_family.base, *llama_family.experts[:2]],
    )
    assert "no output was written" in line


def test_a_runtime_error_that_is_not_memory_is_not_called_out_of_memory(llama_family, tmp_path, monkeypatch):
    from mergesmith.io.safetensors_file import SafetensorsFile

    def broken(self, offset, nbytes, name):
        raise RuntimeError("a bug")

    monkeypatch.setattr(SafetensorsFile, "_pread", broken)
    line = expect_refusal(
        tmp_path,
        ties_config(llama_family),
        "failed: RuntimeError: a bug",
        inputs=[llama_family.base, *llama_family.experts[:2]],
    )
    assert "out of memory" not in line


# ---- --max-shard-size --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["0", "-1", "abc", "1.5B", "9" * 5000])
def test_bad_max_shard_size_in_every_command_that_takes_it(llama_family, tmp_path, size):
    config = write_yaml(tmp_path / "c.yaml", ties_config(llama_family))
    out = tmp_path / "out"
    commands = [
        ("merge", config, out, "--quiet"),
        ("protect", llama_family.experts[0], out, "--quiet"),
        (
            "continual",
            "add",
            llama_family.experts[0],
            llama_family.experts[1],
            out,
            "--base",
            llama_family.base,
            "--quiet",
        ),
    ]
    for command in commands:
        expect_cli_refusal((*command, "--max-shard-size", size), "--max-shard-size", out=out)


def test_bad_memory_budget(llama_family, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", ties_config(llama_family))
    out = tmp_path / "out"
    expect_cli_refusal(("merge", config, out, "--quiet", "--memory-budget", "0"), "--memory-budget", out=out)


def test_api_shard_size_errors_are_config_errors_and_value_errors():
    from mergesmith.errors import ConfigError
    from mergesmith.io.writer import plan_shards

    with pytest.raises(ConfigError, match="at least 1"):
        plan_shards([("a", __import__("torch").float32, (1,))], 0)
    with pytest.raises(ValueError):
        plan_shards([], "huge")


# ---- the output path, checked before any work -------------------------------------------------------------------


def _dangling(tmp_path: Path) -> Path:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere" / "out")
    return link


def _commands(fam, tmp_path, out):
    config = write_yaml(tmp_path / "c.yaml", ties_config(fam))
    return {
        "merge": ("merge", config, out, "--quiet"),
        "protect": ("protect", fam.experts[0], out, "--quiet"),
        "continual": ("continual", "add", fam.experts[0], fam.experts[1], out, "--base", fam.base, "--quiet"),
        "inspect": ("inspect", fam.base, fam.experts[0], "--quiet", "--out", out),
    }


@pytest.mark.parametrize("command", ["merge", "protect", "continual", "inspect"])
def test_dangling_symlink_output(llama_family, tmp_path, command):
    out = _dangling(tmp_path)
    line = expect_cli_refusal(
        _commands(llama_family, tmp_path, out)[command], str(out), "symbolic link", "does not exist", out=out
    )
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()
    assert line


@pytest.mark.parametrize("command", ["merge", "protect", "continual", "inspect"])
def test_existing_output_refused_before_any_work(llama_family, tmp_path, monkeypatch, command):
    """No checkpoint is opened (and so no progress bar starts) before the output path is known to be usable."""
    import mergesmith.io.checkpoint as checkpoint

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def no_work(*args, **kwargs):
        raise AssertionError("a checkpoint was opened before the output was checked")

    monkeypatch.setattr(checkpoint, "_open_directory", no_work)
    expect_cli_refusal(_commands(llama_family, tmp_path, out)[command], str(out), "--force", out=out)


@pytest.mark.parametrize("command", ["merge", "protect", "continual"])
def test_output_inside_an_input_refused_before_any_work(llama_family, tmp_path, monkeypatch, command):
    import mergesmith.io.checkpoint as checkpoint

    fam = llama_family
    model = copy_model(fam.experts[0], tmp_path / "model")
    out = model / "merged"
    config = write_yaml(
        tmp_path / "c.yaml", {**ties_config(fam), "models": [{"model": str(model)}, {"model": str(fam.experts[1])}]}
    )
    args = {
        "merge": ("merge", config, out, "--quiet"),
        "protect": ("protect", model, out, "--quiet"),
        "continual": ("continual", "add", model, fam.experts[1], out, "--base", fam.base, "--quiet"),
    }[command]
    monkeypatch.setattr(checkpoint, "_open_directory", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work")))
    expect_cli_refusal(args, "overlaps input", str(model), out=out, inputs=[model])


def test_adapt_refuses_an_existing_output_before_loading_anything(bert_family, tmp_path, monkeypatch):
    import mergesmith.bench.adapt_problem as problem

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    pool = write_yaml(
        tmp_path / "pool.yaml",
        {
            "base_model": str(bert_family.base),
            "tasks": [
                {
                    "name": "t",
                    "expert": str(bert_family.experts[0]),
                    "data": {"format": "csv", "validation": "v.csv", "test": "t.csv"},
                }
            ],
        },
    )
    monkeypatch.setattr(problem, "load_problem", lambda **k: (_ for _ in ()).throw(AssertionError("work")))
    expect_cli_refusal(("adapt", "regmean", out, "--pool", pool, "--quiet"), str(out), "--force", out=out)
    inside = bert_family.experts[0] / "adapted"
    expect_cli_refusal(("adapt", "regmean", inside, "--pool", pool, "--quiet"), "overlaps input", out=inside)


def test_bench_refuses_a_run_directory_that_is_a_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.write_text("a file")
    expect_cli_refusal(("bench", "--profile", "mini", "--out", run_dir, "--quiet"), str(run_dir), out=run_dir)
    assert run_dir.read_text() == "a file"


# ---- control characters in error lines -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["evil\nerror: forged line", "bell\x07name", "esc\x1b[31mred", "bidi\u202eevil"])
def test_a_control_character_in_a_path_cannot_forge_a_second_line(llama_family, tmp_path, name):
    cfg = ties_config(llama_family)
    cfg["models"][0]["model"] = str(tmp_path / name)
    line = expect_refusal(tmp_path, cfg, "no such file")
    assert not any(ch in line for ch in "\n\x07\x1b\u202e")
    assert ascii(name)[1:-1] in line  # escaped, still recognisable

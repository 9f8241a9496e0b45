"""Optional dependencies: a command whose extra is not installed says so in one line naming the extra (exit 2), and
merge, plan and methods run without any extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mergesmith import extras
from mergesmith.cli_errors import user_errors
from tests.helpers import run_cli, write_yaml

REPO = Path(__file__).resolve().parents[1]
EVERY_OPTIONAL = sorted({module for modules in extras.EXTRAS.values() for module in modules})


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_bench_without_matplotlib_names_the_bench_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("bench", "--profile", "mini", "--out", tmp_path / "run")
    assert _one_error_line(result) == (
        "error: mergesmith bench needs matplotlib; install it with pip install 'mergesmith[bench]'"
    )
    assert not (tmp_path / "run").exists()


def test_adapt_without_optuna_names_the_adapt_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = run_cli("adapt", "bmm", tmp_path / "out", "--pool", tmp_path / "pool.yaml")
    assert _one_error_line(result) == (
        "error: mergesmith adapt needs optuna; install it with pip install 'mergesmith[adapt]'"
    )
    assert not (tmp_path / "out").exists()


def test_protect_verify_without_transformers_refuses_before_writing(monkeypatch, tmp_path, llama_family):
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = run_cli("protect", llama_family.base, tmp_path / "out", "--verify", "-q")
    assert _one_error_line(result) == (
        "error: mergesmith protect needs transformers; install it with pip install 'mergesmith[hf]'"
    )
    assert not (tmp_path / "out").exists()


def test_inspect_needs_matplotlib_only_for_its_plots(monkeypatch, tmp_path, llama_family):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("inspect", llama_family.base, *llama_family.experts, "--out", tmp_path / "report", "-q")
    assert _one_error_line(result) == (
        "error: mergesmith inspect needs matplotlib; install it with pip install 'mergesmith[inspect]'"
    )
    assert run_cli("inspect", llama_family.base, *llama_family.experts, "-q", "--no-spectrum").exit_code == 0


def _command(name: str, body):
    @click.group()
    def group() -> None:
        pass

    @group.command(name)
    @user_errors
    def command() -> None:
        body()

    return group


def test_a_module_missing_mid_command_gets_the_same_line(monkeypatch):
    """The error handler, not only the check at a command's start, names the extra (a lazily imported module)."""
    monkeypatch.setitem(sys.modules, "rdata", None)

    def body() -> None:
        import rdata  # noqa: F401

    result = CliRunner().invoke(_command("bench", body), ["bench"])
    assert (
        _one_error_line(result)
        == "error: mergesmith bench needs rdata; install it with pip install 'mergesmith[bench]'"
    )


def test_a_missing_module_no_extra_installs_is_not_reported_as_an_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "not_a_mergesmith_dependency", None)

    def body() -> None:
        import not_a_mergesmith_dependency  # noqa: F401

    result = CliRunner().invoke(_command("merge", body), ["merge"])
    assert isinstance(result.exception, ModuleNotFoundError)
    assert result.exit_code == 1


def test_a_command_suggests_its_own_extra_else_the_smallest_one():
    assert extras.extra_for("matplotlib.pyplot", "bench") == "bench"
    assert extras.extra_for("matplotlib", "inspect") == "inspect"
    assert extras.extra_for("transformers", "continual add") == "hf"
    assert extras.extra_for("rdata", "adapt") == "bench"
    assert extras.extra_for("torch", "merge") is None


def test_pyproject_extras_install_what_extras_py_says():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["optional-dependencies"]
    for extra, modules in extras.EXTRAS.items():
        names = {_requirement_name(r) for r in declared[extra]}
        assert set(modules) <= names, extra
    core = {_requirement_name(r) for r in project["dependencies"]}
    assert not core & set(EVERY_OPTIONAL)
    (everything,) = declared["all"]
    assert everything.startswith("mergesmith[") and set(everything[11:-1].split(",")) == set(extras.EXTRAS)


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_every_command_with_an_extra_is_a_command():
    from mergesmith.cli import main

    assert set(extras.COMMAND_EXTRAS) <= set(main.commands)


def test_merge_plan_and_methods_run_without_any_extra(tmp_path, llama_family):
    """In a fresh interpreter where importing any optional module fails, as in an install without extras."""
    config = write_yaml(
        tmp_path / "ties.yaml",
        {
            "merge_method": "ties",
            "base_model": str(llama_family.base),
            "models": [{"model": str(e)} for e in llama_family.experts],
            "parameters": {"density": 0.5, "weight": 1.0},
        },
    )
    script = textwrap.dedent(f"""
        import sys
        for name in {EVERY_OPTIONAL!r}:
            sys.modules[name] = None
        from mergesmith.cli import main
        main(sys.argv[1:])
    """)
    for args in (["merge", str(config), str(tmp_path / "out"), "-q"], ["plan", str(config)], ["methods"]):
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
    assert (tmp_path / "out" / "config.json").is_file()

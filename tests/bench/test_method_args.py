"""``bench --methods METHOD:KEY=VALUE,...``: parsing, checking before any model is loaded, and a run that uses them."""

from __future__ import annotations

import json

import pytest

from mergesmith.bench.method_args import MethodChoice, grid_with, method_parameters, parse_methods
from mergesmith.errors import ConfigError
from tests.helpers import run_cli


def test_parse_methods():
    assert parse_methods("") == []
    assert parse_methods("linear, ties") == [MethodChoice("linear"), MethodChoice("ties")]
    assert parse_methods("ties:density=0.3,lambda=1,linear,regmean:alpha=0.5,data=unlabeled") == [
        MethodChoice("ties", {"density": 0.3, "lambda": 1}),
        MethodChoice("linear"),
        MethodChoice("regmean", {"alpha": 0.5, "data": "unlabeled"}),
    ]
    assert parse_methods("dare_ties:density=[0.2, 0.4],lambda=0.7") == [
        MethodChoice("dare_ties", {"density": [0.2, 0.4], "lambda": 0.7})
    ]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("density=0.3", "no method before it"),
        ("ties:", "not METHOD or METHOD:KEY=VALUE"),
        ("ties:density", "not METHOD or METHOD:KEY=VALUE"),
        ("ties,ties:density=0.2", "listed twice"),
    ],
)
def test_parse_errors(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_methods(text)


@pytest.mark.parametrize(
    "method,params,needle",
    [
        ("ties", {"densty": 0.3}, "unknown parameter 'densty'; allowed: density"),
        ("ties", {"density": 1.5}, "density must be in (0, 1], got 1.5"),
        ("ties", {"density": "abc"}, "density must be a number"),
        ("ties", {"density": [0.2]}, "1 values for 2 experts"),
        ("ties", {"lambda": [1, 2]}, "one value for all experts"),
        ("regmean", {"alpha": 2}, "'alpha'"),
        ("fisher", {"nope": 1}, "unknown parameter 'nope' for fisher"),
        ("della", {"density": 0.5, "epsilon": 0.6}, "density +/- epsilon"),
    ],
)
def test_parameter_errors(method, params, needle):
    with pytest.raises(ConfigError) as err:
        method_parameters([method], {method: params}, 2)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_parameters_are_converted_and_fix_grid_axes():
    fixed = method_parameters(["ties", "regmean", "linear"], {"ties": {"lambda": 1}, "regmean": {"alpha": 0.5}}, 2)
    assert fixed["ties"] == {"lambda": 1.0} and isinstance(fixed["ties"]["lambda"], float)
    assert fixed["regmean"].alpha == 0.5 and fixed["linear"] == {}
    grid = [{"density": 0.2, "lambda": 0.7}, {"density": 0.2, "lambda": 1.0}, {"density": 0.5, "lambda": 0.7}]
    assert grid_with(grid, {"lambda": 1.0}) == [{"density": 0.2, "lambda": 1.0}, {"density": 0.5, "lambda": 1.0}]
    assert method_parameters(["atlas"], {}, 2, progress=False)["atlas"].progress is False


@pytest.fixture(scope="module")
def pool_yaml(tmp_path_factory):
    from tests.adapt.pools import build_text_pool

    return build_text_pool(tmp_path_factory.mktemp("pool"))


def test_bench_runs_the_given_parameters(pool_yaml, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "bench",
        "--pool",
        pool_yaml,
        "--methods",
        "ties:density=0.3,lambda=1,regmean:alpha=0.5",
        "--out",
        run,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((run / "results.json").read_text())["rows"]}
    assert rows["ties"]["params"] == {"density": 0.3, "lambda": 1.0, "weight": 1.0}
    assert [g["params"] for g in rows["ties"]["grid"]] == [rows["ties"]["params"]]
    assert rows["regmean"]["adapt_params"]["alpha"] == 0.5


@pytest.mark.parametrize(
    "methods,needle",
    [("ties:density=1.5", "density must be in (0, 1]"), ("regmean:alpah=0.5", "unknown parameter 'alpah'")],
)
def test_bench_refuses_bad_parameters_before_any_work(pool_yaml, tmp_path, methods, needle):
    run = tmp_path / "run"
    result = run_cli("bench", "--pool", pool_yaml, "--methods", methods, "--out", run, "--quiet")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert not run.exists()


def test_protect_and_continual_modes_take_names_only(pool_yaml, tmp_path):
    result = run_cli(
        "bench", "--pool", pool_yaml, "--protect", "--methods", "task_arithmetic:lambda=0.3", "--out", tmp_path / "run"
    )
    assert result.exit_code == 2 and "--protect takes method names only" in result.output

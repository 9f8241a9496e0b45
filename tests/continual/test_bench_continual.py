"""``mergesmith bench --continual`` end to end on a tiny user pool: rows per method, order and step, the report."""

from __future__ import annotations

import json

import pytest

from mergesmith.bench.continual import task_orders
from tests.bench.test_pool import text_pool  # noqa: F401  (the tiny BERT pool fixture)
from tests.helpers import run_cli, write_yaml


def test_continual_bench_on_a_user_pool(text_pool, tmp_path):  # noqa: F811
    root, spec = text_pool
    pool = write_yaml(root / "pool.yaml", spec)
    run = tmp_path / "run"
    result = run_cli("bench", "--continual", "--pool", pool, "--orders", "2", "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((run / "results.json").read_text())
    assert results["kind"] == "continual" and results["orders"] == [["reviews", "topics"], ["topics", "reviews"]]
    methods = ["averaging", "task_arithmetic", "ties", "opcm"]
    assert [s["method"] for s in results["summary"]] == methods
    assert len(results["rows"]) == len(methods) * 2 * 2
    for row in results["rows"]:
        assert row["seen"] == row["order"][: row["step"]] and set(row["accuracy"]) == set(row["seen"])
        assert row["normalized"] is not None and (row["step"] == 1) == (row["add_seconds"] == 0.0)
    final = {(r["method"], r["order_index"]): r["accuracy"] for r in results["rows"] if r["step"] == 2}
    # averaging and task arithmetic do not depend on the order in which the experts arrive
    for method in ("averaging", "task_arithmetic"):
        assert final[(method, 0)] == final[(method, 1)]
    page = (run / "report.html").read_text()
    assert "data:image/png;base64," in page and "topics → reviews" in page
    assert (run / "continual.png").read_bytes()[:4] == b"\x89PNG"
    assert "final norm" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--continual", "--methods", "nope"], "unknown continual method 'nope'"),
        (["--continual", "--orders", "0"], "--orders 0"),
        (["--continual", "--protect"], "separate modes"),
    ],
)
def test_bad_input(tmp_path, args, message):
    result = run_cli("bench", *args, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_task_orders_are_distinct_and_seeded():
    names = ["a", "b", "c", "d"]
    orders = task_orders(names, 5, seed=0)
    assert orders[0] == names and len(orders) == 5
    assert len({tuple(o) for o in orders}) == 5 and all(sorted(o) == names for o in orders)
    assert orders == task_orders(names, 5, seed=0) and orders != task_orders(names, 5, seed=1)
    assert len(task_orders(["a", "b"], 5, seed=0)) == 2  # only 2 orders exist

"""A bench merge run in its own process: the child's exact peak RSS and wall time, and a one-line error when the
child fails."""

from __future__ import annotations

import pytest

from mergesmith.bench.merge_process import measure_merge
from mergesmith.errors import MergesmithError
from tests.helpers import write_yaml


def test_the_merge_runs_in_a_child_and_its_peak_memory_is_measured(gpt2_family, tmp_path):
    config = write_yaml(
        tmp_path / "linear.yaml",
        {
            "merge_method": "linear",
            "dtype": "float32",
            "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in gpt2_family.experts],
        },
    )
    cost = measure_merge(config, tmp_path / "out", threads=1)
    assert cost.peak_memory_mb > 10 and cost.seconds > 0  # an interpreter with torch loaded is tens of MB at least
    assert (tmp_path / "out" / "config.json").is_file()
    # What the bench itself holds is not the merge's: a child forked from a process holding 500 MB more must report
    # the same peak (Linux keeps a process's peak RSS across exec, so a child forked straight from the bench would
    # report at least the bench's RSS).
    ballast = bytearray(500_000_000)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: resident, not just reserved
    again = measure_merge(config, tmp_path / "out2", threads=1)
    del ballast
    assert abs(again.peak_memory_mb - cost.peak_memory_mb) < 100, (cost, again)


def test_a_failing_child_raises_one_line_with_its_error(gpt2_family, tmp_path):
    config = write_yaml(
        tmp_path / "bad.yaml",
        {"merge_method": "linear", "models": [{"model": str(tmp_path / "no_such_model")}]},
    )
    with pytest.raises(MergesmithError) as caught:
        measure_merge(config, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and "bad.yaml" in message and "no_such_model" in message
    assert not (tmp_path / "out").exists()

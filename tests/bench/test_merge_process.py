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

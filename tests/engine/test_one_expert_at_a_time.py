"""Sum-like methods read one expert's block at a time, so a merge's memory does not grow with the number of experts."""

from __future__ import annotations

import weakref

import pytest
import torch

from mergesmith.api import merge, merge_state_dicts
from mergesmith.engine import execute
from mergesmith.engine.execute import job_cost
from mergesmith.methods import METHODS
from mergesmith.tiny_models import build_tiny_family
from tests.helpers import load_tensors

N_EXPERTS = 16


@pytest.fixture(scope="module")
def many_experts(tmp_path_factory):
    return build_tiny_family(tmp_path_factory.mktemp("many"), "llama", n_experts=N_EXPERTS, noise=0.02)


def _config(family, method: str) -> dict:
    config = {"merge_method": method, "dtype": "float32",
              "models": [{"model": str(e), "parameters": {"weight": 1.0 + i / 10}} for i, e in enumerate(family.experts)]}
    if METHODS[method].base != "unused":
        config["base_model"] = str(family.base)
    return config


def _peak_live_blocks(monkeypatch, family, method: str, out) -> int:
    """The most input blocks alive at once while merging with one worker thread."""
    live = {"now": 0, "peak": 0}
    original = execute._Inputs.read

    def read(self, ref, rows):
        tensor = original(self, ref, rows)
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        weakref.finalize(tensor, lambda: live.__setitem__("now", live["now"] - 1))
        return tensor

    monkeypatch.setattr(execute._Inputs, "read", read)
    merge(_config(family, method), out, threads=1)
    return live["peak"]


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_sum_like_methods_hold_one_expert_block_at_a_time(monkeypatch, many_experts, tmp_path, method):
    peak = _peak_live_blocks(monkeypatch, many_experts, method, tmp_path / "out")
    # the base, the expert being added and (briefly) the previous one; never the 16 experts
    assert peak <= 3, peak


def test_methods_that_need_every_expert_still_read_them_all(monkeypatch, many_experts, tmp_path):
    assert _peak_live_blocks(monkeypatch, many_experts, "ties", tmp_path / "out") >= N_EXPERTS + 1


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_streamed_experts_give_the_in_memory_bytes(many_experts, tmp_path, method):
    """Reading experts on demand changes nothing in the result: the engine's bytes equal merge_state_dicts'."""
    out = merge(_config(many_experts, method), tmp_path / "out", threads=2).out_dir
    merged = load_tensors(out)
    base = load_tensors(many_experts.base)
    experts = [load_tensors(e) for e in many_experts.experts]
    weights = [1.0 + i / 10 for i in range(N_EXPERTS)]
    expected = merge_state_dicts(base, experts, method, weight=weights)
    for name, tensor in merged.items():
        assert torch.equal(tensor, expected[name]), name


def test_job_cost_of_sum_like_methods_does_not_grow_with_the_experts(many_experts):
    """The byte budget admits jobs by their cost: base + one expert + two buffers, not 16 experts."""
    from mergesmith.api import plan_merge

    for method, held in (("task_arithmetic", 2), ("ties", N_EXPERTS + 1)):
        plan = plan_merge(_config(many_experts, method))
        job = max(plan.jobs, key=lambda j: j.numel)  # smaller than one row block: the whole tensor is the block
        assert job_cost(job, plan.method) == (held + 2) * job.numel * 4 + job.out_nbytes

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
    config = {
        "merge_method": method,
        "dtype": "float32",
        "models": [{"model": str(e), "parameters": {"weight": 1.0 + i / 10}} for i, e in enumerate(family.experts)],
    }
    if METHODS[method].base != "unused":
        config["base_model"] = str(family.base)
    return config


def _peak_live_reads(monkeypatch, config: dict, out):
    """``(the most input blocks alive at once, the output directory)`` for a merge with one worker thread."""
    live = {"now": 0, "peak": 0}
    original = execute._Inputs.read

    def read(self, ref, rows):
        tensor = original(self, ref, rows)
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        weakref.finalize(tensor, lambda: live.__setitem__("now", live["now"] - 1))
        return tensor

    monkeypatch.setattr(execute._Inputs, "read", read)
    result = merge(config, out, threads=1)
    return live["peak"], result.out_dir


def _peak_live_blocks(monkeypatch, family, method: str, out) -> int:
    return _peak_live_reads(monkeypatch, _config(family, method), out)[0]


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


def _statistics_files(family, root, gram: bool) -> list:
    """Per expert: a Fisher per floating tensor (``gram`` False) or an [in, in] Gram per 2-D weight (True)."""
    from safetensors.torch import save_file

    files = []
    for i, expert in enumerate(family.experts):
        g = torch.Generator().manual_seed(i)
        stats = {}
        for name, v in load_tensors(expert).items():
            if not v.is_floating_point():
                continue
            if not gram:
                stats[name] = torch.rand(v.shape, generator=g) + 0.1
            elif v.dim() == 2 and "embed" not in name:
                x = torch.randn(3 * v.shape[1], v.shape[1], generator=g)
                stats[name] = x.T @ x / x.shape[0]
        path = root / "stats" / f"stats_{i}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file(stats, str(path))
        files.append(path)
    return files


def test_fisher_reads_one_expert_and_its_fisher_at_a_time(monkeypatch, many_experts, tmp_path):
    """Fisher is elementwise: weights and Fishers stream by row block together, two blocks per expert at a time,
    and the bytes are those of eq. (3) on whole tensors."""
    from mergesmith.methods.fisher_combine import fisher_average

    files = _statistics_files(many_experts, tmp_path, gram=False)
    config = {
        "merge_method": "fisher_combine",
        "dtype": "float32",
        "models": [{"model": str(e), "statistics": str(f)} for e, f in zip(many_experts.experts, files)],
    }
    peak, out = _peak_live_reads(monkeypatch, config, tmp_path / "out")
    assert peak <= 4, peak  # theta_i and F_i (and briefly the previous pair), never 32 tensors
    merged = load_tensors(out)
    experts = [load_tensors(e) for e in many_experts.experts]
    from safetensors.torch import load_file

    fishers = [load_file(str(f)) for f in files]
    for name, tensor in merged.items():
        expected = fisher_average([e[name] for e in experts], [f[name] for f in fishers], [1.0] * N_EXPERTS, 1e-6)
        assert torch.equal(tensor, expected), name


def test_regmean_streams_only_the_tensors_without_grams(many_experts, tmp_path):
    """A Gram is not row-aligned with its weight: a tensor with Grams is solved whole (all experts and Grams held),
    one without (embeddings, norms) is averaged one expert at a time."""
    from mergesmith.api import plan_merge

    files = _statistics_files(many_experts, tmp_path, gram=True)
    plan = plan_merge(
        {
            "merge_method": "regmean_combine",
            "dtype": "float32",
            "models": [{"model": str(e), "statistics": str(f)} for e, f in zip(many_experts.experts, files)],
        }
    )
    with_grams = [j for j in plan.jobs if j.statistics]
    without = [j for j in plan.jobs if j.params is not None and not j.statistics and len(j.shape) > 0]
    assert with_grams and without
    for job in with_grams:
        assert not execute.streams_rows(plan, job)
        assert job_cost(job, plan.method) == (2 * N_EXPERTS + 2) * job.numel * 4 + job.out_nbytes
    for job in without:
        assert execute.streams_rows(plan, job)
        assert job_cost(job, plan.method) < (N_EXPERTS + 2) * job.numel * 4

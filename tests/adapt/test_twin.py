"""Twin-Merging on a tiny BERT pool: at full rank a one-hot routing reproduces each expert, the hook path equals the
exact per-input path, a saved result loads back with the same outputs, and the same seed gives the same router."""

from __future__ import annotations

import json

import pytest
import torch

from mergesmith.adapt import ADAPT_METHODS
from mergesmith.adapt._spec import parse_params
from mergesmith.adapt.result import save_result
from mergesmith.adapt.twin import truncated_svd
from mergesmith.adapt.twin_model import TwinEncoder

FAST = {"router_steps": 30, "router_hidden": 16, "progress": False}


def _run(problem, seed=0, **overrides):
    spec = ADAPT_METHODS["twin_merging"]
    return spec.run(problem, parse_params(spec, {**FAST, **overrides}), seed)


def _hidden(model, problem, task, n=6):
    batch = next(problem.batches(problem.task(task).unlabeled, n))
    with torch.no_grad():
        return model(**problem.forward_kwargs(batch)).last_hidden_state


@pytest.fixture(scope="module")
def full_rank(tiny_problem):
    return _run(tiny_problem, rank_fraction=1.0)


def test_full_rank_one_hot_routing_reproduces_each_expert(tiny_problem, full_rank):
    twin = full_rank.encoder_for("reviews")
    assert isinstance(twin, TwinEncoder) and twin.fast
    for t, task in enumerate(tiny_problem.task_names):
        twin.force_routing = torch.nn.functional.one_hot(torch.tensor(t), len(tiny_problem.tasks)).float()
        expert = tiny_problem.load_encoder(tiny_problem.expert_dirs[task])
        for data_task in tiny_problem.task_names:
            torch.testing.assert_close(
                _hidden(twin, tiny_problem, data_task), _hidden(expert, tiny_problem, data_task), atol=2e-5, rtol=1e-4
            )
    twin.force_routing = None
    shared = tiny_problem.encoder_with({k: v for k, v in full_rank.merged.items() if v.is_floating_point()})
    # the shared part alone is not an expert: the exclusive parts carry real information
    assert not torch.allclose(_hidden(shared, tiny_problem, "topics"), _hidden(twin, tiny_problem, "topics"), atol=1e-4)


def test_hooks_equal_the_exact_per_input_path(tiny_problem):
    result = _run(tiny_problem, rank=3)
    twin = result.encoder_for("topics")
    routed = _hidden(twin, tiny_problem, "topics")
    weights = twin.last_routing
    assert weights.shape == (6, 2) and torch.allclose(weights.sum(-1), torch.ones(6))
    slow = TwinEncoder(twin.encoder, twin.parts, twin.router, twin.tasks, twin.pooling)
    slow.fast = False
    torch.testing.assert_close(_hidden(slow, tiny_problem, "topics"), routed, atol=2e-5, rtol=1e-4)
    assert result.info["max_rank"] == 3 and result.info["added_parameters"] > result.info["router_parameters"] > 0


def test_truncated_svd_is_the_best_rank_r_approximation():
    m = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    us, v = truncated_svd(m, 7)
    torch.testing.assert_close(us @ v.T, m, atol=1e-5, rtol=1e-5)
    us, v = truncated_svd(m, 2)
    s = torch.linalg.svdvals(m)
    torch.testing.assert_close(torch.linalg.matrix_norm(m - us @ v.T), s[2:].norm(), atol=1e-4, rtol=1e-4)


def test_saved_result_loads_back_with_the_same_outputs(tiny_problem, tmp_path):
    from mergesmith import load_merged

    result = _run(tiny_problem, rank=4)
    out = save_result(result, tiny_problem, tmp_path / "twin")
    assert json.loads((out / "mergesmith.json").read_text())["kind"] == "twin_merging"
    loaded = load_merged(out)
    assert isinstance(loaded, TwinEncoder)
    twin = result.encoder_for("reviews")
    for task in tiny_problem.task_names:
        torch.testing.assert_close(
            _hidden(loaded, tiny_problem, task), _hidden(twin, tiny_problem, task), atol=1e-6, rtol=1e-6
        )
    assert load_merged(out, task="topics") is not None
    from mergesmith.errors import MergesmithError

    with pytest.raises(MergesmithError, match="no task"):
        load_merged(out, task="nope")


def test_same_seed_same_router(tiny_problem):
    first = _run(tiny_problem, seed=2, rank=2).extras
    again = _run(tiny_problem, seed=2, rank=2).extras
    other = _run(tiny_problem, seed=3, rank=2).extras
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["router.fc1.weight"], other["router.fc1.weight"])

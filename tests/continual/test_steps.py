"""Continual steps on state dicts: the baselines equal their one-shot merges, OPCM keeps the average norm, and a
sequence keeps its method and parameters."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mergesmith.api import merge_state_dicts
from mergesmith.continual import CONTINUAL_METHODS, continual_add_state_dicts
from mergesmith.errors import ConfigError, MergesmithError


def _family(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = {
        "layer.weight": torch.randn(6, 5, generator=gen),
        "layer.bias": torch.randn(6, generator=gen),
        "norm.weight": torch.ones(5),
        "position_ids": torch.arange(5),
    }
    experts = []
    for _ in range(n):
        experts.append(
            {
                k: (v + 0.05 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v.clone()
                for k, v in base.items()
            }
        )
    return base, experts


def _sequence(method, base, experts, **params):
    merged, state = continual_add_state_dicts(base, experts[0], experts[1], method, **params)
    for expert in experts[2:]:
        merged, state = continual_add_state_dicts(base, merged, expert, method, state=state)
    return merged, state


def _close(a, b, tol=1e-6):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=tol) for k in a)


def test_running_average_is_the_average_in_any_order():
    base, experts = _family()
    expected = merge_state_dicts(base, experts, "linear", weight=1.0)
    for order in itertools.permutations(range(4)):
        merged, state = _sequence("averaging", base, [experts[i] for i in order])
        assert _close(merged, expected)
    assert state.count == 4


def test_continual_task_arithmetic_is_task_arithmetic():
    base, experts = _family()
    merged, _ = _sequence("task_arithmetic", base, experts, **{"lambda": 0.4})
    expected = merge_state_dicts(base, experts, "task_arithmetic", weight=1.0, **{"lambda": 0.4})
    assert _close(merged, expected)


def test_continual_ties_of_two_is_ties_of_two():
    base, experts = _family(2)
    merged, _ = continual_add_state_dicts(base, experts[0], experts[1], "ties", density=0.5)
    expected = merge_state_dicts(base, experts, "ties", weight=1.0, density=0.5)
    assert _close(merged, expected)


def _tv_norm(sd, base):
    return math.sqrt(sum(float((sd[k] - base[k]).double().square().sum()) for k in base if base[k].is_floating_point()))


def test_opcm_keeps_the_average_task_vector_norm():
    base, experts = _family(5)
    merged, state = continual_add_state_dicts(base, experts[0], experts[1], "opcm")
    norms = [_tv_norm(e, base) for e in experts]
    for i, expert in enumerate(experts[2:], start=3):
        merged, state = continual_add_state_dicts(base, merged, expert, "opcm", state=state)
        mean = sum(norms[:i]) / i
        assert abs(_tv_norm(merged, base) - mean) < 1e-5 * mean
        assert abs(state.task_norm_sum - sum(norms[:i])) < 1e-6 * mean
        assert 1.0 < state.scale < i  # lambda_t grows sub-linearly (about sqrt(t) for near-orthogonal tasks)
    assert torch.equal(merged["position_ids"], base["position_ids"])


def test_opcm_of_identical_matrix_experts_is_the_expert():
    gen = torch.Generator().manual_seed(3)
    base = {"a.weight": torch.randn(7, 4, generator=gen)}
    expert = {"a.weight": base["a.weight"] + 0.1 * torch.randn(7, 4, generator=gen)}
    merged, state = _sequence("opcm", base, [expert] * 4)
    assert torch.allclose(merged["a.weight"], expert["a.weight"], atol=1e-6)


@pytest.mark.parametrize("method", sorted(CONTINUAL_METHODS))
def test_every_method_steps_and_is_deterministic(method):
    base, experts = _family(3)
    params = {"num_steps": 5} if method == "dop" else {}
    first, state = _sequence(method, base, experts, **params)
    again, _ = _sequence(method, base, experts, **params)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert state.method == method and state.count == 3
    assert all(first[k].dtype == base[k].dtype for k in base)


def test_zero_task_vectors_give_the_base():
    base, _ = _family(1)
    for method in CONTINUAL_METHODS:
        params = {"num_steps": 3} if method == "dop" else {}
        merged, _ = _sequence(method, base, [base, base, base], **params)
        assert _close(merged, base, 1e-7), method


def test_a_sequence_keeps_its_method_and_parameters():
    base, experts = _family(3)
    merged, state = continual_add_state_dicts(base, experts[0], experts[1], "opcm", alpha=0.3)
    with pytest.raises(ConfigError, match="built with 'opcm'"):
        continual_add_state_dicts(base, merged, experts[2], "dop", state=state)
    with pytest.raises(ConfigError, match="alpha=0.6 differs"):
        continual_add_state_dicts(base, merged, experts[2], "opcm", state=state, alpha=0.6)
    again, _ = continual_add_state_dicts(base, merged, experts[2], "opcm", state=state, alpha=0.3)
    assert set(again) == set(base)


def test_bad_parameters_and_models_are_refused():
    base, experts = _family(2)
    with pytest.raises(ConfigError, match="alpha"):
        continual_add_state_dicts(base, experts[0], experts[1], "opcm", alpha=2.0)
    with pytest.raises(ConfigError, match="unknown continual method"):
        continual_add_state_dicts(base, experts[0], experts[1], "magic")
    bad = dict(experts[1], **{"layer.weight": torch.zeros(5, 6)})
    with pytest.raises(MergesmithError, match="has shape"):
        continual_add_state_dicts(base, experts[0], bad, "opcm")
    stranger = {k: (torch.randn(v.shape) * 3 if v.is_floating_point() else v) for k, v in base.items()}
    with pytest.raises(MergesmithError, match="not a fine-tune of base"):
        continual_add_state_dicts(base, experts[0], stranger, "averaging")

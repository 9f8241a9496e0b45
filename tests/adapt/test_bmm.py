"""Bayesian Model Merging: the closed form's limits (lambda -> inf: the anchor; lambda = 0: RegMean), the data-free
Gram, and the BO search end to end (seeded, reproducible)."""

from __future__ import annotations

import torch

from mergesmith.adapt.bmm import bmm_weight, datafree_gram, group_of
from mergesmith.methods.regmean_combine import regmean_weight


def _setup(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    xs = [torch.randn(40, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    anchor = torch.randn(5, 6, generator=g, dtype=torch.float64)
    return weights, [x.T @ x for x in xs], anchor


def test_infinite_prior_precision_gives_the_anchor():
    weights, grams, anchor = _setup()
    torch.testing.assert_close(bmm_weight(weights, grams, anchor, float("inf"))[0], anchor)
    torch.testing.assert_close(bmm_weight(weights, grams, anchor, 1e9)[0], anchor, atol=1e-6, rtol=1e-6)


def test_zero_prior_precision_gives_regmean():
    weights, grams, anchor = _setup()
    expected, _ = regmean_weight(weights, grams, alpha=1.0, ridge=1e-4)
    torch.testing.assert_close(bmm_weight(weights, grams, anchor, 0.0)[0], expected)
    between = bmm_weight(weights, grams, anchor, 1.0)[0]
    assert 0 < float((between - anchor).norm()) < float((expected - anchor).norm())


def test_datafree_gram_and_groups():
    tau = torch.randn(5, 3)
    gram = datafree_gram(tau)
    assert gram.shape == (3, 3) and torch.allclose(gram, gram.T)
    assert group_of("encoder.layer.3.attention.self.query", "kind") == "attention.self.query"
    assert group_of("encoder.layer.3.attention.self.query", "layer") == "encoder.layer.3"
    assert group_of("pooler.dense", "kind") == "pooler.dense"


def test_bmm_search_end_to_end_is_reproducible(tiny_problem):
    from mergesmith.adapt import get_adapt_method
    from mergesmith.adapt._spec import parse_params

    spec = get_adapt_method("bmm")
    params = parse_params(spec, {"trials": 3, "num_examples": 6, "val_examples": 4, "groups": "layer"})
    first = spec.run(tiny_problem, params, 0)
    assert first.info["bo"]["trials"] == 3 and set(first.info["rho"]) == {
        "encoder.layer.0",
        "encoder.layer.1",
        "pooler.dense",
    }
    again = spec.run(tiny_problem, params, 0)
    assert first.info["rho"] == again.info["rho"]
    assert all(torch.equal(again.merged[k], v) for k, v in first.merged.items())
    free = get_adapt_method("bmm_datafree")
    result = free.run(tiny_problem, parse_params(free, {"trials": 0}), 0)
    assert result.info["gram_source"].startswith("task vectors") and "bo" not in result.info

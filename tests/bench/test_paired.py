"""The paired bootstrap every bench row's interval against task arithmetic comes from (mergesmith.bench.paired)."""

from __future__ import annotations

import torch

from mergesmith.bench.paired import attach_comparisons, choose_reference, paired_difference, resample_indices

TASKS = ("a", "b")
EXPERT = {"a": 0.8, "b": 0.5}


def _random_hits(seed: int, n: int = 400, rate: float = 0.6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {t: torch.rand(n, generator=g) < rate for t in TASKS}


def test_identical_rows_differ_by_exactly_zero():
    row = _random_hits(0)
    difference = paired_difference(row, {t: v.clone() for t, v in row.items()}, EXPERT, samples=300)
    assert difference is not None and difference.normalized is not None
    for interval in (difference.normalized, difference.average):
        assert (interval.difference, interval.low, interval.high, interval.real) == (0.0, 0.0, 0.0, False)


def test_a_row_right_wherever_the_other_is_wrong_is_a_real_gain():
    reference = _random_hits(1)
    better = {t: torch.ones_like(v) for t, v in reference.items()}
    difference = paired_difference(better, reference, EXPERT, samples=300)
    wrong = {t: float((~v).double().mean()) for t, v in reference.items()}
    assert abs(difference.average.difference - sum(wrong.values()) / 2) < 1e-12
    assert abs(difference.normalized.difference - sum(wrong[t] / EXPERT[t] for t in TASKS) / 2) < 1e-12
    assert difference.normalized.low > 0 and difference.normalized.real and difference.average.real
    worse = paired_difference(reference, better, EXPERT, samples=300)
    assert worse.normalized.high < 0 and worse.normalized.real


def test_resamples_are_paired_a_relabelling_is_no_difference_but_a_small_shared_gain_is():
    reference = _random_hits(2, n=1000)
    g = torch.Generator().manual_seed(3)
    shuffled = {t: v[torch.randperm(len(v), generator=g)] for t, v in reference.items()}  # same counts, other examples
    better = {}
    for t, v in reference.items():  # right wherever the reference is, plus 30 examples: small but paired
        b = v.clone()
        b[(~v).nonzero().flatten()[:30]] = True
        better[t] = b
    noise = paired_difference(shuffled, reference, EXPERT, samples=500).normalized
    gain = paired_difference(better, reference, EXPERT, samples=500).normalized
    assert noise.low < 0 < noise.high and not noise.real
    # 3 % of examples: an unpaired comparison of two ~60 % rows could not separate it (its interval is ~±4 points)
    assert gain.low > 0 and gain.real


def test_same_seed_same_interval_and_the_draws_depend_only_on_seed_and_sizes():
    a, b = _random_hits(4), _random_hits(5)
    first = paired_difference(a, b, EXPERT, samples=200, seed=7)
    assert first == paired_difference(a, b, EXPERT, samples=200, seed=7)
    assert first != paired_difference(a, b, EXPERT, samples=200, seed=8)
    sizes = {"a": 10, "b": 20}
    assert all(
        torch.equal(x, y)
        for x, y in zip(resample_indices(sizes, 5, 1).values(), resample_indices(sizes, 5, 1).values())
    )


def test_a_task_without_hits_or_an_expert_at_zero():
    a, b = _random_hits(6), _random_hits(7)
    assert paired_difference({**a, "b": None}, b, EXPERT) is None
    only_average = paired_difference(a, b, {"a": 0.8, "b": 0.0}, samples=100)
    assert only_average.normalized is None and only_average.average is not None


def _rows(*names_kinds):
    return [{"name": n, "kind": k, **({"method": n} if k in ("merge", "adapt") else {})} for n, k in names_kinds]


def test_every_row_gets_its_difference_from_task_arithmetic():
    rows = _rows(("pretrained", "baseline"), ("linear", "merge"), ("task_arithmetic", "merge"), ("fisher", "adapt"))
    hits = {r["name"]: _random_hits(i) for i, r in enumerate(rows)}
    reference = attach_comparisons(rows, hits, EXPERT, samples=100)
    assert reference == "task_arithmetic"
    by_name = {r["name"]: r["vs_reference"] for r in rows}
    assert by_name["task_arithmetic"]["difference"] == 0 and not by_name["task_arithmetic"]["real"]
    for name in ("pretrained", "linear", "fisher"):
        field = by_name[name]
        assert set(field) == {"difference", "low", "high", "real", "average"}
        assert field["low"] <= field["difference"] <= field["high"]
        assert set(field["average"]) == {"difference", "low", "high", "real"}


def test_without_task_arithmetic_the_first_merge_row_is_the_reference():
    rows = _rows(("pretrained", "baseline"), ("fisher", "adapt"), ("linear", "merge"), ("ties", "merge"))
    hits = {r["name"]: _random_hits(i) for i, r in enumerate(rows)}
    assert attach_comparisons(rows, hits, EXPERT, samples=100) == "linear"
    assert rows[2]["vs_reference"]["difference"] == 0
    assert choose_reference(_rows(("pretrained", "baseline"), ("fisher", "adapt")), hits) == "fisher"
    alone = _rows(("pretrained", "baseline"))
    assert attach_comparisons(alone, hits, EXPERT) is None and alone[0]["vs_reference"] is None

"""task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della, della_linear, magmax, sce
(modules task_arithmetic, ties, dare, breadcrumbs, della, magmax, sce).

- golden parity with mergekit 0.1.5's kernels at tensor level: task arithmetic and TIES bit for bit, Model Breadcrumbs
  and SCE within 1e-6 relative, also when our side streams the tensor in many row blocks;
- parameter names and defaults against mergekit's specs;
- DARE and DELLA by distribution: kept fraction, unbiased rescaling, magnitude-ordered keep probabilities, seeds,
  tensor names, whole vs streamed bytes;
- contract: identical experts, zero task vectors, finite outputs, dtype, parameter errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from mergesmith.engine.rng import TensorRng
from mergesmith.errors import ConfigError
from mergesmith.methods import (
    METHODS,
    _blocks,
    _kth,
    _task_vectors as tv,
    breadcrumbs,
    dare,
    della,
    magmax,
    sce,
    task_arithmetic,
    ties,
)
from mergesmith.methods._spec import param_infos

SPECS = {
    spec.name: spec
    for spec in (task_arithmetic.SPEC, ties.SPEC, *dare.SPECS, *breadcrumbs.SPECS, *della.SPECS, magmax.SPEC, sce.SPEC)
}
RANDOM = {"dare_linear", "dare_ties", "della", "della_linear"}
MERGEKIT_NAMES = sorted(set(SPECS) - {"magmax"})


# ---------------------------------------------------------------------------------------------------------------
# helpers


def make(shape, n, seed=0, scale=0.1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    experts = [base + scale * torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]
    return base, experts


def params_for(name, n, **values):
    """Our Params with per-model values given as lists (or one value for all models)."""
    return SPECS[name].make_params(n, values)


def ours(name, base, experts, seed=0, tensor="t", **values):
    return SPECS[name].merge(base, experts, params_for(name, len(experts), **values), TensorRng(seed, tensor))


def mergekit(name, base, experts, **values):
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorEntry, TensorGroup

    group = TensorGroup(
        (TensorEntry("base", base, is_base=True),) + tuple(TensorEntry(i, e) for i, e in enumerate(experts))
    )
    return registry.get(name)([group], parameters=values)[0]


def streamed(name, base, experts, seed=0, tensor="t", **values):
    """What the engine does: context over a fresh-iterator blocks callable (copies, as if read), then merge_block."""
    spec = SPECS[name]
    params = params_for(name, len(experts), **values)
    rng = TensorRng(seed, tensor)
    slices = _blocks.row_blocks(tuple(base.shape))
    passes = []

    def blocks():
        passes.append(1)
        for s in slices:
            yield base[s].clone(), [e[s].clone() for e in experts]

    ctx = spec.streaming.context(blocks, params, rng)
    parts = [
        spec.streaming.merge_block(base[s].clone(), [e[s].clone() for e in experts], params, ctx, rng, i)
        for i, s in enumerate(slices)
    ]
    return torch.cat(parts), len(slices), len(passes)


def relative_error(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def weights(n):
    return [0.3 + 0.25 * i for i in range(n)]


def densities(n):
    return [min(0.9, 0.25 + 0.15 * i) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# golden parity with mergekit 0.1.5

SHAPES = [(1,), (7,), (48, 33), (3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic_bitwise(shape, n, normalize):
    base, experts = make(shape, n, seed=n)
    values = dict(weight=weights(n), normalize=normalize, **{"lambda": 0.7})
    assert torch.equal(
        ours("task_arithmetic", base, experts, **values), mergekit("task_arithmetic", base, experts, **values)
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ties_bitwise(shape, n):
    base, experts = make(shape, n, seed=10 + n)
    for values in (
        dict(weight=weights(n), density=densities(n)),
        dict(weight=weights(n), density=0.5, normalize=False, **{"lambda": 1.3}),
        dict(weight=[1.0] * n),  # density 1: no trim, sign election only
        dict(weight=[-0.5] + [1.0] * (n - 1), density=0.3),  # a negative weight flips the elected sign
    ):
        assert torch.equal(ours("ties", base, experts, **values), mergekit("ties", base, experts, **values)), values


@pytest.mark.parametrize("name", ["task_arithmetic", "ties"])
@pytest.mark.parametrize("n", [5, 8, 17])
def test_many_experts_within_rounding(name, n):
    """From 5 experts on, torch's ``sum(dim=0)`` (mergekit) adds the last entries of a tensor in another order than
    the rest, and from 16 on in a cascade; we sum experts in order everywhere (block-independent), so the two differ by
    rounding only."""
    base, experts = make((37, 29), n, seed=50 + n)
    values = dict(weight=weights(n), density=0.4) if name == "ties" else dict(weight=weights(n))
    assert relative_error(ours(name, base, experts, **values), mergekit(name, base, experts, **values)) < 1e-6


def test_ties_with_rescale_close():
    base, experts = make((48, 33), 3, seed=3)
    values = dict(weight=weights(3), density=densities(3), rescale=True)
    assert relative_error(ours("ties", base, experts, **values), mergekit("ties", base, experts, **values)) < 1e-6


@pytest.mark.parametrize("name", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_breadcrumbs_close(name, shape, n):
    base, experts = make(shape, n, seed=20 + n)
    for values in (
        dict(weight=weights(n), density=densities(n), gamma=0.05),
        dict(weight=weights(n), density=0.9, gamma=0.2),  # keep + top > numel: the outlier cut shrinks
        dict(weight=weights(n), density=0.5, gamma=0.0, rescale=True),
        dict(weight=weights(n), density=0.05, gamma=0.01, normalize=True),  # int(density * numel) may be 0
    ):
        result = ours(name, base, experts, **values)
        assert relative_error(result, mergekit(name, base, experts, **values)) <= 1e-6, values


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1])
def test_sce_close(shape, n, select_topk):
    base, experts = make(shape, n, seed=30 + n)
    result = ours("sce", base, experts, select_topk=select_topk)
    assert relative_error(result, mergekit("sce", base, experts, select_topk=select_topk)) <= 1e-6


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "sce"])
@pytest.mark.parametrize("n", [2, 4])
def test_streamed_in_many_blocks_matches_mergekit(monkeypatch, name, n):
    base, experts = make((121, 67), n, seed=40 + n)
    values = {
        "task_arithmetic": dict(weight=weights(n), **{"lambda": 0.6}),
        "ties": dict(weight=weights(n), density=densities(n)),
        "breadcrumbs": dict(weight=weights(n), density=densities(n), gamma=0.03),
        "breadcrumbs_ties": dict(weight=weights(n), density=densities(n), gamma=0.03),
        "sce": dict(select_topk=0.3),
    }[name]
    reference = mergekit(name, base, experts, **values)
    whole = ours(name, base, experts, **values)
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 67 * 4)  # 4 rows a block: 31 blocks
    monkeypatch.setattr(_kth, "HOLD_LIMIT", 0)  # take the histogram route, as a large tensor does
    result, n_blocks, passes = streamed(name, base, experts, **values)
    assert n_blocks == 31
    assert torch.equal(result, whole), "streaming must not change a single bit"
    assert torch.equal(ours(name, base, experts, **values), whole)
    if name in ("task_arithmetic", "ties"):
        assert torch.equal(result, reference)
    else:
        assert relative_error(result, reference) <= 1e-6
    assert passes == {"task_arithmetic": 0, "ties": 2, "breadcrumbs": 2, "breadcrumbs_ties": 2, "sce": 3}[name]


def test_ties_threshold_single_block_equals_streamed(monkeypatch):
    """The k-th largest |tau| found by kthvalue on one block equals the one found by histograms over many."""
    base, experts = make((120, 50), 2, seed=5)
    calls = []

    def blocks():
        calls.append(1)
        for s in _blocks.row_blocks(tuple(base.shape)):
            yield base[s], [e[s] for e in experts]

    one = tv.magnitude_bands(blocks, [0.3, 0.6], rescale=False)
    assert len(calls) == 1
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 50 * 7)
    held = tv.magnitude_bands(blocks, [0.3, 0.6], rescale=False)
    assert len(calls) == 2  # a small tensor's blocks are held and selected in one pass
    monkeypatch.setattr(_kth, "HOLD_LIMIT", 0)
    many = tv.magnitude_bands(blocks, [0.3, 0.6], rescale=False)
    assert len(calls) == 4  # histogram, then gather
    assert one == held
    assert one == many
    tau = (experts[0] - base).abs().reshape(-1)
    assert one[0].lo == float(tau.sort(descending=True).values[int(0.3 * tau.numel()) - 1])


def test_fp64_parity():
    base, experts = make((40, 30), 3, seed=8, dtype=torch.float64)
    for name, values in (
        ("task_arithmetic", dict(weight=weights(3))),
        ("ties", dict(weight=weights(3), density=densities(3))),
    ):
        result = ours(name, base, experts, **values)
        assert result.dtype == torch.float64
        assert torch.equal(result, mergekit(name, base, experts, **values))


# ---------------------------------------------------------------------------------------------------------------
# parameter names and defaults against mergekit's specs


@pytest.mark.parametrize("name", MERGEKIT_NAMES)
def test_parameter_names_and_defaults_match_mergekit(name):
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import MISSING as MK_MISSING

    theirs = {p.name: p for p in registry.get(name).spec.parameters}
    mine = param_infos(SPECS[name].params)
    unused_by_mergekit = {"task_arithmetic": {"density", "rescale"}}.get(name, set())  # accepted there, no effect
    assert set(mine) == set(theirs) - unused_by_mergekit
    for yaml_name, info in mine.items():
        spec = theirs[yaml_name]
        assert info.per_model == (spec.scope.value != "shared"), yaml_name
        assert info.required == (spec.default is MK_MISSING), yaml_name
        if not info.required:
            assert info.default == spec.default, yaml_name
    assert METHODS[name] is SPECS[name]  # the catalogue lists this very spec
    assert SPECS[name].randomized == (name in RANDOM)


def test_magmax_parameters():
    assert set(param_infos(magmax.Params)) == {"lambda"}
    assert param_infos(magmax.Params)["lambda"].default == 1.0


# ---------------------------------------------------------------------------------------------------------------
# DARE and DELLA by distribution


def kept_fraction(out, base):
    return float((out != base).double().mean())


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_keeps_density_and_is_unbiased(name):
    base, experts = make((500, 400), 1, seed=1)
    tau = experts[0] - base
    p, n = 0.3, tau.numel()
    out = ours(name, base, experts, weight=1.0, density=p)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept_fraction(out, base) - p) < 5 * sigma
    # rescaled survivors are tau / p: the mean of (out - base) / tau is 1 in expectation
    ratio = (out - base).double() / tau.double()
    assert abs(float(ratio.mean()) - 1.0) < 5 * math.sqrt((1 - p) / p / n)
    kept = out != base
    torch.testing.assert_close((out - base)[kept], tau[kept] / p, rtol=1e-4, atol=1e-6)
    # without rescale, survivors are the task vector itself
    plain = ours(name, base, experts, weight=1.0, density=p, rescale=False)
    torch.testing.assert_close((plain - base)[plain != base], tau[plain != base], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_masks_seed_name_expert_and_streaming(monkeypatch, name):
    base, experts = make((64, 48), 2, seed=2)
    values = dict(weight=[0.5, 0.5], density=0.5)
    a = ours(name, base, experts, seed=11, **values)
    assert torch.equal(a, ours(name, base, [e.clone() for e in experts], seed=11, **values))
    assert not torch.equal(a, ours(name, base, experts, seed=12, **values))
    assert not torch.equal(a, ours(name, base, experts, seed=11, tensor="other", **values))
    # two identical experts still draw different masks
    same = ours(name, base, [experts[0], experts[0].clone()], seed=11, weight=[1.0, 1.0], density=0.5)
    single = ours(name, base, [experts[0]], seed=11, weight=[2.0], density=0.5)
    assert not torch.equal(same, single)
    # whole vs streamed through the block protocol: the same bytes, with one block or many
    assert torch.equal(streamed(name, base, experts, seed=11, **values)[0], a)
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 48 * 5)
    many, n_blocks, _ = streamed(name, base, experts, seed=11, **values)
    assert n_blocks == 13
    assert torch.equal(many, ours(name, base, experts, seed=11, **values))


def test_dare_linear_and_dare_ties_share_drops():
    base, experts = make((30, 20), 1, seed=4)
    a = ours("dare_linear", base, experts, seed=3, weight=1.0, density=0.4)
    b = ours("dare_ties", base, experts, seed=3, weight=1.0, density=0.4)
    assert torch.equal(a, b)  # one expert: sign election keeps every surviving entry


def test_rng_is_required():
    base, experts = make((4, 4), 2)
    for name in RANDOM:
        with pytest.raises(ValueError, match="rng"):
            SPECS[name].merge(base, experts, params_for(name, 2, weight=1.0, density=0.5), None)


@pytest.mark.parametrize("name", ["della", "della_linear"])
def test_della_keep_probability_follows_magnitude_rank(name):
    rows, cols = 400, 1000
    base, experts = make((rows, cols), 1, seed=6)
    tau = experts[0] - base
    density, epsilon = 0.5, 0.2
    out = ours(name, base, experts, weight=1.0, density=density, epsilon=epsilon)
    kept = out != base
    n = tau.numel()
    assert abs(float(kept.double().mean()) - density) < 5 * math.sqrt(0.25 / n)
    # quartiles of the magnitude rank within each row: keep rates density - eps + 2 eps * mean(rank / (cols - 1))
    ranks = tau.abs().argsort(dim=1, stable=True).argsort(dim=1)  # equal magnitudes rank in index order
    for q in range(4):
        in_q = (ranks >= q * cols // 4) & (ranks < (q + 1) * cols // 4)
        expected = density - epsilon + 2 * epsilon * float(ranks[in_q].double().mean()) / (cols - 1)
        rate = float(kept[in_q].double().mean())
        assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / int(in_q.sum()))
    # each survivor is divided by its own keep probability: unbiased entry by entry
    probability = density - epsilon + 2 * epsilon * ranks.double() / (cols - 1)
    torch.testing.assert_close((out - base)[kept].double(), (tau.double() / probability)[kept], rtol=1e-4, atol=1e-6)
    ratio = (out - base).double() / tau.double()
    assert abs(float(ratio.mean()) - 1.0) < 5 * float(((1 - probability) / probability).mean().sqrt()) / math.sqrt(n)


def test_della_ranks_a_vector_as_one_row_and_handles_scalars():
    base, experts = make((20_000,), 1, seed=7)
    tau = experts[0] - base
    out = ours("della_linear", base, experts, weight=1.0, density=0.5, epsilon=0.4)
    kept = out != base
    order = tau.abs().argsort()
    smallest, largest = kept[order[:5000]].double().mean(), kept[order[-5000:]].double().mean()
    assert float(smallest) < 0.25 and float(largest) > 0.75  # 0.1 + 0.8 * mean rank of each quarter
    scalar_base, scalar_experts = torch.tensor(1.0), [torch.tensor(1.5)]
    draws = [
        ours("della_linear", scalar_base, scalar_experts, seed=s, weight=1.0, density=0.5, epsilon=0.1)
        for s in range(200)
    ]
    assert {float(d) for d in draws} == {1.0, 2.0}  # dropped, or kept with rescale 1 / 0.5


# ---------------------------------------------------------------------------------------------------------------
# contract


IDENTITY = {
    "task_arithmetic": dict(weight=1.0, normalize=True),
    "ties": dict(weight=1.0),
    "dare_linear": dict(weight=1.0, normalize=True),
    "dare_ties": dict(weight=1.0, normalize=True),
    "breadcrumbs": dict(weight=1.0, normalize=True),
    "breadcrumbs_ties": dict(weight=1.0, normalize=True),
    "della": dict(weight=1.0),
    "della_linear": dict(weight=1.0, normalize=True),
    "magmax": dict(),
    "sce": dict(),
}
TYPICAL = {
    "task_arithmetic": dict(weight=0.4),
    "ties": dict(weight=1.0, density=0.3),
    "dare_linear": dict(weight=0.5, density=0.5),
    "dare_ties": dict(weight=1.0, density=0.5),
    "breadcrumbs": dict(weight=0.5, density=0.7, gamma=0.05),
    "breadcrumbs_ties": dict(weight=0.5, density=0.7, gamma=0.05),
    "della": dict(weight=1.0, density=0.5, epsilon=0.1),
    "della_linear": dict(weight=0.5, density=0.5, epsilon=0.1, rescale=False),
    "magmax": dict(**{"lambda": 0.8}),
    "sce": dict(select_topk=0.4),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("shape", [(), (9,), (12, 10), (4, 3, 5)])
def test_identical_experts_give_the_expert(name, shape):
    base, (expert,) = make(shape, 1, seed=9)
    out = ours(name, base, [expert.clone() for _ in range(3)], **IDENTITY[name])
    torch.testing.assert_close(out, expert, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("shape", [(), (9,), (12, 10), (4, 3, 5)])
def test_zero_task_vectors_give_the_base(name, shape):
    base, _ = make(shape, 1, seed=10)
    out = ours(name, base, [base.clone() for _ in range(3)], **TYPICAL[name])
    assert torch.equal(out, base)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_and_dtype(name, dtype):
    base, experts = make((16, 11), 3, seed=12, dtype=dtype)
    experts[1] = base - 3 * (experts[0] - base)  # a conflicting expert
    out = ours(name, base, experts, **TYPICAL[name])
    assert out.dtype == dtype and out.shape == base.shape
    assert torch.isfinite(out).all()
    assert not torch.equal(out, base)


@pytest.mark.parametrize("name", sorted(set(SPECS) - RANDOM))
def test_order_of_experts_does_not_matter(name):
    base, experts = make((20, 15), 3, seed=13)
    values = dict(TYPICAL[name])
    if "weight" in values:
        values["weight"] = [0.2, 0.5, 0.9]
        reversed_values = dict(values, weight=[0.9, 0.5, 0.2])
    else:
        reversed_values = values
    forward = ours(name, base, experts, **values)
    backward = ours(name, base, experts[::-1], **reversed_values)
    torch.testing.assert_close(forward, backward, rtol=1e-6, atol=1e-6)


def test_magmax_picks_the_largest_magnitude():
    base = torch.zeros(4)
    experts = [
        torch.tensor([1.0, -3.0, 0.5, 0.0]),
        torch.tensor([-2.0, 2.0, 0.25, 0.0]),
        torch.tensor([1.5, 1.0, -0.75, 0.0]),
    ]
    out = ours("magmax", base, experts, **{"lambda": 0.5})
    assert torch.equal(out, torch.tensor([-1.0, -1.5, -0.375, 0.0]))


def test_ties_trims_elects_and_averages_disjointly():
    """A hand-computed example of Algorithm 1."""
    base = torch.zeros(5)
    experts = [torch.tensor([4.0, -1.0, 3.0, 0.5, -2.0]), torch.tensor([-1.0, -2.0, 2.0, 1.0, 6.0])]
    out = ours("ties", base, experts, weight=1.0, density=0.6)
    # trim to the 3 largest: [4, 0, 3, 0, -2] and [0, -2, 2, 0, 6]; elected signs: + - + 0(+) +
    # disjoint means: 4, -2, 2.5, 0, 6
    assert torch.equal(out, torch.tensor([4.0, -2.0, 2.5, 0.0, 6.0]))


def test_breadcrumbs_keeps_the_middle_band():
    base = torch.zeros(10)
    expert = torch.arange(1.0, 11.0)  # magnitudes 1..10
    out = ours("breadcrumbs", base, [expert], weight=1.0, density=0.5, gamma=0.2)
    # keep 5, drop the top 2 (9, 10) and the bottom 3 (1, 2, 3)
    assert torch.equal(out, torch.tensor([0.0, 0, 0, 4, 5, 6, 7, 8, 0, 0]))


def test_sce_selects_by_variance_and_weights_by_energy():
    base = torch.zeros(4)
    experts = [torch.tensor([1.0, 1.0, 0.0, 3.0]), torch.tensor([1.0, -1.0, 2.0, 1.0])]
    out = ours("sce", base, experts, select_topk=0.5)
    # variances: 0, 1, 1, 1 -> nonzero 3, k = int(3 * 0.5) = 1: the tie at 1 keeps all three
    # selected: e0 = [0, 1, 0, 3], e1 = [0, -1, 2, 1]; energies 10/4 and 6/4 -> weights 10/16, 6/16
    # elected signs (sum): 0(+), 0(+), +, +: entry 1 has e0 agreeing only
    w0, w1 = 10 / 16, 6 / 16
    expected = torch.tensor([0.0, 1.0, 2.0, (3 * w0 + 1 * w1) / (w0 + w1)])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name, values, message",
    [
        ("ties", dict(weight=1.0, density=0.0), "ties: density must be in \\(0, 1\\], got 0"),
        ("ties", dict(weight=1.0, density=1.5), "density must be in \\(0, 1\\], got 1.5"),
        ("dare_linear", dict(weight=1.0, density=-0.1), "density must be in"),
        ("breadcrumbs", dict(weight=1.0, density=0.5, gamma=1.0), "gamma must be in \\[0, 1\\), got 1"),
        ("breadcrumbs_ties", dict(weight=1.0, density=0.5, gamma=-0.1), "gamma must be in"),
        ("della", dict(weight=1.0, density=0.1, epsilon=0.15), "density \\+/- epsilon"),
        ("della_linear", dict(weight=1.0, density=0.9, epsilon=0.15), "density \\+/- epsilon"),
        ("della", dict(weight=1.0, density=0.5, epsilon=-0.1), "epsilon must be in \\[0, 1\\)"),
        ("sce", dict(select_topk=0.0), "select_topk must be in \\(0, 1\\]"),
        ("task_arithmetic", dict(weight=float("nan")), "weight must be a finite number, got nan"),
        ("magmax", {"lambda": float("inf")}, "lambda must be a finite number, got inf"),
        ("ties", dict(weight=[1.0, 2.0, 3.0]), "weight has 3 values for 2 models"),
        ("ties", dict(density=0.5), "missing required parameter 'weight'"),
        ("ties", dict(weight=1.0, desnity=0.5), "unknown parameter 'desnity' for ties; allowed: density"),
    ],
)
def test_parameter_errors_name_the_parameter(name, values, message):
    base, experts = make((6, 5), 2)
    with pytest.raises(ConfigError, match=message):
        ours(name, base, experts, **values)


def test_shape_and_count_errors():
    base, experts = make((6, 5), 2)
    with pytest.raises(ValueError, match="needs a base model"):
        ours("ties", None, experts, weight=1.0)
    with pytest.raises(ValueError, match="'density' has 1 values for 2 experts"):
        ties.SPEC.merge(base, experts, ties.Params(weight=(1.0, 1.0), density=(0.5,)))
    with pytest.raises(ValueError, match="'weight' has 3 values for 2 experts"):
        task_arithmetic.SPEC.merge(base, experts, params_for("task_arithmetic", 3, weight=1.0))
    with pytest.raises(ValueError, match="shape"):
        ours("task_arithmetic", base, [experts[0], experts[1][:3]], weight=1.0)


def test_a_missing_per_model_value_is_the_default():
    base, experts = make((6, 5), 2)
    assert params_for("ties", 2, weight=1.0) == params_for("ties", 2, weight=1.0, density=[1.0, 1.0])
    a = ours("ties", base, experts, weight=1.0)
    b = ours("ties", base, experts, weight=1.0, density=1.0)
    assert torch.equal(a, b)

"""slerp, nuslerp, multislerp, karcher, model_stock, nearswap, passthrough.

Golden parity against mergekit 0.1.5's kernels (called through ``mergekit.merge_methods.api.merge_tensors``), the
input contract and parameter names against mergekit's specs, and contract properties (identical experts, experts
equal to the base, endpoints, order, degenerate vectors, dtype).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math

import pytest
import torch

from mergesmith.errors import ConfigError
from mergesmith.methods import karcher, model_stock, multislerp, nearswap, nuslerp, passthrough, slerp
from mergesmith.methods._blocks import row_blocks
from mergesmith.methods._spec import param_infos

MODULES = {
    "slerp": slerp,
    "nuslerp": nuslerp,
    "multislerp": multislerp,
    "karcher": karcher,
    "model_stock": model_stock,
    "nearswap": nearswap,
    "passthrough": passthrough,
}
MERGEKIT_METHOD = {  # our name -> (mergekit module, attribute holding its MergeMethod)
    "slerp": ("slerp", "slerp_merge_method"),
    "nuslerp": ("nuslerp", "nuslerp_merge_method"),
    "multislerp": ("multislerp", "multislerp"),
    "karcher": ("karcher", "karcher_merge_method"),
    "model_stock": ("model_stock", "model_stock_merge_method"),
    "nearswap": ("nearswap", "nearswap_merge"),
    "passthrough": ("passthrough", "passthrough_merge_method"),
}
SHAPES = [(7,), (5, 9), (16, 33), (3, 4, 5)]


def mergekit_method(name):
    module_name, attribute = MERGEKIT_METHOD[name]
    # importlib: the package's __init__ rebinds some submodule names (multislerp) to the method objects
    return getattr(importlib.import_module(f"mergekit.merge_methods.{module_name}"), attribute)


def mergekit_merge(name, base, experts, **parameters):
    """mergekit's result for one tensor: inputs ordered [base, *experts] (base first when given)."""
    from mergekit.merge_methods.api import merge_tensors

    tensors = ([base] if base is not None else []) + list(experts)
    return merge_tensors(
        tensors, mergekit_method(name), parameters=parameters, base_index=0 if base is not None else None
    )


def ours(name, base, experts, **parameters):
    spec = MODULES[name].SPEC
    return spec.merge(base, list(experts), spec.make_params(len(experts), parameters), None)


def rel_err(actual, expected):
    scale = expected.abs().max().clamp(min=1e-30)
    return ((actual - expected).abs().max() / scale).item()


def assert_parity(actual, expected, rtol=1e-6):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    atol = rtol * expected.abs().max().item()  # elements near 0 from cancellation: relative to the tensor's scale
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max rel err {rel_err(actual, expected):.2e}"


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def models(shape, n, seed, spread=1.0, dtype=torch.float32):
    """A base and n experts near it (fine-tuned-like), reproducible."""
    base = randn(*shape, seed=seed, dtype=dtype)
    return base, [base + spread * randn(*shape, seed=seed + 1 + i, dtype=dtype) for i in range(n)]


# --------------------------------------------------------------------------------------------------------------------
# specs: names, defaults, input contract as mergekit's


BASE_POLICY = {"required": "required", "optional": "optional", "ignored": "unused"}


@pytest.mark.parametrize("name", list(MODULES))
def test_params_match_mergekit(name):
    spec = MODULES[name].SPEC
    mk = mergekit_method(name).spec
    infos = param_infos(spec.params)
    assert spec.name == mk.name
    assert set(infos) == {p.name for p in mk.parameters}
    for p in mk.parameters:
        info = infos[p.name]
        assert info.per_model == (p.scope.value != "shared"), p.name
        assert info.required == p.required, p.name
        if not p.required:
            assert info.default == p.default, p.name
        assert info.doc, f"{name}.{p.name} has no doc"
    assert dataclasses.is_dataclass(spec.params) and spec.params.__dataclass_params__.frozen


@pytest.mark.parametrize("name", list(MODULES))
def test_contract_matches_mergekit(name):
    spec = MODULES[name].SPEC
    contract = mergekit_method(name).spec.contract
    assert spec.base == BASE_POLICY[contract.base.value]
    base_counted = 1 if contract.base.value == "required" else 0
    min_experts = contract.min_non_base if contract.min_non_base is not None else contract.min_inputs - base_counted
    max_experts = (
        contract.max_non_base
        if contract.max_non_base is not None
        else (None if contract.max_inputs is None else contract.max_inputs - base_counted)
    )
    assert (spec.min_models, spec.max_models) == (min_experts, max_experts)
    assert not spec.randomized
    assert "19" in spec.paper or "20" in spec.paper  # a year
    assert MODULES[name].__doc__ and all(p in MODULES[name].__doc__ for p in param_infos(spec.params))


# --------------------------------------------------------------------------------------------------------------------
# golden parity with mergekit 0.1.5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0, -0.3, 1.5])
def test_slerp_parity(shape, t):
    base, (other,) = models(shape, 1, seed=len(shape) * 10, spread=0.8)
    assert_parity(ours("slerp", base, [other], t=t), mergekit_merge("slerp", base, [other], t=t))


@pytest.mark.parametrize(
    "make_other",
    [
        lambda b: b + 1e-3 * randn(*b.shape, seed=9),  # nearly parallel: linear branch
        lambda b: b + 0.1 * randn(*b.shape, seed=8),  # cos ~ 0.995: still spherical (threshold 0.9995)
        lambda b: -b,  # antiparallel: linear branch
        lambda b: torch.zeros_like(b),  # zero vector: norm treated as 1
        lambda b: randn(*b.shape, seed=4),  # unrelated, nearly orthogonal
    ],
)
def test_slerp_parity_special(make_other):
    base = randn(6, 11, seed=3)
    other = make_other(base)
    for t in (0.3, 0.7):
        assert_parity(ours("slerp", base, [other], t=t), mergekit_merge("slerp", base, [other], t=t))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight", [(1.0, 1.0), (0.3, 0.7), (2.0, -0.5), (1.0, -1.0)])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_parity(shape, weight, with_base):
    base, experts = models(shape, 2, seed=7 + len(shape), spread=0.5)
    base = base if with_base else None
    for flatten, row_wise in [(True, False), (False, False), (False, True)]:
        kwargs = dict(weight=weight, nuslerp_flatten=flatten, nuslerp_row_wise=row_wise)
        assert_parity(ours("nuslerp", base, experts, **kwargs), mergekit_merge("nuslerp", base, experts, **kwargs))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_multislerp_parity(shape, n, with_base, normalize):
    base, experts = models(shape, n, seed=20 + n, spread=0.5)
    base = base if with_base else None
    weight = [0.2 + 0.3 * i for i in range(n)]
    kwargs = dict(weight=weight, normalize_weights=normalize)
    assert_parity(ours("multislerp", base, experts, **kwargs), mergekit_merge("multislerp", base, experts, **kwargs))


def dyadic_antipodal(shape, seed):
    """A base and two experts whose task vectors are exactly opposite (dyadic values: no rounding anywhere)."""
    base = torch.round(randn(*shape, seed=seed) * 8) / 8
    tau = torch.round(randn(*shape, seed=seed + 1) * 64) / 64
    return base, base + tau, base - tau


def test_multislerp_parity_special():
    base, a, b = dyadic_antipodal((4, 6), seed=31)
    # antipodal task vectors with equal weights: mergekit's linear fallback for two models
    experts = [a, b]
    kwargs = dict(weight=[1.0, 1.0])
    assert_parity(ours("multislerp", base, experts, **kwargs), mergekit_merge("multislerp", base, experts, **kwargs))
    # one model: returned as is
    assert_parity(ours("multislerp", base, [a], weight=[0.3]), mergekit_merge("multislerp", base, [a], weight=[0.3]))
    # a zero task vector among others
    experts = [a, base.clone(), base + randn(4, 6, seed=32)]
    kwargs = dict(weight=[0.5, 0.2, 0.3])
    assert_parity(ours("multislerp", base, experts, **kwargs), mergekit_merge("multislerp", base, experts, **kwargs))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("max_iter,tol", [(10, 1e-5), (3, 1e-5), (50, 1e-7), (0, 1e-5)])
def test_karcher_parity(shape, n, max_iter, tol):
    _, experts = models(shape, n, seed=40 + n, spread=1.0)
    experts = [x * (1 + 0.5 * i) for i, x in enumerate(experts)]  # different norms
    kwargs = dict(max_iter=max_iter, tol=tol)
    assert_parity(ours("karcher", None, experts, **kwargs), mergekit_merge("karcher", None, experts, **kwargs))


def test_karcher_parity_special():
    a, b = randn(5, 8, seed=50), randn(5, 8, seed=51)
    for experts in ([a, torch.zeros_like(a), b], [a, 1e-7 * b], [a, a.clone(), b], [a]):
        assert_parity(ours("karcher", None, experts), mergekit_merge("karcher", None, experts))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_parity(shape, n, filter_wise):
    # correlated task vectors (a shared direction plus noise) so that t is away from 0
    base = randn(*shape, seed=60)
    shared = randn(*shape, seed=61)
    experts = [base + 0.1 * (shared + randn(*shape, seed=62 + i)) for i in range(n)]
    kwargs = dict(filter_wise=filter_wise)
    assert_parity(ours("model_stock", base, experts, **kwargs), mergekit_merge("model_stock", base, experts, **kwargs))


def test_model_stock_parity_special():
    base, (a,) = models((6, 5), 1, seed=70)
    tiny = [base + 1e-4 * (randn(6, 5, seed=71) + randn(6, 5, seed=72 + i)) for i in range(3)]
    cases = ([a, 2 * base - a], [a, base.clone()], [a, a.clone(), 2 * base - a], [a, base + 1e-4 * (a - base)], tiny)
    for experts in cases:
        for filter_wise in (False, True):
            kwargs = dict(filter_wise=filter_wise)
            assert_parity(
                ours("model_stock", base, experts, **kwargs), mergekit_merge("model_stock", base, experts, **kwargs)
            )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 1e-3, 0.1, 0.5, 2.0, 100.0, -0.5])
def test_nearswap_parity(shape, t):
    base, (other,) = models(shape, 1, seed=80, spread=0.7)
    other.view(-1)[::3] = base.view(-1)[::3]  # some identical elements
    assert_parity(ours("nearswap", base, [other], t=t), mergekit_merge("nearswap", base, [other], t=t))


@pytest.mark.parametrize("scale", [None, 2.5, 0.0])
def test_passthrough_parity(scale):
    x = randn(4, 5, seed=90)
    expected = mergekit_merge("passthrough", None, [x], scale=[scale])
    assert_parity(ours("passthrough", None, [x], scale=[scale]), expected)


@pytest.mark.parametrize(
    "name,kwargs,n,with_base",
    [
        ("slerp", dict(t=0.3), 1, True),
        ("nuslerp", dict(weight=[0.4, 0.6]), 2, True),
        ("nuslerp", dict(weight=[0.4, 0.6], nuslerp_flatten=False), 2, False),
        ("multislerp", dict(weight=[0.2, 0.3, 0.5]), 3, True),
        ("karcher", dict(), 3, False),
        ("model_stock", dict(filter_wise=True), 3, True),
        ("nearswap", dict(t=0.4), 1, True),
    ],
)
def test_parity_float64(name, kwargs, n, with_base):
    base, experts = models((9, 13), n, seed=100, spread=0.6, dtype=torch.float64)
    base = base if with_base else None
    actual = ours(name, base, experts, **kwargs)
    expected = mergekit_merge(name, base, experts, **kwargs)
    assert actual.dtype == torch.float64
    assert_parity(actual, expected, rtol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# contract properties

ALL_CASES = [  # (name, kwargs, number of experts, uses base)
    ("slerp", dict(t=0.35), 1, True),
    ("nuslerp", dict(weight=[0.3, 0.7]), 2, False),
    ("nuslerp", dict(weight=[0.3, 0.7]), 2, True),
    ("nuslerp", dict(weight=[0.3, 0.7], nuslerp_flatten=False, nuslerp_row_wise=True), 2, True),
    ("multislerp", dict(weight=[0.2, 0.3, 0.5]), 3, False),
    ("multislerp", dict(weight=[0.2, 0.3, 0.5]), 3, True),
    ("karcher", dict(), 3, False),
    ("model_stock", dict(), 3, True),
    ("model_stock", dict(filter_wise=True), 3, True),
    ("nearswap", dict(t=0.3), 1, True),
    ("passthrough", dict(), 1, False),
]


@pytest.mark.parametrize("name,kwargs,n,with_base", ALL_CASES)
def test_identical_experts_give_the_expert(name, kwargs, n, with_base):
    base, (x,) = models((6, 10), 1, seed=110, spread=0.5)
    experts = [x.clone() for _ in range(n)]
    if name in ("slerp", "nearswap"):
        base = x.clone()  # one expert: "identical inputs" means base == other
    out = ours(name, base if with_base else None, experts, **kwargs)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs,n,with_base", [c for c in ALL_CASES if c[3]])
def test_experts_equal_to_base_give_the_base(name, kwargs, n, with_base):
    base = randn(6, 10, seed=120)
    out = ours(name, base, [base.clone() for _ in range(n)], **kwargs)
    torch.testing.assert_close(out, base, rtol=0, atol=1e-6)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,kwargs,n,with_base", ALL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_shape_finite(name, kwargs, n, with_base, dtype):
    base, experts = models((3, 7, 2), n, seed=130, spread=0.5, dtype=dtype)
    out = ours(name, base if with_base else None, experts, **kwargs)
    assert out.dtype == dtype and out.shape == base.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,kwargs,n,with_base", [c for c in ALL_CASES if c[2] > 1])
def test_order_of_experts_does_not_matter(name, kwargs, n, with_base):
    assert MODULES[name].SPEC.order_invariant
    base, experts = models((8, 9), n, seed=140, spread=0.5)
    base = base if with_base else None
    reference = ours(name, base, experts, **kwargs)
    for perm in itertools.permutations(range(n)):
        permuted = {k: [v[i] for i in perm] if isinstance(v, list) else v for k, v in kwargs.items()}
        out = ours(name, base, [experts[i] for i in perm], **permuted)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_order_matters_when_weights_do_not_follow():
    # the order test above can fail: nuslerp with weights kept in place does depend on the order
    base, experts = models((8, 9), 2, seed=141, spread=0.5)
    a = ours("nuslerp", None, experts, weight=[0.2, 0.8])
    b = ours("nuslerp", None, experts[::-1], weight=[0.2, 0.8])
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("shape", [(7,), (4, 6)])
def test_slerp_endpoints_and_geometry(shape):
    base, (other,) = models(shape, 1, seed=150, spread=2.0)
    assert torch.equal(ours("slerp", base, [other], t=0.0), base)
    assert torch.equal(ours("slerp", base, [other], t=1.0), other)
    near = base + 1e-4 * randn(*shape, seed=151)  # linear branch
    assert torch.equal(ours("slerp", base, [near], t=0.0), base)
    assert torch.equal(ours("slerp", base, [near], t=1.0), near)
    # Shoemake: orthonormal p0, p1 at t = 1/2 give (p0 + p1) / sqrt(2), on the unit sphere
    p0 = torch.zeros(shape).reshape(-1)
    p1 = torch.zeros(shape).reshape(-1)
    p0[0], p1[1] = 1.0, 1.0
    mid = ours("slerp", p0.reshape(shape), [p1.reshape(shape)], t=0.5).reshape(-1)
    torch.testing.assert_close(mid, (p0 + p1) / math.sqrt(2))
    # and the angle to p0 grows linearly with t
    for t in (0.1, 0.3, 0.8):
        out = ours("slerp", p0.reshape(shape), [p1.reshape(shape)], t=t).reshape(-1)
        assert math.isclose(math.atan2(out[1].item(), out[0].item()), t * math.pi / 2, rel_tol=1e-5)


def test_nearswap_endpoints_and_blocks():
    base, (other,) = models((40, 8), 1, seed=160, spread=0.5)
    assert torch.equal(ours("nearswap", base, [other], t=0.0), base)
    far = (base - other).abs().max().item()
    assert torch.equal(ours("nearswap", base, [other], t=far), other)
    # elements within t are swapped, others pulled by t / |a - b|
    t = 0.2
    out = ours("nearswap", base, [other], t=t)
    close = (base - other).abs() <= t
    assert torch.equal(out[close], other[close])
    w = t / (base - other).abs()[~close]
    torch.testing.assert_close(out[~close], w * other[~close] + (1 - w) * base[~close])
    # the block protocol gives the same bytes as the whole tensor
    streaming = nearswap.SPEC.streaming
    params = nearswap.Params(t=t)
    ctx = streaming.context(lambda: iter(()), params, None)
    blocks = [
        streaming.merge_block(base[s], [other[s]], params, ctx, None, i) for i, s in enumerate(row_blocks(base.shape))
    ]
    assert torch.equal(torch.cat(blocks), out)


@pytest.mark.parametrize(
    "name,kwargs,n,with_base",
    [c for c in ALL_CASES if c[0] in ("slerp", "nuslerp", "multislerp", "karcher", "model_stock")],
)
@pytest.mark.parametrize("case", ["parallel", "antiparallel", "zero"])
def test_degenerate_vectors_stay_finite(name, kwargs, n, with_base, case):
    base = randn(5, 6, seed=170) if with_base else torch.zeros(5, 6)
    direction = randn(5, 6, seed=171)
    make = {
        "parallel": lambda i: base + (1 + i) * direction,
        "antiparallel": lambda i: base + (-1) ** i * direction,
        "zero": lambda i: base + (direction if i == 0 else 0 * direction),
    }[case]
    experts = [make(i) for i in range(n)]
    if name == "slerp":
        other = {"parallel": 3 * direction, "antiparallel": -direction, "zero": 0 * direction}[case]
        base, experts = direction, [other]
    out = ours(name, base if with_base else None, experts, **kwargs)
    assert torch.isfinite(out).all()
    if case == "parallel" and name in ("karcher", "multislerp"):
        # same direction: the merge lies along it
        got = (out - (base if with_base else 0)).reshape(-1)
        cos = torch.dot(got, direction.reshape(-1)) / (got.norm() * direction.norm())
        assert cos.item() > 1 - 1e-5


def test_slerp_all_zero_and_empty():
    z = torch.zeros(3, 4)
    assert torch.equal(ours("slerp", z, [z.clone()], t=0.5), z)
    e = torch.zeros(0, 4)
    assert ours("slerp", e, [e.clone()], t=0.5).shape == (0, 4)


def test_model_stock_follows_the_paper_ratio():
    # two task vectors at a known angle: t = 2 cos / (1 + cos), merge = t * avg + (1 - t) * base
    base = torch.zeros(2, dtype=torch.float64)
    angle = 1.0
    w1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w2 = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    t = 2 * math.cos(angle) / (1 + math.cos(angle))
    out = ours("model_stock", base, [w1, w2])
    torch.testing.assert_close(out, t * (w1 + w2) / 2)


def test_karcher_is_the_geodesic_midpoint_for_two():
    # on the sphere the Karcher mean of two points is the slerp midpoint (Buss & Fillmore)
    a = randn(50, seed=180, dtype=torch.float64)
    b = randn(50, seed=181, dtype=torch.float64)
    a, b = a / a.norm(), 3 * b / b.norm()
    out = ours("karcher", None, [a, b], max_iter=100, tol=1e-12)
    mid = ours("slerp", a, [b / 3], t=0.5)
    torch.testing.assert_close(out / out.norm(), mid / mid.norm(), rtol=1e-9, atol=1e-9)
    assert math.isclose(out.norm().item(), 2.0, rel_tol=1e-9)  # the mean norm


def test_multislerp_single_model_and_linear_fallback():
    base, a, b = dyadic_antipodal((4, 5), seed=190)
    assert ours("multislerp", base, [a], weight=[0.3]) is a
    out = ours("multislerp", base, [a, b], weight=[1.0, 1.0])
    assert torch.equal(out, base)  # antipodal, equal weights: base + (tau - tau) / 2


# --------------------------------------------------------------------------------------------------------------------
# validation: clear errors naming the parameter


@pytest.mark.parametrize(
    "name,base,n,kwargs,match",
    [
        ("slerp", None, 1, dict(t=0.5), "base"),
        ("slerp", "b", 2, dict(t=0.5), "exactly one"),
        ("nuslerp", None, 3, dict(weight=[1, 1, 1]), "exactly two"),
        ("model_stock", None, 2, dict(), "base"),
        ("model_stock", "b", 1, dict(), "at least two"),
        ("nearswap", None, 1, dict(t=0.1), "base"),
        ("passthrough", None, 2, dict(), "exactly one"),
    ],
)
def test_invalid_inputs_raise(name, base, n, kwargs, match):
    b, experts = models((3, 4), n, seed=200)
    with pytest.raises(ValueError, match=match):
        ours(name, b if base else None, experts, **kwargs)


@pytest.mark.parametrize(
    "name,n,kwargs,match",
    [
        ("slerp", 1, dict(t=float("nan")), "slerp: t must be a finite number, got nan"),
        ("nuslerp", 2, dict(weight=[1.0]), "weight has 1 values for 2 models"),
        ("multislerp", 3, dict(weight=[1.0, -1.0, 0.0]), "sum to 0"),
        ("multislerp", 2, dict(weight=[1.0, 1.0], eps=0.0), "eps must be in \\(0, inf\\), got 0"),
        ("multislerp", 2, dict(weight=[1.0]), "weight has 1 values"),
        ("karcher", 2, dict(max_iter=-1), "max_iter must be in \\[0, 100000\\]"),
        ("karcher", 2, dict(max_iter=2.5), "max_iter must be an integer, got 2.5"),
        ("karcher", 2, dict(tol=-1.0), "tol must be in"),
        ("nearswap", 1, dict(t=float("inf")), "t must be a finite number, got inf"),
    ],
)
def test_invalid_parameters_are_refused(name, n, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MODULES[name].SPEC.make_params(n, kwargs)


def test_multislerp_zero_mean_direction_raises_for_three():
    base, a, _ = dyadic_antipodal((4, 5), seed=210)
    tau = a - base
    # three task vectors whose unit directions cancel under the weights
    experts = [base + tau, base - 2 * tau, base + 4 * tau]
    with pytest.raises(ValueError, match="no direction"):
        ours("multislerp", base, experts, weight=[1.0, 2.0, 1.0])

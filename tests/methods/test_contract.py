"""The contract every tensor-wise method honours, run over the whole catalogue.

- N identical experts give that expert back (with the parameters listed below: e.g. task arithmetic needs its
  weights to sum to one for that to hold);
- experts equal to the base (zero task vectors) give the base;
- the same seed gives the same bytes, and a different tensor name gives an independent random stream;
- the order of the experts does not matter where the paper says so (weights move with their experts);
- outputs are finite and keep the input dtype (fp32 in, fp32 out; fp64 in, fp64 out);
- the block protocol, where a method has it, gives the same bytes as the whole-tensor function;
- every declared parameter rule refuses a value just outside it and accepts one just inside, as a ConfigError.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import mergesmith.methods as methods_pkg
from mergesmith.engine.rng import TensorRng
from mergesmith.methods import METHODS, _blocks
from mergesmith.methods._per_task import single_tensor_task_model
from mergesmith.methods._spec import tensor_facts

N = 3

# Parameters under which N identical experts must give that expert back (per-model values are per expert).
IDENTITY_PARAMS: dict[str, dict] = {
    "linear": {"weight": 1.0},
    "task_arithmetic": {"weight": 1.0 / N},
    "ties": {"weight": 1.0, "density": 1.0},
    "dare_linear": {"weight": 1.0 / N, "density": 1.0},
    "dare_ties": {"weight": 1.0, "density": 1.0, "normalize": True},
    "breadcrumbs": {"weight": 1.0 / N, "density": 1.0, "gamma": 0.0},
    "breadcrumbs_ties": {"weight": 1.0, "density": 1.0, "gamma": 0.0, "normalize": True},
    "della": {"weight": 1.0, "density": 1.0, "epsilon": 0.0},
    "della_linear": {"weight": 1.0 / N, "density": 1.0, "epsilon": 0.0},
    "sce": {"select_topk": 1.0},
    "magmax": {},
    "slerp": {"t": 1.0},  # slerp moves from the base to its one model: t=1 is that model
    "nuslerp": {"weight": 1.0},
    "multislerp": {"weight": 1.0},
    "karcher": {},
    "model_stock": {},
    "nearswap": {"t": 0.5},
    "passthrough": {},
    "pcb": {"density": 1.0},  # keep every entry: identical balancing scores give a weighted mean of one vector
    "tsv_m": {"sv_reduction": 1.0},  # full rank: the orthogonalised copies of one SVD rebuild it exactly
    "iso_c": {},
    "iso_cts": {},
    "cart": {},
    "lines": {"beta": 0.0},  # alpha defaults to 1/N
    "fisher_combine": {},  # without statistics: the average
    "regmean_combine": {},  # without statistics: the average
    # data-free optimisation and mask methods (EMR and TALL masks: checked on task 0's model)
    "wudi": {},
    "doge_ta": {},
    "consensus": {"weight": 1.0 / N},  # tau_MTL = tau: every TALL mask is all on, k=2 <= N keeps everything
    "tall_masks": {"weight": 1.0 / N},
    "emr": {},  # tau_uni = tau, every mask on, rescalers 1
}
# Methods whose paper makes N identical experts give something else than the expert; their own test files check
# what the paper's definition gives instead.
IDENTITY_DOES_NOT_HOLD = {
    "iso_c": "Iso-C flattens the spectrum of the summed task matrix, so only an expert whose task matrix has a flat "
    "spectrum comes back (tests/methods/test_spectral_family.py checks the flat spectrum)",
    "iso_cts": "Iso-CTS flattens the spectrum of the common and task subspaces (tests/methods/test_spectral_family.py)",
    "wudi": "WUDI starts at the task-arithmetic sum N*tau and takes a fixed number of Adam steps toward tau (its "
    "optimum); tests/methods/test_dataless_family.py checks that one task's optimum is tau_1 and the loss falls",
    "doge_ta": "DOGE-TA rescales each task vector to norm eta (lambda_i = eta/||tau_i||); "
    "tests/methods/test_dataless_family.py checks its coefficients, projection and loss",
}
# Parameters for the other checks (a realistic, non-degenerate setting).
TYPICAL_PARAMS: dict[str, dict] = {
    **IDENTITY_PARAMS,
    "slerp": {"t": 0.3},
    "task_arithmetic": {"weight": 0.5},
    "ties": {"weight": 1.0, "density": 0.3},
    "dare_linear": {"weight": 0.5, "density": 0.5},
    "dare_ties": {"weight": 1.0, "density": 0.5},
    "breadcrumbs": {"weight": 0.5, "density": 0.8, "gamma": 0.02},
    "breadcrumbs_ties": {"weight": 0.5, "density": 0.8, "gamma": 0.02},
    "della": {"weight": 1.0, "density": 0.5, "epsilon": 0.1},
    "della_linear": {"weight": 0.5, "density": 0.5, "epsilon": 0.1},
    "sce": {"select_topk": 0.5},
    "nuslerp": {"weight": 0.5},
    "multislerp": {"weight": 1.0},
    "pcb": {"density": 0.3},
    "tsv_m": {},
    "iso_cts": {"common_space_fraction": 0.8},
    "cart": {"rank_ratio": 0.25},
    "lines": {"beta": 0.5},
    "wudi": {"steps": 50, "lr": 1e-3},
    "doge_ta": {"steps": 50},
    "consensus": {"weight": 1.0, "tall_mask_lambda": 0.4, "k": 2, "lambda": 0.5},
    "tall_masks": {"weight": 1.0, "tall_mask_lambda": 0.4},
}


def _experts_for(spec) -> int:
    count = N
    if spec.max_models is not None:
        count = min(count, spec.max_models)
    return max(count, spec.min_models)


def _params(spec, values: dict, n: int):
    # the tensor facts as the engine fills them in for a tensor halfway down the stack
    return spec.make_params(n, values, facts={name: 0.5 for name in tensor_facts(spec.params)})


def _merge(spec, base, experts, values, seed=0, name="t"):
    params = _params(spec, values, len(experts))
    out = spec.merge(base if spec.base != "unused" else None, experts, params, TensorRng(seed, name))
    if spec.side_outputs:  # one model per task (EMR, TALL masks): the contract is checked on task 0's model
        return single_tensor_task_model(out[0], out[1], 0)
    return out


def _module_specs(name):
    """The specs a public module of mergesmith.methods exposes: its SPEC, or its SPECS (two variants of a method)."""
    module = importlib.import_module(f"mergesmith.methods.{name}")
    return tuple(getattr(module, "SPECS", ())) + ((module.SPEC,) if hasattr(module, "SPEC") else ())


def test_every_module_is_in_the_catalogue():
    modules = sorted(m.name for m in pkgutil.iter_modules(methods_pkg.__path__) if not m.name.startswith("_"))
    assert len(modules) >= 25
    exposed = [(name, spec) for name in modules for spec in _module_specs(name)]
    assert all(_module_specs(name) for name in modules), "a public module exposes neither SPEC nor SPECS"
    missing = [f"{name}: {spec.name}" for name, spec in exposed if METHODS.get(spec.name) is not spec]
    assert not missing, f"specs not listed in METHODS: {missing}"
    # and METHODS lists nothing else: each entry is one public module's spec, under its own name
    assert sorted(spec.name for _, spec in exposed) == sorted(METHODS)
    assert all(name == spec.name for name, spec in METHODS.items())


def _write_package(root, modules: dict[str, str]):
    package = root / "fake_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / f"{name}.py").write_text(source)
    return package


SPEC_SOURCE = """
from dataclasses import dataclass
from mergesmith.methods._spec import MethodSpec

@dataclass(frozen=True)
class Params:
    pass

def merge(base, experts, params, rng=None):
    return experts[0]

SPEC = MethodSpec(name={name!r}, params=Params, paper="p", base="unused", whole_tensor=merge)
"""


def test_the_catalogue_scan_refuses_a_module_without_a_spec_and_duplicate_names(tmp_path, monkeypatch):
    from mergesmith.methods import catalogue

    monkeypatch.syspath_prepend(str(tmp_path))
    good = _write_package(
        tmp_path,
        {"b_method": SPEC_SOURCE.format(name="b"), "a_method": SPEC_SOURCE.format(name="a"), "_helpers": "X = 1\n"},
    )
    assert list(catalogue("fake_methods", [str(good)])) == ["a", "b"]  # sorted by module; private modules skipped
    (good / "c_method.py").write_text("X = 1\n")
    with pytest.raises(TypeError, match="c_method is a public method module but exposes no SPEC"):
        catalogue("fake_methods", [str(good)])
    (good / "c_method.py").unlink()
    (good / "d_method.py").write_text(SPEC_SOURCE.format(name="a"))
    with pytest.raises(TypeError, match="two merge methods are named 'a'"):
        catalogue("fake_methods", [str(good)])


def test_catalogue_has_every_documented_method():
    wanted = {
        "linear",
        "slerp",
        "nuslerp",
        "multislerp",
        "karcher",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "sce",
        "magmax",
        "model_stock",
        "nearswap",
        "passthrough",
        "pcb",
        "tsv_m",
        "iso_c",
        "iso_cts",
        "cart",
        "lines",
        "wudi",
        "doge_ta",
        "consensus",
        "tall_masks",
        "emr",
    }
    assert wanted <= set(METHODS)


def test_every_method_has_contract_parameters():
    assert set(METHODS) <= set(IDENTITY_PARAMS), "add the new method to IDENTITY_PARAMS"


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(24, 20, generator=g)
    experts = [base + 0.05 * torch.randn(24, 20, generator=g) for _ in range(N)]
    return base, experts


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(IDENTITY_DOES_NOT_HOLD)))
def test_identical_experts_give_the_expert(name, tensors):
    spec = METHODS[name]
    base, experts = tensors
    n = _experts_for(spec)
    out = _merge(spec, base, [experts[0].clone() for _ in range(n)], IDENTITY_PARAMS[name])
    torch.testing.assert_close(out, experts[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n in METHODS if METHODS[n].base != "unused"))
def test_zero_task_vectors_give_the_base(name, tensors):
    spec = METHODS[name]
    base, _ = tensors
    n = _experts_for(spec)
    out = _merge(spec, base, [base.clone() for _ in range(n)], TYPICAL_PARAMS[name])
    torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_same_seed_same_bytes_and_finite(name, tensors):
    spec = METHODS[name]
    base, experts = tensors
    experts = experts[: _experts_for(spec)]
    first = _merge(spec, base, experts, TYPICAL_PARAMS[name], seed=7)
    second = _merge(spec, base, [e.clone() for e in experts], TYPICAL_PARAMS[name], seed=7)
    assert torch.equal(first, second)
    assert torch.isfinite(first).all()
    assert first.dtype == torch.float32 and first.shape == base.shape
    if spec.randomized:
        other = _merge(spec, base, experts, TYPICAL_PARAMS[name], seed=7, name="another tensor")
        assert not torch.equal(first, other), "a different tensor name must draw a different mask"


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n, s in METHODS.items()
        if s.order_invariant
        and not s.randomized
        and (s.max_models is None or s.max_models > 1)
        and not s.side_outputs  # per-task models follow their experts (test_dataless_family.py)
    ),
)
def test_order_of_experts_does_not_matter(name, tensors):
    spec = METHODS[name]
    base, experts = tensors
    experts = experts[: _experts_for(spec)]
    forward = _merge(spec, base, experts, TYPICAL_PARAMS[name])
    backward = _merge(spec, base, experts[::-1], TYPICAL_PARAMS[name])
    torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fp64_stays_fp64(name, tensors):
    spec = METHODS[name]
    base, experts = tensors
    experts = [e.double() for e in experts[: _experts_for(spec)]]
    out = _merge(spec, base.double(), experts, TYPICAL_PARAMS[name])
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", sorted(n for n in METHODS if METHODS[n].streaming is not None))
def test_block_protocol_equals_whole_tensor(name, monkeypatch):
    spec = METHODS[name]
    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 48, generator=g)
    experts = [base + 0.05 * torch.randn(64, 48, generator=g) for _ in range(_experts_for(spec))]
    values = TYPICAL_PARAMS[name]
    whole = _merge(spec, base, experts, values, seed=3)
    monkeypatch.setattr(_blocks, "BLOCK_ELEMENTS", 48 * 5)  # 5 rows a block: 13 blocks
    params = _params(spec, values, len(experts))
    rng = TensorRng(3, "t")
    use_base = base if spec.base != "unused" else None
    slices = _blocks.row_blocks(base.shape)
    assert len(slices) == 13

    def blocks():
        for rows in slices:
            yield (use_base[rows] if use_base is not None else None), [e[rows] for e in experts]

    ctx = spec.streaming.context(blocks, params, rng)
    streamed = torch.cat([spec.streaming.merge_block(b, e, params, ctx, rng, i) for i, (b, e) in enumerate(blocks())])
    if spec.randomized:
        # Masks are drawn per block, so streaming with other block sizes draws other masks; with the same
        # blocks the bytes must be equal.
        whole = spec.merge(use_base, experts, params, rng)
    assert torch.equal(streamed, whole)

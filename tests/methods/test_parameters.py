"""Parameters are declared once, on their Params field, and checked by one function, ``MethodSpec.make_params``.

- every declared interval refuses a value just outside each end and accepts one just inside, every declared set of
  choices refuses a value outside it; integers refuse fractions; all as one-line ConfigErrors naming the parameter,
  the rule and the value;
- rules across parameters (della's density +/- epsilon) are refused the same way;
- the Python API keeps that contract: unknown methods and bad parameters are ConfigErrors, a method failing on a
  tensor is a MergesmithError naming the method and the tensor.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mergesmith.api import merge_state_dicts
from mergesmith.engine.execute import MethodFailed
from mergesmith.engine.side_outputs import merge_state_dicts_per_task
from mergesmith.errors import ConfigError, MergesmithError
from mergesmith.methods import METHODS
from mergesmith.methods._spec import Interval, param_infos

N = 3

# The smallest valid values of the required parameters, so that make_params gets past them.
REQUIRED = {"weight": 1.0, "t": 0.5}


def _rules():
    for name in sorted(METHODS):
        for info in param_infos(METHODS[name].params).values():
            if info.within is not None or info.choices is not None or info.kind is int:
                yield name, info


RULES = list(_rules())


def _values(spec, name: str, value) -> dict:
    infos = param_infos(spec.params)
    values = {k: v for k, v in REQUIRED.items() if k in infos and infos[k].required}
    if spec.name.startswith("della") and name == "density":
        values["epsilon"] = 0.0  # so that density alone decides (density +/- epsilon is checked on its own)
    values[name] = value
    return values


def _just_outside(interval: Interval, step: float) -> list[float]:
    out = []
    if interval.low != -math.inf:
        out.append(interval.low if interval.open_low else interval.low - step)
    if interval.high != math.inf:
        out.append(interval.high if interval.open_high else interval.high + step)
    return out


def _just_inside(interval: Interval, step: float) -> list[float]:
    out = []
    if interval.low != -math.inf:
        out.append(interval.low + step if interval.open_low else interval.low)
    if interval.high != math.inf:
        out.append(interval.high - step if interval.open_high else interval.high)
    return out


def test_the_declared_rules_cover_the_parameters_that_need_them():
    declared = {(name, info.name) for name, info in RULES}
    for method, parameter in [
        ("ties", "density"),
        ("breadcrumbs", "gamma"),
        ("della", "epsilon"),
        ("sce", "select_topk"),
        ("tsv_m", "sv_reduction"),
        ("iso_cts", "common_space_fraction"),
        ("cart", "rank_ratio"),
        ("wudi", "steps"),
        ("doge_ta", "subspace"),
        ("consensus", "k"),
        ("emr", "rescale_by"),
        ("tall_masks", "aggregation"),
        ("regmean_combine", "input_axis"),
        ("karcher", "max_iter"),
        ("karcher", "tol"),
        ("multislerp", "eps"),
    ]:
        assert (method, parameter) in declared, (method, parameter)


@pytest.mark.parametrize(
    "method, info",
    [r for r in RULES if r[1].within is not None],
    ids=[f"{m}.{i.name}" for m, i in RULES if i.within is not None],
)
def test_every_declared_interval_refuses_just_outside_and_accepts_just_inside(method, info):
    spec = METHODS[method]
    step = 1 if info.kind is int else 1e-6
    for value in _just_outside(info.within, step):
        with pytest.raises(ConfigError) as caught:
            spec.make_params(N, _values(spec, info.name, value))
        message = str(caught.value)
        assert f"{info.name} must be in {info.within}, got {value:g}" in message and "\n" not in message, message
    for value in _just_inside(info.within, step):
        params = spec.make_params(N, _values(spec, info.name, value))
        got = getattr(params, info.field_name)
        assert (got[0] if info.per_model else got) == value


@pytest.mark.parametrize(
    "method, info",
    [r for r in RULES if r[1].choices is not None],
    ids=[f"{m}.{i.name}" for m, i in RULES if i.choices is not None],
)
def test_every_declared_choice_is_accepted_and_nothing_else(method, info):
    spec = METHODS[method]
    for choice in info.choices:
        spec.make_params(N, _values(spec, info.name, choice))
    outside = "something else" if info.kind is str else max(info.choices) + 1
    with pytest.raises(ConfigError, match=f"{info.name} must be one of .*, got {outside!r}"):
        spec.make_params(N, _values(spec, info.name, outside))


@pytest.mark.parametrize(
    "method, info", [r for r in RULES if r[1].kind is int], ids=[f"{m}.{i.name}" for m, i in RULES if i.kind is int]
)
def test_integer_parameters_refuse_fractions(method, info):
    spec = METHODS[method]
    with pytest.raises(ConfigError, match=f"{info.name} must be an integer, got 1.5"):
        spec.make_params(N, _values(spec, info.name, 1.5))


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_keep_probabilities_must_be_probabilities(method):
    spec = METHODS[method]
    with pytest.raises(
        ConfigError,
        match=r"della.*: density \+/- epsilon must lie inside \(0, 1\), got density=0.5, "
        r"epsilon=0.6",
    ):
        spec.make_params(2, {"weight": 1.0, "density": 0.5, "epsilon": 0.6})
    with pytest.raises(ConfigError, match="density=0.1, epsilon=0.15"):  # the default epsilon, a small density
        spec.make_params(2, {"weight": 1.0, "density": [0.5, 0.1]})
    spec.make_params(2, {"weight": 1.0, "density": 0.5, "epsilon": 0.4})
    spec.make_params(2, {"weight": 1.0, "density": 1.0, "epsilon": 0.9})  # density 1 keeps everything


def test_make_params_coerces_and_broadcasts():
    params = METHODS["ties"].make_params(2, {"weight": [1, "0.5"], "density": 1, "lambda": "1e-1"})
    assert params.weight == (1.0, 0.5) and params.density == (1.0, 1.0) and params.lambda_ == 0.1
    assert all(isinstance(v, float) for v in params.weight + params.density)
    assert METHODS["tsv_m"].make_params(2, {}).sv_reduction is None
    assert METHODS["passthrough"].make_params(1, {"scale": [None]}).scale == (None,)
    with pytest.raises(ConfigError, match="ties: normalize must be true or false, got 1"):
        METHODS["ties"].make_params(2, {"weight": 1.0, "normalize": 1})
    with pytest.raises(ConfigError, match=r"ties: model 1: weight must be a number, got 'heavy'"):
        METHODS["ties"].make_params(2, {"weight": [1.0, "heavy"]})
    with pytest.raises(ConfigError, match=r"lambda must be a finite number, got an integer of 16610 bits"):
        METHODS["ties"].make_params(2, {"weight": 1.0, "lambda": 10**5000})


def test_every_method_builds_its_default_params():
    for name, spec in METHODS.items():
        infos = param_infos(spec.params)
        params = spec.make_params(N, {k: v for k, v in REQUIRED.items() if k in infos and infos[k].required})
        assert dataclasses.is_dataclass(params), name


# ---------------------------------------------------------------------------------------------------------------
# the Python API's error contract


def _state_dicts(n=2, shape=(4, 3)):
    g = torch.Generator().manual_seed(0)
    base = {"layer.weight": torch.randn(shape, generator=g)}
    experts = [{"layer.weight": base["layer.weight"] + 0.1 * torch.randn(shape, generator=g)} for _ in range(n)]
    return base, experts


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("ties", {"weight": 1.0, "density": 1.5}, r"ties: density must be in \(0, 1\], got 1.5"),
        ("ties", {"weight": 1.0, "desnity": 0.5}, "unknown parameter 'desnity' for ties; allowed: density"),
        ("ties", {"density": 0.5}, "missing required parameter 'weight'"),
        ("della", {"weight": 1.0, "density": 0.5, "epsilon": 0.6}, r"density \+/- epsilon"),
        ("tiez", {}, "unknown merge method 'tiez'; known methods: .*ties"),
    ],
)
def test_merge_state_dicts_refuses_bad_methods_and_parameters_with_config_errors(method, params, message):
    base, experts = _state_dicts()
    with pytest.raises(ConfigError, match=message):
        merge_state_dicts(base, experts, method, **params)


def test_merge_state_dicts_per_task_refuses_bad_methods_and_parameters_with_config_errors():
    base, experts = _state_dicts()
    with pytest.raises(ConfigError, match="rescale_by must be one of sum, tensor_means, got 'max'"):
        merge_state_dicts_per_task(base, experts, "emr", rescale_by="max")
    with pytest.raises(ConfigError, match="unknown merge method 'emrr'"):
        merge_state_dicts_per_task(base, experts, "emrr")


def test_a_method_failing_on_a_tensor_names_the_method_and_the_tensor():
    base, experts = _state_dicts()
    experts[1]["layer.weight"] = experts[1]["layer.weight"][:2]  # a shape the method cannot merge
    with pytest.raises(MethodFailed, match="ties: merging tensor 'layer.weight' failed: ValueError: .*shape") as caught:
        merge_state_dicts(base, experts, "ties", weight=1.0)
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_factorisation_failure_is_a_mergesmith_error(monkeypatch):
    def failing(base, experts, params, rng=None):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge\nbecause of something")

    monkeypatch.setitem(METHODS, "tsv_m", dataclasses.replace(METHODS["tsv_m"], whole_tensor=failing))
    base, experts = _state_dicts()
    with pytest.raises(
        MergesmithError,
        match="tsv_m: merging tensor 'layer.weight' failed: LinAlgError: linalg.svd: "
        "The algorithm failed to converge because of something$",
    ):
        merge_state_dicts(base, experts, "tsv_m")


def test_missing_and_non_tensor_entries_are_named():
    base, experts = _state_dicts()
    with pytest.raises(MergesmithError, match="the base has no tensor 'layer.weight'"):
        merge_state_dicts({}, experts, "ties", weight=1.0)
    experts = [{"layer.weight": [1.0, 2.0]}, {"layer.weight": [1.0, 2.0]}]
    with pytest.raises(MergesmithError, match="'layer.weight' is a list, not a torch.Tensor"):
        merge_state_dicts(base, experts, "ties", weight=1.0)


def test_the_methods_listing_shows_each_declared_rule():
    from tests.helpers import run_cli

    result = run_cli("methods")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  density (per model, default 1, in (0, 1]) - fraction of largest-magnitude entries kept" in lines
    assert (
        "  rescale_by (global, default sum, one of sum, tensor_means) - "
        + param_infos(METHODS["emr"].params)["rescale_by"].doc
        in lines
    )
    assert any(line.startswith("  k (global, default 2, an integer in [0, inf))") for line in lines)
    assert any(line.startswith("  and: density +/- epsilon inside (0, 1)") for line in lines)

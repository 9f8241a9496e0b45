"""Merge configs that are unsafe, misspelled, mistyped, out of range, or ask for something that cannot apply."""

from __future__ import annotations

import pytest

from tests.faults._faults import expect_refusal, ties_config
from tests.helpers import load_tensors, run_cli, write_yaml

pytestmark = pytest.mark.e2e


def _inputs(fam):
    return [fam.base, *fam.experts[:2]]


@pytest.mark.parametrize(
    "payload",
    [
        "merge_method: !!python/object/apply:os.system ['touch {marker}']",
        "merge_method: !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        'merge_method: !!python/name:os.system\nx: !!python/object/apply:builtins.exec [\'open("{marker}", "w")\']',
    ],
)
def test_yaml_python_tags_are_refused_and_never_run(llama_family, tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "c.yaml"
    path.write_text(payload.format(marker=marker) + f"\nmodels: [{{model: {llama_family.experts[0]}}}]\n")
    expect_refusal(tmp_path, path, str(path), "not valid YAML", "no tags")
    assert not marker.exists()


def test_unknown_top_level_key(llama_family, tmp_path):
    expect_refusal(tmp_path, ties_config(llama_family, merge_methd="ties"), "merge_methd", "allowed keys")


def test_misspelled_parameter_names_its_yaml_path(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["models"][1]["parameters"] = {"desnity": 0.5}
    expect_refusal(tmp_path, cfg, "models[1].parameters.desnity", "allowed:", "density", inputs=_inputs(llama_family))


def test_unknown_method(llama_family, tmp_path):
    expect_refusal(tmp_path, ties_config(llama_family, merge_method="tiez"), "tiez", "known methods")


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"models": "expert_0"}, ("models", "valid list")),
        ({"seed": "forty-two"}, ("seed", "integer")),
        ({"dtype": "int8"}, ("dtype", "int8", "float16")),
        ({"parameters": {"weight": 1.0, "density": "lots"}}, ("parameters.density", "density must be a number")),
        ({"parameters": {"weight": True, "density": 0.5}}, ("parameters.weight", "weight must be a number")),
        ({"parameters": {"weight": 1.0, "density": float("nan")}}, ("parameters.density", "finite")),
    ],
)
def test_wrong_types(llama_family, tmp_path, override, needles):
    expect_refusal(tmp_path, ties_config(llama_family, **override), *needles)


def test_wrong_type_inside_a_model_entry(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["models"][0] = {"model": 7}
    expect_refusal(tmp_path, cfg, "models[0].model", "string")


@pytest.mark.parametrize("density", [0, 1.5, -0.1])
def test_density_out_of_range(llama_family, tmp_path, density):
    cfg = ties_config(llama_family)
    cfg["parameters"]["density"] = density
    expect_refusal(tmp_path, cfg, "parameters.density", "density must be in (0, 1]")


def test_density_out_of_range_inside_a_gradient(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["models"][1]["parameters"] = {"density": [0.2, 0.5, 1.2]}
    expect_refusal(tmp_path, cfg, "models[1].parameters.density", "got 1.2")


def _della_config(fam, **parameters) -> dict:
    return ties_config(fam, merge_method="della", parameters={"weight": 1.0, **parameters})


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        # a rule across two parameters, each valid alone
        (
            lambda fam: _della_config(fam, density=0.5, epsilon=0.6),
            ("della", "density +/- epsilon must lie inside (0, 1)", "density=0.5, epsilon=0.6"),
        ),
        # the same rule with the default epsilon, a density set for one model only
        (
            lambda fam: {
                **_della_config(fam),
                "models": [
                    {"model": str(fam.experts[0]), "parameters": {"density": 0.1}},
                    {"model": str(fam.experts[1])},
                ],
            },
            ("density=0.1, epsilon=0.15",),
        ),
        # a value that reaches the rule only after a filter picks it for some tensors
        (
            lambda fam: _della_config(fam, density=[{"filter": "mlp", "value": 0.05}, {"value": 0.5}]),
            ("mlp", "density=0.05, epsilon=0.15"),
        ),
        # rules declared on the method's own parameters
        (
            lambda fam: {
                "merge_method": "karcher",
                "models": [{"model": str(p)} for p in fam.experts[:2]],
                "parameters": {"tol": -1.0},
            },
            ("parameters.tol", "tol must be in [0, inf), got -1"),
        ),
        (
            lambda fam: {
                "merge_method": "karcher",
                "models": [{"model": str(p)} for p in fam.experts[:2]],
                "parameters": {"max_iter": 2.5},
            },
            ("parameters.max_iter", "max_iter must be an integer, got 2.5"),
        ),
        (
            lambda fam: {
                "merge_method": "multislerp",
                "models": [{"model": str(p)} for p in fam.experts[:2]],
                "parameters": {"weight": 1.0, "eps": 0},
            },
            ("parameters.eps", "eps must be in (0, inf), got 0"),
        ),
        (
            lambda fam: {
                "merge_method": "multislerp",
                "models": [
                    {"model": str(fam.experts[0]), "parameters": {"weight": 1.0}},
                    {"model": str(fam.experts[1]), "parameters": {"weight": -1.0}},
                ],
            },
            ("weights [1.0, -1.0] sum to 0",),
        ),
    ],
    ids=[
        "della-epsilon",
        "della-default-epsilon",
        "della-filtered",
        "karcher-tol",
        "karcher-max-iter",
        "multislerp-eps",
        "multislerp-weights",
    ],
)
def test_parameter_rules_are_refused_at_plan_time(llama_family, tmp_path, config, needles):
    cfg = config(llama_family)
    planned = run_cli("plan", write_yaml(tmp_path / "p.yaml", cfg))
    assert planned.exit_code == 2, planned.output
    lines = planned.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(n in lines[0] for n in needles), planned.output
    expect_refusal(tmp_path, cfg, *needles, inputs=_inputs(llama_family))


def test_filter_that_matches_nothing_warns_and_merges(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["parameters"]["density"] = [{"filter": "mlp.up_prj", "value": 0.9}, {"value": 0.5}]
    reference = ties_config(llama_family)
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert (
        len(warnings) == 1 and "parameters.density" in warnings[0] and "'mlp.up_prj' matches no tensor" in warnings[0]
    )
    # The filter never applied: the output is the plain density-0.5 merge.
    assert run_cli("merge", write_yaml(tmp_path / "r.yaml", reference), tmp_path / "ref", "--quiet").exit_code == 0
    ours, ref = load_tensors(tmp_path / "out"), load_tensors(tmp_path / "ref")
    assert all((ours[k] == ref[k]).all() for k in ref)


def test_filter_that_matches_is_silent(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["parameters"]["density"] = [{"filter": "mlp.up_proj", "value": 0.9}, {"value": 0.5}]
    result = run_cli("plan", write_yaml(tmp_path / "c.yaml", cfg))
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_gradient_longer_than_the_layer_count_warns(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["models"][0]["parameters"] = {"weight": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}
    result = run_cli("merge", write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.output
    assert "models[0].parameters.weight" in warnings[0] and "9 values over 4 layers" in warnings[0]


def test_slice_out_of_range(llama_family, tmp_path):
    cfg = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(llama_family.experts[0]), "layer_range": [0, 9]}]}],
    }
    expect_refusal(tmp_path, cfg, "layer_range", "4 layers", inputs=[llama_family.experts[0]])


def test_slice_backwards(llama_family, tmp_path):
    cfg = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(llama_family.experts[0]), "layer_range": [3, 1]}]}],
    }
    expect_refusal(tmp_path, cfg, "slices[0].sources[0].layer_range", "0 <= start < end")


def test_same_model_listed_twice(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    cfg["models"][1]["model"] = cfg["models"][0]["model"]
    expect_refusal(tmp_path, cfg, "models[1]", "listed twice")


def test_zero_models(llama_family, tmp_path):
    expect_refusal(tmp_path, ties_config(llama_family, models=[]), "'models' is empty")


def test_base_model_missing_when_required(llama_family, tmp_path):
    cfg = ties_config(llama_family)
    del cfg["base_model"]
    expect_refusal(tmp_path, cfg, "ties needs base_model")


def test_tokenizer_union_is_refused(llama_family, tmp_path):
    expect_refusal(tmp_path, ties_config(llama_family, tokenizer_source="union"), "union")


def test_bad_shard_size(llama_family, tmp_path):
    expect_refusal(tmp_path, ties_config(llama_family), "lots", args=("--max-shard-size", "lots"))


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ("config file not found",)),
        (b"\xff\xfe\x00 binary", ("not a UTF-8 text file",)),
        (b"- just\n- a list\n", ("expected a mapping",)),
        (b"merge_method: [unclosed\n", ("not valid YAML at line",)),
    ],
)
def test_unreadable_config_files(tmp_path, content, needles):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    expect_refusal(tmp_path, path, str(path), *needles)

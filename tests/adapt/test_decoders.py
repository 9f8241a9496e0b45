"""Every adapt method on decoders ("any transformers encoder or decoder whose experts share a base"): tiny
GPT-2 (Conv1D weights stored [in, out], fused q|k|v, LayerNorm with bias) and tiny LLaMA (gate/up/down MLP, RMSNorm,
rotary positions, no biases, an untied LM head in the checkpoints). Each method runs with tiny budgets and is checked
for finite outputs, for having moved away from where it started, and for a save -> load_merged round trip; then the
decoder-specific fixes: RegMean / RegMean++ / BMM solve GPT-2's Conv1D layers (they saw no linear layer before),
Twin-Merging's hook path covers Conv1D and RMSNorm, and `mergesmith adapt` runs on a GPT-2 pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergesmith.adapt import ADAPT_METHODS
from mergesmith.adapt._spec import parse_params
from mergesmith.adapt.problem import AdaptProblem
from mergesmith.adapt.result import save_result
from mergesmith.bench.adapt_problem import load_problem
from mergesmith.errors import MergesmithError
from tests.adapt.pools import build_text_pool
from tests.helpers import load_tensors, run_cli

ARCHS = ("gpt2", "llama")

# Tiny budgets: every method in the catalogue must have an entry (a new method fails here until it is added).
FAST: dict[str, dict] = {
    "fisher": {"num_examples": 2},
    "regmean": {"num_examples": 6, "batch_size": 4},
    "regmean_plusplus": {"num_examples": 6, "batch_size": 4},
    "bmm": {"trials": 2, "num_examples": 6, "val_examples": 4, "batch_size": 4},
    "bmm_datafree": {"trials": 0},
    "adamerging_taskwise": {"steps": 2, "lr": 0.05, "batch_size": 4, "progress": False},
    "adamerging_layerwise": {"steps": 2, "lr": 0.05, "batch_size": 4, "progress": False},
    "adamerging_plusplus": {"steps": 2, "lr": 0.05, "batch_size": 4, "progress": False},
    "atlas": {"steps": 2, "lr": 0.05, "batch_size": 4, "progress": False},
    "twin_merging": {"rank": 4, "router_steps": 10, "router_hidden": 8, "progress": False},
    "surgery": {"steps": 20, "lr": 1e-2},
    "surgery_v2": {"steps": 3, "lr": 1e-2, "batch_size": 4},
    "wemoe": {"steps": 2, "lr": 1e-2, "batch_size": 4},
    "e_wemoe": {"steps": 2, "lr": 1e-2, "batch_size": 4},
}

# A linear weight, and a norm weight (merged by plain averaging / the anchor), per architecture (encoder names).
LINEAR = {"gpt2": "h.1.mlp.c_fc.weight", "llama": "layers.1.mlp.up_proj.weight"}
NORM = {"gpt2": "h.1.ln_2.weight", "llama": "layers.1.post_attention_layernorm.weight"}


pytestmark = pytest.mark.usefixtures("one_thread")


class _Pools:
    """A GPT-2 and a LLaMA pool, each built (and loaded as a problem) once per module, on first use."""

    def __init__(self, factory):
        self._factory = factory
        self._built: dict[str, tuple[Path, AdaptProblem]] = {}

    def get(self, arch: str) -> tuple[Path, AdaptProblem]:
        if arch not in self._built:
            yaml_path = build_text_pool(self._factory.mktemp(f"adapt_{arch}"), arch=arch)
            self._built[arch] = (yaml_path, load_problem(pool=yaml_path, progress=False, echo=lambda _: None))
        return self._built[arch]


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return _Pools(tmp_path_factory)


@pytest.fixture(params=ARCHS)
def decoder(request, pools) -> tuple[str, AdaptProblem]:
    return request.param, pools.get(request.param)[1]


def _run(problem: AdaptProblem, name: str, seed: int = 0, **overrides):
    spec = ADAPT_METHODS[name]
    return spec.run(problem, parse_params(spec, {**FAST[name], **overrides}), seed)


def _batch(problem: AdaptProblem, task: str, n: int = 4):
    return next(problem.batches(problem.task(task).unlabeled, n))


def _features(problem: AdaptProblem, encoder, task: str) -> torch.Tensor:
    with torch.no_grad():
        return problem.pooled(encoder, _batch(problem, task)).float()


def _combined(problem: AdaptProblem, scale: float | None) -> dict[str, torch.Tensor]:
    """base + scale * sum of task vectors; ``scale=None``: the plain average of the experts."""
    base, vectors = problem.base_state(), problem.task_vectors()
    s = 1.0 / len(vectors) if scale is None else scale
    return {k: b + s * sum(v[k] for v in vectors.values()) for k, b in base.items()}


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6, rtol=0)


def _check_moved(name: str, arch: str, problem: AdaptProblem, result) -> None:
    """The method did something beyond its starting point (the cheapest meaningful check per method)."""
    state = result.merged
    if name in ("fisher", "regmean", "regmean_plusplus", "bmm", "bmm_datafree"):
        start = _combined(problem, 0.3 if name.startswith("bmm") else None)  # averaging / BMM's anchor
        assert _differs(state[LINEAR[arch]], start[LINEAR[arch]]), "the linear layers were not solved"
        if name != "fisher":  # RegMean averages, BMM takes the anchor's values for every other tensor
            torch.testing.assert_close(state[NORM[arch]], start[NORM[arch]], atol=1e-6, rtol=0)
    elif name.startswith("adamerging") or name == "atlas":
        lam = result.extras[f"{'atlas' if name == 'atlas' else 'adamerging'}.coefficients"]
        init = 0.0 if name == "atlas" else 0.3
        assert torch.isfinite(lam).all() and _differs(lam, torch.full_like(lam, init))
        assert (
            len(result.info["losses"]) == FAST[name]["steps"]
            and torch.isfinite(torch.tensor(result.info["losses"])).all()
        )
    elif name == "twin_merging":
        assert result.info["inference"] == "hooks"  # Conv1D and RMSNorm are routed by hooks, not per input
        shared = problem.encoder_with({k: v for k, v in state.items() if v.is_floating_point()})
        for task in problem.task_names:
            assert _differs(_features(problem, result.encoder_for(task), task), _features(problem, shared, task))
    elif name.startswith("surgery"):
        merged = problem.encoder_with({k: v for k, v in state.items() if v.is_floating_point()})
        for task, stats in result.info["tasks"].items():
            assert _differs(_features(problem, result.encoder_for(task), task), _features(problem, merged, task))
            assert stats["representation_l1_after"] < stats["representation_l1_before"], task  # on the same inputs
            if name == "surgery":  # SurgeryV2's per-step loss is on a new batch each step: too noisy for 3 steps
                assert stats["loss_last"] < stats["loss_first"], task
        if name == "surgery_v2":  # a trained module after every block (W_up starts at zero)
            assert all(bool(m.up.weight.abs().sum() > 0) for m in result.encoder_for("topics").surgery)
    elif name.endswith("wemoe"):
        bias = result.extras["router.0.fc2.bias"]
        assert _differs(bias, torch.full_like(bias, 0.3))  # the routers were trained from their init
        assert result.info["note"].startswith("2 MLP blocks routed")
    else:  # pragma: no cover - FAST's check below keeps this list complete
        raise AssertionError(f"no check for {name}")


def test_every_method_has_a_budget():
    assert set(FAST) == set(ADAPT_METHODS)


@pytest.mark.parametrize("name", sorted(ADAPT_METHODS))
def test_method_runs_on_decoder_and_round_trips(decoder, name, tmp_path):
    from mergesmith import load_merged

    arch, problem = decoder
    result = _run(problem, name)
    base = problem.load_encoder(problem.base_dir)
    for task in problem.task_names:
        features = _features(problem, result.encoder_for(task), task)
        assert features.shape == (4, 64) and torch.isfinite(features).all()
        assert _differs(features, _features(problem, base, task))  # something was merged
    _check_moved(name, arch, problem, result)
    out = save_result(result, problem, tmp_path / name)
    assert json.loads((out / "mergesmith.json").read_text())["kind"] == result.kind
    for task in problem.task_names:
        loaded = load_merged(out, task=task if result.kind == "surgery" else None)
        if result.kind == "weights":
            loaded = loaded.base_model  # the decoder, whether the model comes with its LM head or not
        torch.testing.assert_close(
            _features(problem, loaded, task), _features(problem, result.encoder_for(task), task), atol=1e-5, rtol=1e-5
        )


# ------------------------------------------------------------------------------------------------------------------
# The output holds every tensor of the base checkpoint: it loads with the class config.json names, head included


def _load_causal_lm(directory: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("name", ["fisher", "adamerging_taskwise"])
def test_output_loads_as_the_base_architecture_with_its_lm_head(decoder, name, tmp_path):
    arch, problem = decoder
    result = _run(problem, name)
    out = save_result(result, problem, tmp_path / name)
    model, info = _load_causal_lm(out)
    assert type(model).__name__ == json.loads((out / "config.json").read_text())["architectures"][0]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    decoder_state = model.base_model.state_dict()
    for key, merged in result.merged.items():
        assert torch.equal(decoder_state[key], merged), key
    base, _ = _load_causal_lm(problem.base_dir)
    if arch == "llama":  # an untied LM head: the base's own, never merged
        assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
        assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    else:  # GPT-2 ties its LM head to the (merged) token embeddings
        assert torch.equal(model.lm_head.weight, result.merged["wte.weight"])


def test_adapt_cli_on_a_llama_pool_keeps_the_lm_head(pools, tmp_path):
    pool_yaml, problem = pools.get("llama")
    out = tmp_path / "fisher"
    outcome = run_cli("adapt", "fisher", "--pool", pool_yaml, out, "--param", "num_examples=2", "--quiet")
    assert outcome.exit_code == 0, outcome.output
    model, info = _load_causal_lm(out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base, _ = _load_causal_lm(problem.base_dir)
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    ids = torch.tensor([[2, 5, 7, 3]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


# ------------------------------------------------------------------------------------------------------------------
# The statistics methods on GPT-2's Conv1D layers


def test_regmean_weight_stored_recovers_a_planted_conv1d_map():
    """A Conv1D layer (y = x W + b, W [in, out]) seen by two experts on disjoint input subspaces: the regression in
    stored layout recovers the planted map and reproduces each expert on its own inputs, through a real Conv1D."""
    from transformers.pytorch_utils import Conv1D

    from mergesmith.adapt.regmean import regmean_weight_stored

    g = torch.Generator().manual_seed(2)
    d_in, d_out = 6, 5
    target = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)  # Conv1D layout
    x1 = torch.cat([torch.randn(30, 3, generator=g, dtype=torch.float64), torch.zeros(30, 3, dtype=torch.float64)], 1)
    x2 = torch.cat([torch.zeros(30, 3, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64)], 1)
    w1, w2 = target.clone(), target.clone()
    w1[3:] = torch.randn(3, d_out, generator=g, dtype=torch.float64)  # rows = inputs the expert never saw
    w2[:3] = torch.randn(3, d_out, generator=g, dtype=torch.float64)
    merged, singular = regmean_weight_stored([w1, w2], [x1.T @ x1, x2.T @ x2], 1.0, 1e-4, conv1d=True)
    assert merged.shape == (d_in, d_out) and not singular
    torch.testing.assert_close(merged, target)
    layer = Conv1D(d_out, d_in).double()
    with torch.no_grad():
        layer.weight.copy_(merged)
        layer.bias.zero_()
        torch.testing.assert_close(layer(x1), x1 @ w1)
        torch.testing.assert_close(layer(x2), x2 @ w2)
    # nn.Linear layout is untouched: the same call without conv1d is regmean_weight itself
    from mergesmith.methods.regmean_combine import regmean_weight

    linear = [w1.T.contiguous(), w2.T.contiguous()]
    torch.testing.assert_close(
        regmean_weight_stored(linear, [x1.T @ x1, x2.T @ x2], 1.0, 1e-4, conv1d=False)[0],
        regmean_weight(linear, [x1.T @ x1, x2.T @ x2], 1.0, 1e-4)[0],
    )


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_regmean_on_gpt2_solves_every_conv1d_layer(pools, tmp_path):
    import os

    import yaml
    from safetensors.torch import load_file

    from mergesmith.api import merge
    from mergesmith.methods.regmean_combine import regmean_weight

    _, problem = pools.get("gpt2")
    result = _run(problem, "regmean")
    assert (
        result.info["linear_layers"] == result.info["conv1d_layers"] == 8
    )  # 2 blocks x (c_attn, c_proj, c_fc, c_proj)
    out = save_result(result, problem, tmp_path / "regmean")
    config = yaml.safe_load((out / "merge.yaml").read_text())
    axis = config["parameters"]["input_axis"]
    assert sorted(e["filter"] for e in axis[:-1]) == sorted(f"transformer.{w}" for w in CONV1D_WEIGHTS) and axis[
        -1
    ] == {"value": 1}
    base, vectors = problem.base_state(), problem.task_vectors()
    for w, shape in (("h.1.mlp.c_fc.weight", (64, 64)), ("h.1.mlp.c_proj.weight", (256, 256))):
        grams = [
            load_file(str(out / "statistics" / f"{t}.safetensors"))[f"transformer.{w}"] for t in problem.task_names
        ]
        assert grams[0].shape == shape and torch.allclose(grams[0], grams[0].T)  # [in, in]: in = the stored rows
        # the same regression solved independently on the nn.Linear view of the stored [in, out] weights
        expected, _ = regmean_weight([(base[w] + vectors[t][w]).T for t in problem.task_names], grams, 0.95, 1e-4)
        torch.testing.assert_close(result.merged[w], expected.T, atol=1e-5, rtol=1e-5)
    # the saved merge.yaml rebuilds the model with the engine, Conv1D layers solved (not averaged)
    cwd = os.getcwd()
    try:
        os.chdir(out)
        merge("merge.yaml", tmp_path / "rebuilt")
    finally:
        os.chdir(cwd)
    rebuilt = load_file(str(next((tmp_path / "rebuilt").glob("*.safetensors"))))
    for w in CONV1D_WEIGHTS:
        torch.testing.assert_close(rebuilt[f"transformer.{w}"].float(), result.merged[w].float(), atol=1e-6, rtol=1e-6)
    plusplus = _run(problem, "regmean_plusplus")
    assert plusplus.info["engine_max_abs_difference"] < 1e-5  # the engine's solve from the saved Grams = the sweep's
    assert _differs(plusplus.merged[LINEAR["gpt2"]], result.merged[LINEAR["gpt2"]])


CONV1D_WEIGHTS = tuple(
    f"h.{layer}.{name}.weight"
    for layer in range(2)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
)


def test_bmm_on_gpt2_regresses_conv1d_in_linear_layout(pools):
    """rho -> 0 on a Conv1D weight is RegMean with alpha 1 in the [out, in] view (the closed form's known limit)."""
    from mergesmith.adapt.bmm import datafree_gram
    from mergesmith.methods.regmean_combine import regmean_weight

    _, problem = pools.get("gpt2")
    result = _run(problem, "bmm_datafree", rho=1e-6)
    assert set(result.info["groups"]) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}

    w = LINEAR["gpt2"]
    base, vectors = problem.base_state(), problem.task_vectors()
    experts = [(base[w] + vectors[t][w]).T for t in problem.task_names]
    grams = [datafree_gram(vectors[t][w].T) for t in problem.task_names]
    assert grams[0].shape == (64, 64)  # tau^T tau over the layer's inputs (c_fc: 64 in, 256 out)
    expected, _ = regmean_weight(experts, grams, 1.0, 1e-6)
    torch.testing.assert_close(result.merged[w].T, expected, atol=1e-4, rtol=1e-3)


def test_regression_methods_need_a_linear_layer():
    from mergesmith.adapt.statistics import linear_modules

    class NoLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(4, 3)
            self.norm = torch.nn.LayerNorm(3)

    with pytest.raises(
        MergesmithError, match="regmean: NoLinear has no linear layer \\(looked for nn.Linear and GPT-2 Conv1D"
    ) as err:
        linear_modules(NoLinear(), "regmean")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------------------------
# Twin-Merging's hooks on Conv1D and RMSNorm


def test_twin_hooks_equal_the_per_input_path_and_full_rank_gives_the_expert(decoder):
    from mergesmith.adapt.twin_model import TwinEncoder

    arch, problem = decoder
    result = _run(problem, "twin_merging", rank_fraction=1.0)
    twin = result.encoder_for("topics")
    assert twin.fast
    kwargs = problem.forward_kwargs(_batch(problem, "topics", 6))
    slow = TwinEncoder(twin.encoder, twin.parts, twin.router, twin.tasks, twin.pooling)
    slow.fast = False
    with torch.no_grad():
        routed = twin(**kwargs).last_hidden_state
        torch.testing.assert_close(slow(**kwargs).last_hidden_state, routed, atol=2e-5, rtol=1e-4)
        # one-hot routing at full rank: exactly the expert (every Conv1D / RMSNorm / embedding delta applied)
        twin.force_routing = torch.tensor([0.0, 1.0])
        expert = problem.load_encoder(problem.expert_dirs["topics"])
        torch.testing.assert_close(
            twin(**kwargs).last_hidden_state, expert(**kwargs).last_hidden_state, atol=2e-5, rtol=1e-4
        )
    twin.force_routing = None


# ------------------------------------------------------------------------------------------------------------------
# Name mapping on decoders: the written configs rebuild the weights through the engine


def test_fisher_and_atlas_configs_rebuild_the_weights(decoder, tmp_path, monkeypatch):
    from mergesmith.api import merge

    arch, problem = decoder
    prefix = {"gpt2": "transformer.", "llama": "model."}[arch]  # the LM checkpoints' prefix of the decoder's names
    for name, config in (("fisher", "merge.yaml"), ("atlas", "atlas.yaml")):
        result = _run(problem, name)
        out = save_result(result, problem, tmp_path / name)
        if name == "fisher":
            stats = _keys(out / "statistics" / "reviews.safetensors")
            assert f"{prefix}{LINEAR[arch]}" in stats
        monkeypatch.chdir(out)
        merge(config, tmp_path / f"{name}_rebuilt")
        compared = 0
        for key, tensor in load_tensors(tmp_path / f"{name}_rebuilt").items():
            if key.removeprefix(prefix) in result.merged:
                torch.testing.assert_close(tensor, result.merged[key.removeprefix(prefix)], atol=1e-6, rtol=0)
                compared += 1
        assert compared == len(problem.base_state()), name


# ------------------------------------------------------------------------------------------------------------------
# The CLI on a GPT-2 pool, and the bench's width check on a stock GPT-2 config


def test_adapt_cli_on_a_gpt2_pool(pools, tmp_path):
    from mergesmith import load_merged

    pool_yaml, problem = pools.get("gpt2")
    out = tmp_path / "regmean"
    outcome = run_cli(
        "adapt", "regmean", "--pool", pool_yaml, out, "--param", "num_examples=6", "--param", "batch_size=4", "--quiet"
    )
    assert outcome.exit_code == 0, outcome.output
    document = json.loads((out / "mergesmith.json").read_text())["details"]
    assert document["info"]["conv1d_layers"] == 8 and document["spec"]["params"]["num_examples"] == 6
    model = load_merged(out).base_model  # the decoder, whether the model comes with its LM head or not
    assert type(model).__name__ == "GPT2Model"
    average = _combined(problem, None)
    assert _differs(model.state_dict()[LINEAR["gpt2"]], average[LINEAR["gpt2"]])  # regression-solved, not averaged
    features = _features(problem, model, "reviews")
    assert features.shape == (4, 64) and torch.isfinite(features).all()


def test_stock_gpt2_config_loads_as_a_pool(pools):
    """save_pretrained writes GPT-2's width as n_embd only; the pool reads it through transformers' config class."""
    pool_yaml, _ = pools.get("gpt2")
    config = json.loads((pool_yaml.parent / "models" / "base" / "config.json").read_text())
    assert "hidden_size" not in config and config["n_embd"] == 64
    problem = load_problem(pool=pool_yaml, progress=False, echo=lambda _: None)
    assert all(task.head.in_features == 64 for task in problem.tasks)


def test_a_config_without_a_known_width_is_refused():
    from mergesmith.bench.features import hidden_width

    with pytest.raises(MergesmithError, match="names no hidden width"):
        hidden_width({"model_type": "no_such_architecture"})

"""Representation Surgery and SurgeryV2 on the tiny BERT pool: identity at init, the L1 objective falls, modules at
every block for V2, the merge they sit on, and save -> load_merged round trips."""

from __future__ import annotations

import pytest
import torch

from mergesmith.adapt.problem import AdaptProblem
from mergesmith.adapt.surgery import (
    DeepSurgeryEncoder,
    SurgeryEncoder,
    SurgeryModule,
    SurgeryParams,
    SurgeryV2Params,
    features_of,
    run_surgery,
    run_surgery_v2,
)
from mergesmith.errors import MergesmithError


def _outputs(problem: AdaptProblem, encoder, task: str) -> torch.Tensor:
    batch = next(iter(problem.batches(problem.task(task).unlabeled, 10)))
    with torch.no_grad():
        return encoder(**problem.forward_kwargs(batch)).last_hidden_state


@pytest.fixture(scope="module")
def surgery_result(tiny_problem):
    return run_surgery(tiny_problem, SurgeryParams(steps=150, lr=1e-2), seed=0)


@pytest.fixture(scope="module")
def surgery_v2_result(tiny_problem):
    return run_surgery_v2(tiny_problem, SurgeryV2Params(steps=6, lr=1e-2, batch_size=10), seed=0)


def test_module_at_zero_init_is_the_identity(tiny_problem: AdaptProblem):
    z = torch.randn(5, 64)
    assert torch.equal(SurgeryModule(64, 16, generator=torch.Generator().manual_seed(1))(z), z)
    merged = tiny_problem.load_encoder(tiny_problem.base_dir)
    plain = _outputs(tiny_problem, merged, "reviews")
    last = SurgeryEncoder(merged, SurgeryModule(64, 16), "mean_tokens")
    deep = DeepSurgeryEncoder(merged, torch.nn.ModuleList(SurgeryModule(64, 16) for _ in range(2)))
    assert torch.equal(_outputs(tiny_problem, last, "reviews"), plain)
    assert torch.equal(_outputs(tiny_problem, deep, "reviews"), plain)


def test_last_layer_correction_equals_tokenwise_linear_module(tiny_problem: AdaptProblem):
    """The documented equivalence: for a linear module, shifting every token by Phi(mean) gives the same pooled
    features as applying the module to every token and pooling."""
    merged = tiny_problem.load_encoder(tiny_problem.base_dir)
    module = SurgeryModule(64, 4, activation="none", generator=torch.Generator().manual_seed(0))
    torch.nn.init.normal_(module.up.weight, std=0.3, generator=torch.Generator().manual_seed(1))
    batch = next(iter(tiny_problem.batches(tiny_problem.tasks[0].unlabeled, 10)))
    kwargs = tiny_problem.forward_kwargs(batch)
    with torch.no_grad():
        ours = tiny_problem.pooled(SurgeryEncoder(merged, module, "mean_tokens"), batch)
        tokens = merged(**kwargs)
        tokens.last_hidden_state = module(tokens.last_hidden_state)
        tokenwise = features_of(tokens, "mean_tokens", kwargs["attention_mask"])
    torch.testing.assert_close(ours, tokenwise, atol=1e-5, rtol=1e-5)


def test_surgery_l1_falls_and_encoders_are_per_task(tiny_problem: AdaptProblem, surgery_result):
    for name, stats in surgery_result.info["tasks"].items():
        assert stats["loss_last"] < 0.7 * stats["loss_first"], name
        assert stats["representation_l1_after"] < 0.7 * stats["representation_l1_before"], name
    assert surgery_result.kind == "surgery"
    assert set(surgery_result.extras) == {f"{i}.final.{p}.weight" for i in range(2) for p in ("down", "up")}
    assert surgery_result.info["added_parameters"] == 2 * 2 * 16 * 64
    one, two = surgery_result.encoder_for("reviews"), surgery_result.encoder_for("topics")
    assert not torch.equal(_outputs(tiny_problem, one, "reviews"), _outputs(tiny_problem, two, "reviews"))
    with pytest.raises(MergesmithError, match="reviews, topics"):
        surgery_result.encoder_for("nope")


def test_surgery_v2_has_a_module_after_every_block(tiny_problem: AdaptProblem, surgery_v2_result):
    extras = surgery_v2_result.extras
    assert set(extras) == {f"{t}.{layer}.{p}.weight" for t in range(2) for layer in range(2) for p in ("down", "up")}
    for name, stats in surgery_v2_result.info["tasks"].items():
        assert stats["loss_last"] < stats["loss_first"], name
        assert stats["representation_l1_after"] < stats["representation_l1_before"], name
    encoder = surgery_v2_result.encoder_for("topics")
    assert isinstance(encoder, DeepSurgeryEncoder) and len(encoder.surgery) == 2
    # every layer's module changes its block's output (trained W_up is non-zero everywhere)
    assert all(bool(m.up.weight.abs().sum() > 0) for m in encoder.surgery)


def test_sits_on_the_merge_it_is_given(tiny_problem: AdaptProblem):
    from mergesmith.api import merge_state_dicts

    result = run_surgery(
        tiny_problem, SurgeryParams(merge_method="ties", merge_params={"density": 0.5, "lambda": 1.0}, steps=0), seed=0
    )
    base = tiny_problem.base_state()
    experts = [{k: base[k] + v[k] for k in base} for v in tiny_problem.task_vectors().values()]
    expected = merge_state_dicts(base, experts, "ties", density=0.5, weight=1.0, **{"lambda": 1.0})
    for name, tensor in expected.items():
        torch.testing.assert_close(result.merged[name], tensor)
    with pytest.raises(MergesmithError, match="unknown merge_method"):
        run_surgery(tiny_problem, SurgeryParams(merge_method="nope", steps=0), seed=0)


@pytest.mark.parametrize("which", ["surgery", "surgery_v2"])
def test_save_and_load_merged_round_trip(
    tiny_problem: AdaptProblem, surgery_result, surgery_v2_result, tmp_path, which
):
    from mergesmith import load_merged
    from mergesmith.adapt.result import save_result

    result = surgery_result if which == "surgery" else surgery_v2_result
    out = save_result(result, tiny_problem, tmp_path / which)
    for task in ("reviews", "topics"):
        loaded = load_merged(out, task=task)
        torch.testing.assert_close(
            _outputs(tiny_problem, loaded, task),
            _outputs(tiny_problem, result.encoder_for(task), task),
            atol=1e-6,
            rtol=1e-6,
        )
    with pytest.raises(MergesmithError, match="task=.*reviews, topics"):
        load_merged(out)
    with pytest.raises(MergesmithError, match="no task 'x'"):
        load_merged(out, task="x")


def test_same_seed_same_modules(tiny_problem: AdaptProblem, surgery_result):
    again = run_surgery(tiny_problem, SurgeryParams(steps=150, lr=1e-2), seed=0)
    for key, value in surgery_result.extras.items():
        assert torch.equal(value, again.extras[key]), key


@pytest.mark.parametrize("kind", ["image_embeds", "pooler_output"])
def test_image_representations_are_corrected_where_the_bench_reads_them(kind):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from mergesmith.adapt.surgery import corrected

    g = torch.Generator().manual_seed(0)
    hidden, pooled = torch.randn(3, 5, 8, generator=g), torch.randn(3, 8, generator=g)
    bias = torch.randn(3, 8, generator=g)
    out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
    if kind == "image_embeds":
        out.image_embeds = pooled.clone()
    z = features_of(out, kind, None)
    torch.testing.assert_close(features_of(corrected(out, kind, bias), kind, None), z - bias)
    # no pooled output (a ViT without a pooler): the first token's state, as the bench featurizer reads it
    bare = BaseModelOutputWithPooling(last_hidden_state=hidden.clone())
    fixed = corrected(bare, "pooler_output", bias)
    torch.testing.assert_close(fixed.last_hidden_state[:, 0], hidden[:, 0] - bias)
    torch.testing.assert_close(fixed.last_hidden_state[:, 1:], hidden[:, 1:])


def test_another_merge_method_needs_no_task_arithmetic_parameters():
    """Surgery's default lambda belongs to task arithmetic; asked to sit on another method, Surgery gives that
    method its own defaults instead of a parameter it does not have."""
    from mergesmith.adapt.surgery import anchor_params

    assert anchor_params(SurgeryParams()) == {"lambda": 0.3}
    assert anchor_params(SurgeryParams(merge_method="adamerging_layerwise")) == {}
    assert anchor_params(SurgeryParams(merge_method="ties", merge_params={"density": 0.5})) == {"density": 0.5}

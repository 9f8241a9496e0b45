"""The adapt framework on a tiny BERT pool: batches, pooled features equal to the bench's, task vectors, results
written atomically and loaded back, and the one-line errors for data that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from mergesmith.adapt._spec import AdaptSpec, parse_params
from mergesmith.adapt.problem import AdaptProblem, Unlabeled, check_needs
from mergesmith.adapt.result import save_result, weights_result
from mergesmith.bench.adapt_problem import load_problem
from mergesmith.errors import ConfigError, MergesmithError
from tests.adapt.pools import TASKS, build_text_pool, save_head


def test_pooled_matches_bench_features_with_autograd(tiny_problem: AdaptProblem):
    task = tiny_problem.tasks[0]
    encoder = tiny_problem.load_encoder(tiny_problem.expert_dirs[task.name])
    bench = tiny_problem.featurizer(encoder, task.validation)  # the bench's own features, in split order
    parts = []
    for batch in tiny_problem.batches(task.validation, 3, shuffle=True, seed=4):
        feats = tiny_problem.pooled(encoder, batch)
        assert feats.requires_grad
        parts.append((batch.rows, feats.detach()))
        assert torch.equal(batch.labels, task.validation.labels[batch.rows])
    ours = torch.empty_like(bench)
    for rows, feats in parts:
        ours[rows] = feats
    torch.testing.assert_close(ours, bench, atol=1e-5, rtol=1e-5)


def test_batches_are_deterministic_and_unlabeled_has_no_labels(tiny_problem: AdaptProblem):
    task = tiny_problem.tasks[1]
    assert isinstance(task.unlabeled, Unlabeled) and not hasattr(task.unlabeled, "labels")
    first = [b.rows.tolist() for b in tiny_problem.batches(task.unlabeled, 4, shuffle=True, seed=1)]
    again = [b.rows.tolist() for b in tiny_problem.batches(task.unlabeled, 4, shuffle=True, seed=1)]
    other = [b.rows.tolist() for b in tiny_problem.batches(task.unlabeled, 4, shuffle=True, seed=2)]
    assert first == again and first != other
    assert sorted(sum(first, [])) == list(range(len(task.unlabeled)))
    assert all(b.labels is None for b in tiny_problem.batches(task.unlabeled, 4))


def test_task_vectors_and_merged_encoder(tiny_problem: AdaptProblem):
    base = tiny_problem.base_state()
    vectors = tiny_problem.task_vectors()
    assert list(vectors) == [name for name, _ in TASKS]
    expert = tiny_problem.load_encoder(tiny_problem.expert_dirs["topics"]).state_dict()
    for name, b in base.items():
        torch.testing.assert_close(b + vectors["topics"][name], expert[name].float())
    merged = {k: b + 0.5 * vectors["topics"][k] for k, b in base.items()}
    encoder = tiny_problem.encoder_with(merged)
    torch.testing.assert_close(encoder.state_dict()["pooler.dense.weight"], merged["pooler.dense.weight"])


def test_unchanged_tensors_streamed_or_from_held_task_vectors(tmp_path: Path):
    """A tensor every expert left at the base value is found without holding the task vectors, and the same set
    comes from the task vectors once they are held."""
    from safetensors.torch import load_file, save_file

    pool = build_text_pool(tmp_path)
    frozen = "bert.embeddings.word_embeddings.weight"  # the checkpoints' name (a BertForMaskedLM save)
    base_value = next(
        load_file(str(f))[frozen]
        for f in (tmp_path / "models" / "base").glob("*.safetensors")
        if frozen in load_file(str(f))
    )
    for expert in sorted((tmp_path / "models").glob("expert_*")):
        for shard in expert.glob("*.safetensors"):
            tensors = load_file(str(shard))
            if frozen in tensors:
                tensors[frozen] = base_value.clone()
                save_file(tensors, str(shard), metadata={"format": "pt"})
    problem = load_problem(pool=pool, progress=False, echo=lambda _: None)
    streamed = problem.unchanged_tensors()
    assert problem._vectors is None  # nothing held
    # the pooler is not in the (masked-LM) checkpoints: every model gets the same seeded initialisation of it
    assert streamed == {"embeddings.word_embeddings.weight", "pooler.dense.weight", "pooler.dense.bias"}
    problem.task_vectors()
    assert problem.unchanged_tensors() == streamed


def test_save_result_writes_hf_layout_and_loads_back(tiny_problem: AdaptProblem, tmp_path: Path):
    from mergesmith import load_merged

    base = tiny_problem.base_state()
    merged = {k: v + 0.25 for k, v in base.items()}
    result = weights_result(tiny_problem, merged, spec={"method": "unit"}, info={"note": torch.tensor(1.5)})
    assert result.encoder_for("reviews") is result.encoder_for("topics")  # one merged encoder for every task
    out = save_result(result, tiny_problem, tmp_path / "out")
    manifest = json.loads((out / "mergesmith.json").read_text())
    document = manifest["details"]
    assert (
        manifest["kind"] == "weights" and document["info"]["note"] == 1.5 and document["tasks"] == ["reviews", "topics"]
    )
    assert set(manifest["inputs"]) == {"base", "expert:reviews", "expert:topics"}
    assert all(model["files"] for model in manifest["inputs"].values())  # every input file read is hashed
    assert "model.safetensors" in manifest["outputs"] and "README.md" in manifest["outputs"]
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    model = load_merged(out).base_model  # the encoder, whether the model comes with its head or not
    torch.testing.assert_close(
        model.state_dict()["encoder.layer.0.attention.self.query.weight"],
        merged["encoder.layer.0.attention.self.query.weight"],
    )
    # the checkpoints are a masked-LM save: the output loads as one, its head (not merged) the base's
    from transformers import AutoModelForMaskedLM

    from tests.helpers import load_tensors

    masked_lm, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(masked_lm).__name__ == "BertForMaskedLM"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base = load_tensors(tiny_problem.base_dir)
    written = load_tensors(out)
    assert set(written) == set(base)
    assert all(torch.equal(written[k], base[k]) for k in base if k.startswith("cls."))
    with pytest.raises(MergesmithError, match="not empty"):
        save_result(result, tiny_problem, out)
    save_result(result, tiny_problem, out, force=True)
    assert not [p for p in out.parent.iterdir() if "mergesmith-tmp" in p.name]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 3
    lr: float = 0.1


def test_parse_params_errors():
    spec = AdaptSpec("unit", lambda p, q, s: None, _Params, "paper", frozenset({"unlabeled"}))
    assert parse_params(spec, {"steps": "5"}).steps == 5
    with pytest.raises(ConfigError, match="unknown parameter 'step' for unit; allowed: steps, lr"):
        parse_params(spec, {"step": 1})
    with pytest.raises(ConfigError, match="'lr'"):
        parse_params(spec, {"lr": "fast"})
    with pytest.raises(ValueError):
        AdaptSpec("bad", lambda p, q, s: None, _Params, "paper", frozenset({"labels"}))


def test_test_time_method_without_unlabeled_inputs(tiny_problem: AdaptProblem):
    import dataclasses

    stripped = dataclasses.replace(
        tiny_problem, tasks=[dataclasses.replace(t, unlabeled=None) for t in tiny_problem.tasks]
    )
    with pytest.raises(MergesmithError, match="adamerging adapts on unlabeled test inputs but task 'reviews' has none"):
        check_needs(stripped, "adamerging", frozenset({"unlabeled"}))
    check_needs(stripped, "fisher", frozenset({"validation"}))


def test_expert_trained_for_another_label_space(tmp_path: Path):
    pool = build_text_pool(tmp_path)
    # expert_0 carries its own head with 3 classes, but its task "reviews" has 2 labels
    save_head(tmp_path / "models" / "expert_0" / "task_head.safetensors", 3, 64, seed=9)
    with pytest.raises(
        MergesmithError, match="expert .*expert_0 was trained with a head of shape \\[3, 64\\] but the pool's head"
    ):
        load_problem(pool=pool, progress=False, echo=lambda _: None)


def test_image_pool_pooled_matches_bench_features(tmp_path: Path):
    """A tiny CLIP vision pool (projection head): pooled() gives the featurizer's image_embeds, and pool_hidden()
    rebuilds them from the last hidden state with the encoder's own pooling head."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from tests.helpers import write_yaml

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=16,
    )
    model = CLIPVisionModelWithProjection(config).eval()
    for name in ("base", "expert"):
        model.save_pretrained(tmp_path / name)
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    for split in ("validation", "test"):
        for label in ("red", "blue"):
            for k in range(3):
                path = tmp_path / "data" / split / label / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(path)
    save_head(tmp_path / "head.safetensors", 2, 16, seed=0)
    pool = write_yaml(
        tmp_path / "pool.yaml",
        {
            "base_model": "base",
            "tasks": [
                {
                    "name": "colors",
                    "expert": "expert",
                    "head": "head.safetensors",
                    "data": {"format": "imagefolder", "validation": "data/validation", "test": "data/test"},
                }
            ],
        },
    )
    problem = load_problem(pool=pool, progress=False, echo=lambda _: None)
    task = problem.tasks[0]
    encoder = problem.load_encoder(problem.expert_dirs["colors"])
    bench = problem.featurizer(encoder, task.validation)
    for batch in problem.batches(task.validation, 4, shuffle=True, seed=0):
        ours = problem.pooled(encoder, batch)
        torch.testing.assert_close(ours.detach(), bench[batch.rows], atol=1e-5, rtol=1e-5)
        hidden = encoder(**problem.forward_kwargs(batch)).last_hidden_state
        torch.testing.assert_close(
            problem.pool_hidden(hidden, batch, encoder).detach(), bench[batch.rows], atol=1e-5, rtol=1e-5
        )
    assert len(task.unlabeled) == 6 and all(b.labels is None for b in problem.batches(task.unlabeled, 4))


def test_every_adapt_method_can_turn_its_progress_bar_off():
    """``-q`` reaches a method's bars through its ``progress`` parameter (``without_progress_bars``)."""
    from mergesmith.adapt import ADAPT_METHODS
    from mergesmith.adapt._spec import parse_params, without_progress_bars

    for name, spec in ADAPT_METHODS.items():
        assert "progress" in spec.params.model_fields, name
        assert parse_params(spec, without_progress_bars(spec, {})).progress is False, name
        assert parse_params(spec, without_progress_bars(spec, {"progress": True})).progress is True, name

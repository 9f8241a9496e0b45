"""``mergesmith bench --pool``: a user's own pool (tiny text and image models, tiny local data) end to end, and the
one-line errors for bad pools."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mergesmith.bench.pool_data import Record, resolve_labels
from mergesmith.errors import MergesmithError
from tests.helpers import run_cli, write_yaml

METHODS = "linear,task_arithmetic"


def _save_head(path: Path, rows: int, width: int, seed: int, bias: bool = True) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {"weight": torch.randn(rows, width, generator=g)}
    if bias:
        tensors["bias"] = torch.randn(rows, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(x)}" for x in torch.randint(2, 256, (5,), generator=g)) for _ in range(n)]


def _write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_pool(tmp_path_factory):
    """A tiny BERT base and 2 experts; task "reviews" from CSV (label names), task "topics" from JSONL (integer
    labels, other column names, no train split, head read from the expert's task_head.safetensors)."""
    from mergesmith.tiny_models import build_tiny_family

    root = tmp_path_factory.mktemp("text_pool")
    family = build_tiny_family(root / "models", "bert", 2)
    names = ("neg", "pos")
    for split, n, seed in (("train", 16, 1), ("validation", 10, 2), ("test", 12, 3)):
        texts = _sentences(n, seed)
        _write_csv(root / "data" / f"reviews_{split}.csv", [(t, names[i % 2]) for i, t in enumerate(texts)])
        if split != "train":
            _write_jsonl(
                root / "data" / f"topics_{split}.jsonl",
                [{"sentence": t, "y": i % 3} for i, t in enumerate(_sentences(n, seed + 10))],
            )
    _save_head(root / "heads" / "reviews.safetensors", 2, 64, seed=0)
    _save_head(family.experts[1] / "task_head.safetensors", 3, 64, seed=1)
    spec = {
        "base_model": "models/base",
        "tasks": [
            {
                "name": "reviews",
                "expert": "models/expert_0",
                "head": "heads/reviews.safetensors",
                "data": {
                    "format": "csv",
                    "train": "data/reviews_train.csv",
                    "validation": "data/reviews_validation.csv",
                    "test": "data/reviews_test.csv",
                    "labels": ["neg", "pos"],
                },
            },
            {
                "name": "topics",
                "expert": "models/expert_1",
                "data": {
                    "format": "jsonl",
                    "validation": "data/topics_validation.jsonl",
                    "test": "data/topics_test.jsonl",
                    "text_column": "sentence",
                    "label_column": "y",
                },
            },
        ],
    }
    return root, spec


def _save_image(path: Path, rgb: tuple[int, int, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb)[None, None, :] + rng.integers(-40, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory):
    """A tiny random CLIP vision model with a projection and its image processor, 2 perturbed experts, and image
    folders of a few 12 x 12 PNGs per class."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("image_pool")
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
    model.save_pretrained(root / "base")
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(root / "base")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(2):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(base_state[name] + torch.randn(param.shape, generator=g) * 0.02)
        model.save_pretrained(root / f"expert_{i}")
    classes = {
        "colors": {"red": (220, 30, 30), "blue": (30, 30, 220)},
        "light": {"bright": (230, 230, 230), "dark": (25, 25, 25), "grey": (128, 128, 128)},
    }
    for task, colours in classes.items():
        for split, n in (("train", 4), ("validation", 3), ("test", 3)):
            for c, (label, rgb) in enumerate(colours.items()):
                for k in range(n):
                    _save_image(root / task / split / label / f"{k}.png", rgb, seed=hash((task, split, c, k)) % 10_000)
    _save_head(root / "heads" / "colors.safetensors", 2, 16, seed=2, bias=False)  # zero-shot style: no bias
    _save_head(root / "expert_1" / "task_head.safetensors", 3, 16, seed=3)
    spec = {
        "base_model": "base",
        "tasks": [
            {
                "name": "colors",
                "expert": "expert_0",
                "head": "heads/colors.safetensors",
                "data": {
                    "format": "imagefolder",
                    "train": "colors/train",
                    "validation": "colors/validation",
                    "test": "colors/test",
                },
            },
            {
                "name": "light",
                "expert": "expert_1",
                "data": {
                    "format": "imagefolder",
                    "train": "light/train",
                    "validation": "light/validation",
                    "test": "light/test",
                    "labels": ["bright", "dark", "grey"],
                },
            },
        ],
    }
    return root, spec


def _run_pool(root: Path, spec: dict, run: Path, name: str = "pool.yaml"):
    pool = write_yaml(root / name, spec)
    return run_cli("bench", "--pool", pool, "--methods", METHODS, "--out", run, "--quiet")


def _check_results(run: Path, tasks: list[str]) -> dict:
    results = json.loads((run / "results.json").read_text())
    assert results["profile"] == "custom" and results["pool"].endswith("pool.yaml")
    assert [t["name"] for t in results["tasks"]] == tasks
    kinds = [r["kind"] for r in results["rows"]]
    assert kinds.count("expert") == len(tasks) and kinds.count("merge") == 2
    for row in results["rows"]:
        assert set(row["accuracy"]) == set(tasks)
        for value in row["accuracy"].values():
            assert value is None or 0.0 <= value <= 1.0, row
        assert "normalized" in row
        if row["kind"] in ("expert", "merge"):
            assert all(v is not None for v in row["accuracy"].values()) and row["normalized"] is not None
    merges = {r["name"]: r for r in results["rows"] if r["kind"] == "merge"}
    assert set(merges) == {"linear", "task_arithmetic"}
    assert len(merges["task_arithmetic"]["grid"]) > 1 and merges["task_arithmetic"]["merge_seconds"] > 0
    assert len(results["cosine"]["matrix"]) == len(tasks)
    assert (run / "report.html").is_file() and (run / "results.csv").is_file()
    assert (run / "configs" / "task_arithmetic.yaml").is_file()
    return results


def test_text_pool_end_to_end(text_pool, tmp_path):
    root, spec = text_pool
    run = tmp_path / "run"
    result = _run_pool(root, spec, run)
    assert result.exit_code == 0, result.output
    results = _check_results(run, ["reviews", "topics"])
    sizes = {t["name"]: t["sizes"] for t in results["tasks"]}
    assert sizes["reviews"] == {"train": 16, "validation": 10, "test": 12}
    assert sizes["topics"] == {"validation": 10, "test": 12}  # no train split
    assert {t["name"]: t["num_labels"] for t in results["tasks"]} == {"reviews": 2, "topics": 3}
    # "topics" has no train split: the pretrained row scores "reviews" only and leaves the rest empty
    baseline = next(r for r in results["rows"] if r["kind"] == "baseline")
    assert baseline["accuracy"]["topics"] is None and baseline["accuracy"]["reviews"] is not None
    assert baseline["average"] is None and baseline["normalized"] is None
    assert "no train split for topics" in result.output


def test_image_pool_end_to_end(image_pool, tmp_path):
    root, spec = image_pool
    run = tmp_path / "run"
    result = _run_pool(root, spec, run)
    assert result.exit_code == 0, result.output
    results = _check_results(run, ["colors", "light"])
    assert "clip_vision_model" in results["base_model"] and "image" in results["base_model"]
    baseline = next(r for r in results["rows"] if r["kind"] == "baseline")
    assert baseline["normalized"] is not None
    # The probe learns colours from the frozen base's projected features: far above chance on this easy task.
    assert baseline["accuracy"]["colors"] >= 0.8


def test_image_features_are_the_projected_pooled_output(image_pool):
    from transformers import CLIPVisionModelWithProjection

    from mergesmith.bench.pool import load_pool

    root, spec = image_pool
    pool = load_pool(write_yaml(root / "features.yaml", spec), progress=False, echo=lambda s: None)
    split = pool.tasks[0].test
    model = pool.featurizer.load(root / "base")
    assert isinstance(model, CLIPVisionModelWithProjection)
    features = pool.featurizer(model, split)
    assert features.shape == (len(split), 16)
    again = pool.featurizer(model, split)  # second pass: pixels come from the in-memory cache
    assert split._cached is not None and torch.allclose(features, again)


def test_clip_vision_model_without_projection_gives_the_pooled_output(image_pool, tmp_path):
    """FusionBench's layout: CLIPVisionModel checkpoints (no visual projection); features are the pooled output."""
    import shutil

    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mergesmith.bench.pool import load_pool

    root, _ = image_pool
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = CLIPVisionModel(config).eval()
    for name in ("base", "expert"):
        model.save_pretrained(tmp_path / name)
    shutil.copy(root / "base" / "preprocessor_config.json", tmp_path / "base")
    _save_head(tmp_path / "head.safetensors", 2, 32, seed=0)
    spec = {
        "base_model": "base",
        "tasks": [
            {
                "name": "colors",
                "expert": "expert",
                "head": "head.safetensors",
                "data": {
                    "format": "imagefolder",
                    "validation": str(root / "colors" / "validation"),
                    "test": str(root / "colors" / "test"),
                },
            }
        ],
    }
    pool = load_pool(write_yaml(tmp_path / "pool.yaml", spec), progress=False, echo=lambda s: None)
    assert pool.featurizer.kind == "clip"
    encoder = pool.featurizer.load(tmp_path / "expert")
    assert isinstance(encoder, CLIPVisionModel)
    split = pool.tasks[0].test
    features = pool.featurizer(encoder, split)
    pixels = next(pool.featurizer.batches(split))
    with torch.no_grad():
        assert torch.allclose(features[: len(pixels)], encoder(pixel_values=pixels).pooler_output)


# --- bad input --------------------------------------------------------------------------------------------------------


def _expect_error(root: Path, spec: dict, tmp_path: Path, *needles: str, args: tuple = ()) -> str:
    pool = write_yaml(root / f"bad-{tmp_path.name}.yaml", spec)
    out = tmp_path / "out"
    result = run_cli("bench", "--pool", pool, "--out", out, "--quiet", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def _edit(spec: dict, edit) -> dict:
    copy = json.loads(json.dumps(spec))
    edit(copy)
    return copy


def test_pool_and_profile_are_exclusive(text_pool, tmp_path):
    root, spec = text_pool
    _expect_error(root, spec, tmp_path, "--pool and --profile are mutually exclusive", args=("--profile", "mini"))


def test_unknown_key(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][0]["data"].update(colum="text"))
    _expect_error(root, bad, tmp_path, "unknown key tasks[0].data.colum", "text_column")


def test_missing_required_key(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][1]["data"].pop("test"))
    _expect_error(root, bad, tmp_path, "missing required key tasks[1].data.test")


def test_yaml_boolean_label(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][0]["data"].update(labels=[True, False]))
    _expect_error(root, bad, tmp_path, "tasks[0].data.labels", "quote label names")


def test_repeated_task_name(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][1].update(name="reviews"))
    _expect_error(root, bad, tmp_path, "tasks: task name 'reviews' is used twice")


def test_expert_of_another_architecture(text_pool, image_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][1].update(expert=str(image_pool[0] / "expert_0")))
    _expect_error(root, bad, tmp_path, "tasks[1].expert", "clip_vision_model model but the base is a bert model")


def test_expert_with_other_tensor_shapes(text_pool, tmp_path):
    import transformers

    root, spec = text_pool
    config = transformers.BertConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=256,
        max_position_embeddings=128,
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "wide")
    bad = _edit(spec, lambda s: s["tasks"][0].update(expert=str(tmp_path / "wide")))
    message = _expect_error(
        root, bad, tmp_path, "tasks[0].expert", "intermediate.dense.bias' is [96]", "but [128] in the base"
    )
    assert "must share the base's architecture" in message


def test_expert_missing_a_tensor(text_pool, tmp_path):
    from mergesmith.tiny_models import tiny_model

    root, spec = text_pool
    tiny_model("bert", layers=1).save_pretrained(tmp_path / "short")
    bad = _edit(spec, lambda s: s["tasks"][0].update(expert=str(tmp_path / "short")))
    _expect_error(root, bad, tmp_path, "tasks[0].expert", "layer.1.", "is missing from")


def test_missing_head(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][0].pop("head"))  # expert_0 has no task_head.safetensors
    _expect_error(root, bad, tmp_path, "tasks[0]: no head file", "task_head.safetensors", "give tasks[0].head")


def test_head_of_the_wrong_width(text_pool, tmp_path):
    root, spec = text_pool
    head = _save_head(tmp_path / "narrow.safetensors", 2, 32, seed=0)
    bad = _edit(spec, lambda s: s["tasks"][0].update(head=str(head)))
    _expect_error(root, bad, tmp_path, "tasks[0].head", "takes 32 features", "64 wide")


def test_head_with_another_label_count(text_pool, tmp_path):
    root, spec = text_pool
    head = _save_head(tmp_path / "three.safetensors", 3, 64, seed=0)
    bad = _edit(spec, lambda s: s["tasks"][0].update(head=str(head)))
    _expect_error(root, bad, tmp_path, "tasks[0].head", "3 outputs", "2 labels ['neg', 'pos']")


def test_head_that_is_not_safetensors(text_pool, tmp_path):
    root, spec = text_pool
    (tmp_path / "junk.safetensors").write_bytes(b"not a head")
    bad = _edit(spec, lambda s: s["tasks"][0].update(head=str(tmp_path / "junk.safetensors")))
    _expect_error(root, bad, tmp_path, "tasks[0].head", "not a readable safetensors file")


def test_unknown_label_in_data(text_pool, tmp_path):
    root, spec = text_pool
    rows = [("w3 w4", "neg"), ("w5 w6", "pos"), ("w7 w8", "meh")]
    path = _write_csv(tmp_path / "test.csv", rows)
    bad = _edit(spec, lambda s: s["tasks"][0]["data"].update(test=str(path)))
    _expect_error(root, bad, tmp_path, "tasks[0].data.test", "label 'meh' (test.csv row 4)", "not among data.labels")


def test_empty_split(text_pool, tmp_path):
    root, spec = text_pool
    path = _write_csv(tmp_path / "empty.csv", [])
    bad = _edit(spec, lambda s: s["tasks"][0]["data"].update(validation=str(path)))
    _expect_error(root, bad, tmp_path, "tasks[0].data.validation", "holds no examples")


def test_missing_data_file(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][1]["data"].update(test="data/nowhere.jsonl"))
    _expect_error(root, bad, tmp_path, "tasks[1].data.test", "no such file", "nowhere.jsonl")


def test_missing_text_column(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][0]["data"].update(text_column="review"))
    _expect_error(root, bad, tmp_path, "tasks[0].data.train", "no column 'review'", "set data.text_column")


def test_missing_base_model(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s.update(base_model="models/nothing"))
    _expect_error(root, bad, tmp_path, "base_model", "is not a directory")


def test_text_data_for_an_image_model(image_pool, text_pool, tmp_path):
    root, spec = image_pool
    csv_path = text_pool[0] / "data" / "reviews_test.csv"
    bad = _edit(
        spec,
        lambda s: s["tasks"][0]["data"].update(format="csv", validation=str(csv_path), test=str(csv_path), train=None),
    )
    _expect_error(root, bad, tmp_path, "tasks[0].data.format", "image features", "use imagefolder")


def test_image_base_without_image_processor(image_pool, tmp_path):
    import shutil

    root, spec = image_pool
    base = tmp_path / "bare_base"
    shutil.copytree(root / "base", base)
    (base / "preprocessor_config.json").unlink()
    bad = _edit(spec, lambda s: s.update(base_model=str(base)))
    _expect_error(root, bad, tmp_path, "base_model", "preprocessor_config.json")


def test_whole_clip_model_as_base(image_pool, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    root, spec = image_pool
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "vocab_size": 100,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    bad = _edit(spec, lambda s: s.update(base_model=str(tmp_path / "clip")))
    _expect_error(root, bad, tmp_path, "base_model", "whole CLIP model", "save its vision tower")


def test_label_resolution_rules():
    def records(*labels):
        return [Record(f"x{i}", label, f"row {i}") for i, label in enumerate(labels)]

    # integers are class indices: names 0..max, even when a class never shows up
    names, idx = resolve_labels({"test": records(0, 2, "1")}, None, "tasks[0]")
    assert names == ("0", "1", "2") and idx == {"test": [0, 2, 1]}
    # names sort; a listed order wins
    assert resolve_labels({"test": records("b", "a")}, None, "tasks[0]") == (("a", "b"), {"test": [1, 0]})
    assert resolve_labels({"test": records("b", "a")}, ["b", "a"], "tasks[0]") == (("b", "a"), {"test": [0, 1]})
    # integers index a list of names; names that are numbers match by name first
    assert resolve_labels({"test": records(1, 0)}, ["neg", "pos"], "tasks[0]")[1] == {"test": [1, 0]}
    assert resolve_labels({"test": records(1, 2)}, ["1", "2"], "tasks[0]")[1] == {"test": [0, 1]}
    with pytest.raises(MergesmithError, match=r"tasks\[0\]\.data\.test: label 5 \(row 1\) is not among"):
        resolve_labels({"test": records(0, 5)}, ["neg", "pos"], "tasks[0]")
    with pytest.raises(MergesmithError, match="at least 2 labels"):
        resolve_labels({"test": records("a", "a")}, None, "tasks[0]")


# --- protocol zero_shot: heads built from label descriptions ------------------------------------------------------------

# Descriptions in the tiny tokenizer's vocabulary (w2..w255): English words would all be its unknown token.
REVIEW_TEXTS = ["w10 w11 w12", "w20 w21"]
TOPIC_TEXTS = ["w30 w31", "w40 w41 w42", "w50"]


def _zero_shot(spec: dict) -> dict:
    """The text pool under protocol zero_shot: no head files, one description per label, labels listed in order."""

    def edit(s):
        s["protocol"] = "zero_shot"
        s["tasks"][0].pop("head")
        s["tasks"][0]["label_texts"] = REVIEW_TEXTS
        s["tasks"][1]["label_texts"] = TOPIC_TEXTS
        s["tasks"][1]["data"]["labels"] = [0, 1, 2]

    return _edit(spec, edit)


def test_zero_shot_pool_heads_are_the_base_cosine_heads_of_the_label_texts(text_pool):
    from mergesmith.bench.heads import CosineHead, zero_shot_head
    from mergesmith.bench.pool import load_pool

    root, spec = text_pool
    messages: list[str] = []
    pool = load_pool(write_yaml(root / "zero_shot.yaml", _zero_shot(spec)), progress=False, echo=messages.append)
    assert pool.protocol == "zero_shot"
    base = pool.featurizer.load(root / "models" / "base")
    for task, texts in zip(pool.tasks, (REVIEW_TEXTS, TOPIC_TEXTS)):
        assert isinstance(task.head, CosineHead)
        expected = zero_shot_head(base, pool.featurizer, texts)
        assert torch.equal(task.head.weight, expected.weight) and task.head.scale == expected.scale
        for row, text in enumerate(texts):  # row i describes label i
            alone = zero_shot_head(base, pool.featurizer, [text]).weight[0]
            assert torch.allclose(task.head.weight[row], alone, atol=1e-6)
        assert not torch.allclose(task.head.weight[0], task.head.weight[1])
        assert task.probe is None  # no probe, even for the task with a train split: the heads score the base
    assert pool.tasks[1].label_names == ("0", "1", "2")
    assert pool.tasks[0].sizes["train"] == 16
    assert "zero-shot" in pool.trained and messages == []  # no "no train split" notice under zero_shot


def test_probe_pool_is_unchanged_by_the_protocol_key(text_pool):
    from mergesmith.bench.pool import load_pool

    root, spec = text_pool
    default = load_pool(write_yaml(root / "probe_default.yaml", spec), progress=False, echo=lambda s: None)
    named = load_pool(
        write_yaml(root / "probe_named.yaml", _edit(spec, lambda s: s.update(protocol="probe"))),
        progress=False,
        echo=lambda s: None,
    )
    for pool in (default, named):
        assert pool.protocol == "probe"
        reviews, topics = pool.tasks
        assert isinstance(reviews.head, torch.nn.Linear) and reviews.probe is not None and topics.probe is None
    file_head = load_file(str(root / "heads" / "reviews.safetensors"))
    assert torch.equal(default.tasks[0].head.weight, file_head["weight"])
    assert torch.equal(default.tasks[0].probe.weight, named.tasks[0].probe.weight)


def test_zero_shot_task_without_label_texts(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][1].pop("label_texts"))
    _expect_error(
        root,
        bad,
        tmp_path,
        "tasks[1].label_texts: task topics:",
        "needs a description of each class",
        "protocol: probe",
    )
    empty = _edit(_zero_shot(spec), lambda s: s["tasks"][1].update(label_texts=[]))
    _expect_error(root, empty, tmp_path, "tasks[1].label_texts: task topics:", "this task has none")


def test_zero_shot_label_texts_of_another_count(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][1].update(label_texts=TOPIC_TEXTS[:2]))
    _expect_error(
        root,
        bad,
        tmp_path,
        "tasks[1].label_texts: task topics: class",
        "has no label description (2 texts for 3 classes)",
    )


def test_zero_shot_empty_label_text(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][0].update(label_texts=["a negative review", "  "]))
    _expect_error(root, bad, tmp_path, "tasks[0].label_texts: task reviews: class 'pos' has a blank label description")


def test_zero_shot_duplicate_label_texts(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][0].update(label_texts=["A review", "a  review"]))
    _expect_error(
        root,
        bad,
        tmp_path,
        "tasks[0].label_texts: task reviews: classes 'neg' and 'pos' have the same label description",
    )


def test_zero_shot_label_texts_the_tokenizer_reads_alike(text_pool, tmp_path):
    root, spec = text_pool
    words = ["a negative review", "a positive review"]  # outside the tiny vocabulary: both are unknown tokens
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][0].update(label_texts=words))
    _expect_error(
        root,
        bad,
        tmp_path,
        "tasks[0].label_texts: task reviews: the base's tokenizer reads the descriptions of classes 'neg' and 'pos' "
        "as the same tokens",
    )


def test_zero_shot_with_a_head_file(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][0].update(head="heads/reviews.safetensors"))
    _expect_error(root, bad, tmp_path, "tasks[0].head:", "from its label_texts", "remove head", "protocol: probe")


def test_label_texts_under_protocol_probe(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s["tasks"][0].update(label_texts=REVIEW_TEXTS))
    _expect_error(root, bad, tmp_path, "tasks[0].label_texts:", "uses protocol probe", "set protocol: zero_shot")


def test_zero_shot_without_listed_labels(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(_zero_shot(spec), lambda s: s["tasks"][1]["data"].pop("labels"))
    _expect_error(root, bad, tmp_path, "tasks[1].data.labels: task topics:", "in the order of data.labels")


def test_zero_shot_on_an_image_pool(image_pool, tmp_path):
    root, spec = image_pool
    bad = _edit(spec, lambda s: s.update(protocol="zero_shot"))
    _expect_error(root, bad, tmp_path, "protocol: zero_shot", "image encoder", "CLIP's text tower", "protocol: probe")


def test_unknown_protocol(text_pool, tmp_path):
    root, spec = text_pool
    bad = _edit(spec, lambda s: s.update(protocol="zeroshot"))
    _expect_error(root, bad, tmp_path, "protocol:", "'probe' or 'zero_shot'")


def test_adapt_refuses_a_zero_shot_pool_without_label_texts(text_pool, tmp_path):
    from tests.faults._faults import expect_cli_refusal

    root, spec = text_pool
    pool = write_yaml(
        root / "adapt_zero_shot.yaml", _edit(_zero_shot(spec), lambda s: s["tasks"][0].pop("label_texts"))
    )
    out = tmp_path / "merged"
    expect_cli_refusal(
        ("adapt", "regmean", "--pool", pool, out, "--quiet"),
        "tasks[0].label_texts: task reviews:",
        out=out,
        inputs=[pool, root / "models"],
    )

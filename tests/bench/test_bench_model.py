"""The bench's model, training and metric code on tiny models with known answers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from mergesmith.bench.data import Example, TaskData
from mergesmith.bench.encoder import encode_split, mean_pool, pad_batch, split_features, train_probe
from mergesmith.bench.finetune import RECIPES, bucketed_batches
from mergesmith.bench.heads import CosineHead, load_head, save_head, zero_shot_head
from mergesmith.bench.run import Evaluator, _average, _normalized, merge_config
from mergesmith.bench.zoo import DONE_FILE, build_zoo
from mergesmith.errors import MergesmithError


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_pad_batch():
    ids, mask = pad_batch([(5, 6, 7), (8,)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_probe_learns_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 8, generator=g) * 5 + 40  # far from zero mean: the probe must standardise
    truth = torch.randn(8, 3, generator=g)
    labels = ((features - 40) @ truth).argmax(-1)  # linearly separable by construction
    head = train_probe(features, labels, 3, seed=0)
    acc = float((head(features).argmax(-1) == labels).float().mean())
    assert acc > 0.95


def test_probe_gives_a_constant_feature_no_weight():
    """A dimension that never varies on the training inputs must not get a 1/std-sized weight (a later drift of it
    would move every logit)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 8, generator=g)
    features[:, 3] = 0.25 + 1e-9 * torch.randn(300, generator=g)  # constant up to float noise, as in MiniLM
    labels = features[:, :3].argmax(-1)
    head = train_probe(features, labels, 3, seed=0)
    assert torch.all(head.weight[:, 3] == 0)
    assert float(head.weight.abs().max()) < 100
    shifted = features.clone()
    shifted[:, 3] += 0.01  # a merge's drift of the constant dimension leaves the predictions alone
    assert torch.equal(head(shifted).argmax(-1), head(features).argmax(-1))
    assert float((head(features).argmax(-1) == labels).float().mean()) > 0.9


def test_metrics():
    assert _average({"a": 0.5, "b": None, "c": 1.0}) == 0.75
    assert _normalized({"a": 0.4, "b": 0.9}, {"a": 0.8, "b": 0.9}) == pytest.approx(0.75)


def test_head_round_trip(tmp_path):
    head = nn.Linear(4, 3)
    save_head(head, tmp_path / "h.safetensors")
    back = load_head(tmp_path / "h.safetensors")
    assert torch.equal(back.weight, head.weight) and torch.equal(back.bias, head.bias)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from mergesmith.tiny_models import build_tiny_family

    return build_tiny_family(tmp_path_factory.mktemp("bert_bench"), "bert", 0, layers=2).base


def _task(name: str, n: int, seed: int) -> TaskData:
    # label = whether the text contains the word w7: learnable from tokens
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        words = [f"w{int(x)}" for x in torch.randint(10, 200, (6,), generator=g)]
        label = i % 2
        if label:
            words[int(torch.randint(0, 6, (1,), generator=g))] = "w7"
        examples.append(Example(" ".join(words), label))
    return TaskData(
        name,
        ("no", "yes"),
        tuple(examples[: n // 2]),
        tuple(examples[n // 2 : 3 * n // 4]),
        tuple(examples[3 * n // 4 :]),
        label_texts=("a text without w7", "a text with w7"),
    )


def test_evaluator_scores_known_predictions(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    encoder = AutoModel.from_pretrained(tiny_bert_dir).eval()
    task = _task("t", 40, 0)
    split = encode_split(tokenizer, task.test)
    feats = split_features(encoder, split, tokenizer.pad_token_id)
    head = nn.Linear(feats.shape[1], 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 1.0]))  # always predicts 1
    score = Evaluator([task], {"t": split}, {"t": head}, tokenizer.pad_token_id)(encoder)["t"]
    assert score == pytest.approx(float((split.labels == 1).float().mean()))


@pytest.mark.parametrize("protocol", ["zero_shot", "probe"])
def test_zoo_builds_resumes_and_never_uses_a_partial_expert(tiny_bert_dir, tmp_path, protocol):
    tasks = [_task("a", 64, 1), _task("b", 64, 2)]
    recipe = dataclasses.replace(RECIPES[protocol], batch_size=16)
    zoo = build_zoo(tiny_bert_dir, tasks, tmp_path, recipe=recipe, jobs=1, progress=False, echo=lambda s: None)
    assert set(zoo.experts) == {"a", "b"} and zoo.protocol == protocol
    for path in zoo.experts.values():
        assert (path / DONE_FILE).is_file() and (path / "model.safetensors").is_file()
    before = {t: (p / "model.safetensors").read_bytes() for t, p in zoo.experts.items()}
    # an interrupted rebuild of b: its directory is gone, a partial one is left behind
    import shutil

    shutil.rmtree(zoo.experts["b"])
    partial = zoo.experts["b"].with_name(".b.partial-99999")
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    messages = []
    again = build_zoo(tiny_bert_dir, tasks, tmp_path, recipe=recipe, jobs=1, progress=False, echo=messages.append)
    assert len(messages) == 1 and "the b expert" in messages[0] and "the a expert" not in messages[0]
    assert not partial.exists()
    # training is deterministic: the rebuilt expert has the same bytes
    assert {t: (p / "model.safetensors").read_bytes() for t, p in again.experts.items()} == before
    info = json.loads((again.experts["b"] / DONE_FILE).read_text())
    assert info["task"] == "b" and info["examples"] == 32 and info["protocol"] == protocol


def test_zero_shot_zoo_trains_through_the_fixed_head(tiny_bert_dir, tmp_path):
    """The papers' protocol: each task's head is the base encoder's embedding of its label descriptions, the expert
    keeps exactly that head, the encoder moves, and the pretrained row has no probe."""
    from mergesmith.bench.features import TextFeaturizer

    tasks = [_task("a", 64, 1)]
    zoo = build_zoo(tiny_bert_dir, tasks, tmp_path, recipe=RECIPES["zero_shot"], jobs=1, progress=False)
    featurizer = TextFeaturizer.from_base(tiny_bert_dir)
    expected = zero_shot_head(featurizer.load(tiny_bert_dir), featurizer, tasks[0].label_texts)
    head = zoo.head("a")
    assert isinstance(head, CosineHead) and torch.equal(head.weight, expected.weight)
    assert zoo.probe("a") is None
    base = featurizer.load(tiny_bert_dir).state_dict()
    expert = featurizer.load(zoo.experts["a"]).state_dict()
    embeddings = [k for k in base if "embeddings" in k]
    assert embeddings and all(torch.equal(base[k], expert[k]) for k in embeddings)  # the embeddings module is frozen
    assert any(not torch.equal(base[k], expert[k]) for k in base if "encoder.layer" in k)


def test_zoo_bytes_do_not_depend_on_the_number_of_processes(tiny_bert_dir, tmp_path):
    tasks = [_task("a", 48, 1), _task("b", 48, 2)]
    recipe = dataclasses.replace(RECIPES["zero_shot"], batch_size=16)
    one = build_zoo(tiny_bert_dir, tasks, tmp_path / "one", recipe=recipe, jobs=1, progress=False)
    two = build_zoo(tiny_bert_dir, tasks, tmp_path / "two", recipe=recipe, jobs=2, progress=False)
    for task in ("a", "b"):
        assert (one.experts[task] / "model.safetensors").read_bytes() == (
            two.experts[task] / "model.safetensors"
        ).read_bytes()


def test_zoos_of_two_protocols_are_never_mixed(tiny_bert_dir, tmp_path):
    tasks = [_task("a", 32, 1)]
    zero_shot = build_zoo(tiny_bert_dir, tasks, tmp_path, recipe=RECIPES["zero_shot"], jobs=1, progress=False)
    probe = build_zoo(tiny_bert_dir, tasks, tmp_path, recipe=RECIPES["probe"], jobs=1, progress=False)
    assert zero_shot.directory != probe.directory
    # an expert whose marker names another protocol (an older cache copied in) is retrained, not reused
    marker = zero_shot.experts["a"] / DONE_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "protocol": "probe"}))
    messages = []
    build_zoo(tiny_bert_dir, tasks, tmp_path, recipe=RECIPES["zero_shot"], jobs=1, progress=False, echo=messages.append)
    assert len(messages) == 1 and "the a expert" in messages[0]


def test_zero_shot_zoo_refuses_a_task_without_label_descriptions(tiny_bert_dir, tmp_path):
    task = dataclasses.replace(_task("a", 32, 1), label_texts=())
    with pytest.raises(MergesmithError, match="task a: the zero-shot protocol needs a description of each class"):
        build_zoo(tiny_bert_dir, [task], tmp_path, progress=False)
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").rglob("*.safetensors"))


def test_bucketed_batches_cover_every_row_once_and_group_lengths():
    lengths = [int(x) for x in torch.randint(3, 60, (1000,), generator=torch.Generator().manual_seed(0))]
    batches = bucketed_batches(lengths, 32, torch.Generator().manual_seed(1))
    rows = sorted(i for b in batches for i in b)
    assert rows == list(range(1000))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    unbucketed = sum(
        max(lengths[i] for i in random_order[s : s + 32]) * len(random_order[s : s + 32]) for s in range(0, 1000, 32)
    )
    assert padded < 0.8 * unbucketed
    assert bucketed_batches(lengths, 32, torch.Generator().manual_seed(1)) == batches


def test_merge_config_splits_per_model_and_global_parameters(tmp_path):
    class FakeZoo:
        base_dir = tmp_path / "base"
        experts = {"a": tmp_path / "a", "b": tmp_path / "b"}

    tasks = [_task("a", 8, 0), _task("b", 8, 1)]
    config = merge_config("ties", {"weight": 1.0, "density": 0.5, "lambda": 0.7}, FakeZoo, tasks, seed=3)
    assert config["base_model"] == str(tmp_path / "base") and config["parameters"] == {"lambda": 0.7}
    assert config["models"][1] == {"model": str(tmp_path / "b"), "parameters": {"weight": 1.0, "density": 0.5}}
    from mergesmith.config import load_config

    load_config(config)  # what the bench writes is a valid merge config


def test_a_failing_expert_stops_the_others_and_publishes_nothing(tiny_bert_dir, tmp_path):
    """One expert's error (or Ctrl-C / SIGTERM) stops the other training processes at once: the expert that was
    still training is never published, and no worker process is left behind."""
    import multiprocessing

    from mergesmith.bench.zoo import _ExpertJob, _run_jobs

    long = _task("long", 6000, 1)
    heads = tmp_path / "heads"
    heads.mkdir()
    save_head(CosineHead(torch.randn(2, 64), 20.0), heads / "long.safetensors")
    recipe = dataclasses.replace(RECIPES["zero_shot"], epochs=50)  # far longer than the failing job takes to fail
    jobs = [
        _ExpertJob(
            tiny_bert_dir, tmp_path / "experts" / "long", "long", long.train, heads / "long.safetensors", recipe, 0
        ),
        _ExpertJob(tmp_path / "missing", tmp_path / "experts" / "bad", "bad", long.train[:8], heads / "x", recipe, 1),
    ]
    (tmp_path / "experts").mkdir()
    with pytest.raises(Exception):  # noqa: B017 (transformers' own error for a missing directory)
        list(_run_jobs(jobs, 2))
    assert not (tmp_path / "experts" / "long").exists()
    assert multiprocessing.active_children() == []

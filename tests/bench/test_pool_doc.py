"""docs/pools.md's example works as written: its pool YAMLs (probe and zero-shot), data rows and head snippet, on
tiny checkpoints, load with the pool loader; its bench command's --methods parse; README links it and nothing outside
the repository."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "pools.md"


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def _block(blocks, language: str, starts: str = "") -> str:
    return next(body for lang, body in blocks if lang == language and body.lstrip().startswith(starts))


def test_documented_pool_loads(tmp_path, monkeypatch):
    from mergesmith.bench.pool import build_pool, check_pool
    from mergesmith.tiny_models import build_tiny_family, tiny_config

    blocks = _blocks(DOC.read_text(encoding="utf-8"))
    pool = yaml.safe_load(_block(blocks, "yaml"))
    root = tmp_path / "mypool"
    root.mkdir()
    (root / "pool.yaml").write_text(yaml.safe_dump(pool), encoding="utf-8")

    family = build_tiny_family(tmp_path / "tiny", "bert", 2)
    for directory, source in zip(
        [pool["base_model"]] + [t["expert"] for t in pool["tasks"]], [family.base, *family.experts]
    ):
        shutil.copytree(source, root / directory)
    rows = {"csv": _block(blocks, "", "text,label"), "jsonl": _block(blocks, "", '{"body"')}
    for task in pool["tasks"]:
        data = task["data"]
        for split in ("train", "validation", "test"):
            if split in data:
                (root / data[split]).parent.mkdir(parents=True, exist_ok=True)
                (root / data[split]).write_text(rows[data["format"]], encoding="utf-8")

    monkeypatch.chdir(root)  # the head snippet writes a path relative to the pool directory
    (root / "heads").mkdir()
    snippet = _block(blocks, "python")
    width = int(tiny_config("bert").hidden_size)
    for task in pool["tasks"]:
        head = torch.nn.Linear(width, 2)
        exec(snippet.replace("heads/sentiment.safetensors", task["head"]), {"head": head})

    checked = check_pool(root / "pool.yaml")
    assert [t.spec.name for t in checked.tasks] == ["sentiment", "topic"]
    assert [t.label_names for t in checked.tasks] == [("negative", "positive"), ("science", "sports")]
    built = build_pool(checked, progress=False, echo=lambda _: None)
    sentiment, topic = built.tasks
    assert sentiment.probe is not None and topic.probe is None  # only the sentiment task has a train split
    assert sentiment.validation.labels.tolist() == [1, 0] and topic.test.labels.tolist() == [1, 0]

    # The zero-shot example: the same models and data, heads built from its label texts by the base.
    from mergesmith.bench.heads import CosineHead

    zero_shot = yaml.safe_load(_block(blocks, "yaml", "# mypool/zero_shot.yaml"))
    assert zero_shot["protocol"] == "zero_shot"
    for i, task in enumerate(zero_shot["tasks"]):  # the tiny tokenizer knows only the words w2..w255
        task["label_texts"] = [f"w{10 * i + k + 2}" for k in range(len(task["label_texts"]))]
    (root / "zero_shot.yaml").write_text(yaml.safe_dump(zero_shot), encoding="utf-8")
    built = build_pool(check_pool(root / "zero_shot.yaml"), progress=False, echo=lambda _: None)
    assert built.protocol == "zero_shot"
    assert [t.label_names for t in built.tasks] == [("negative", "positive"), ("science", "sports")]
    assert all(isinstance(t.head, CosineHead) and t.head.out_features == 2 and t.probe is None for t in built.tasks)


def test_documented_commands_parse():
    from mergesmith.bench.method_args import parse_methods

    commands = _block(_blocks(DOC.read_text(encoding="utf-8")), "bash")
    methods = re.search(r"--methods (\S+)", commands).group(1)
    assert [c.name for c in parse_methods(methods)] == ["linear", "ties", "regmean"]


def test_readme_links_the_pool_doc_and_nothing_outside():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/pools.md" in readme
    for target in re.findall(r"\]\(([^)]+)\)|`(\.\./[^`]+)`", readme):
        link = next(t for t in target if t)
        assert not link.startswith("../"), link
        if not re.match(r"\w+://", link):
            assert (ROOT / link.split("#")[0]).exists(), link

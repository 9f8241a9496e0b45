"""`mergesmith adapt` end to end on the tiny pool, and its one-line errors (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.adapt.pools import build_text_pool
from tests.helpers import run_cli


def test_adapt_fisher_cli_then_load_merged(tiny_pool_yaml: Path, tmp_path: Path):
    from mergesmith import load_merged

    out = tmp_path / "fisher"
    result = run_cli(
        "adapt", "fisher", "--pool", tiny_pool_yaml, out, "--param", "num_examples=2", "--seed", "1", "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert "fisher:" in result.output and "info:" in result.output
    document = json.loads((out / "mergesmith.json").read_text())["details"]
    assert document["spec"]["params"]["num_examples"] == 2 and document["spec"]["seed"] == 1
    model = load_merged(out).base_model  # the encoder, whether the model comes with its head or not
    ids = torch.tensor([[2, 5, 7, 3]])
    assert model(input_ids=ids).last_hidden_state.shape == (1, 4, 64)
    assert sorted(p.name for p in (out / "statistics").iterdir()) == ["reviews.safetensors", "topics.safetensors"]
    again = run_cli("adapt", "fisher", "--pool", tiny_pool_yaml, out, "--quiet")
    assert again.exit_code == 2 and "not empty" in again.output


def test_adapt_cli_errors(tiny_pool_yaml: Path, tmp_path: Path):
    unknown_key = run_cli("adapt", "regmean", "--pool", tiny_pool_yaml, tmp_path / "a", "--param", "alpah=0.5")
    assert unknown_key.exit_code == 2
    assert (
        "unknown parameter 'alpah' for regmean; allowed: num_examples, alpha, ridge, data, batch_size"
        in unknown_key.output
    )
    bad_value = run_cli("adapt", "regmean", "--pool", tiny_pool_yaml, tmp_path / "b", "--param", "alpha=2")
    assert bad_value.exit_code == 2 and "'alpha'" in bad_value.output
    unknown = run_cli("adapt", "nope", "--pool", tiny_pool_yaml, tmp_path / "c")
    assert unknown.exit_code == 2 and "unknown adapt method 'nope'" in unknown.output
    neither = run_cli("adapt", "fisher", tmp_path / "d")
    assert neither.exit_code == 2 and "either a pool YAML (--pool) or a built-in profile" in neither.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bench_runs_adapt_methods_beside_merges(tiny_pool_yaml: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = run_cli("bench", "--pool", tiny_pool_yaml, "--methods", "linear,fisher,regmean", "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((run / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    for name in ("fisher", "regmean"):
        row = rows[name]
        assert row["kind"] == "adapt" and row["params"]["added_parameters"] == 0
        assert (
            set(row["accuracy"]) == {"reviews", "topics"}
            and row["merge_seconds"] > 0
            and row["peak_memory_mb"] is not None
        )
        assert row["info"]["linear_layers"] == 13 if name == "regmean" else "fisher_sum" in row["info"]
    assert "regmean" in result.output and "fisher" in (run / "results.csv").read_text()
    assert "fisher" in (run / "report.html").read_text()


def test_adapt_trains_no_linear_probe(tmp_path: Path, monkeypatch):
    """The pretrained model's linear probes (trained on the train splits) serve only the bench's pretrained row: adapt
    neither trains nor encodes them, while the bench still does."""
    import mergesmith.bench.encoder as encoder

    pool = build_text_pool(tmp_path / "pool", n_train=12)
    train_probe = encoder.train_probe
    trained = []
    monkeypatch.setattr(
        encoder, "train_probe", lambda *args, **kwargs: trained.append(1) or train_probe(*args, **kwargs)
    )
    result = run_cli("adapt", "regmean", "--pool", pool, tmp_path / "out", "--param", "num_examples=4", "--quiet")
    assert result.exit_code == 0, result.output
    assert trained == []
    bench = run_cli("bench", "--pool", pool, "--methods", "linear", "--out", tmp_path / "run", "--quiet")
    assert bench.exit_code == 0, bench.output
    assert len(trained) == 2  # one probe per task for the pretrained row

"""The pretrained and expert rows' test hits, scored once per zoo and read back afterwards."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mergesmith.bench.fixed_rows import cache_file, fixed_row_hits


def _scorers(calls: list[str]):
    def make(name: str, value: bool):
        def score():
            calls.append(name)
            return {"a": torch.tensor([value, True, False]), "b": torch.tensor([True, value])}

        return score

    return {"pretrained (zero-shot)": make("pretrained", False), "expert: a": make("a", True)}


SIZES = {"a": 3, "b": 2}


def test_fixed_rows_are_scored_once_then_read_back(tmp_path):
    path = tmp_path / "scores" / "test.safetensors"
    calls: list[str] = []
    first, seconds = fixed_row_hits(path, _scorers(calls), SIZES, echo=lambda _: None)
    assert calls == ["pretrained", "a"] and all(s is not None for s in seconds.values())
    again, seconds = fixed_row_hits(path, _scorers(calls), SIZES, echo=lambda _: None)
    assert calls == ["pretrained", "a"]  # nothing scored the second time
    assert seconds == {"pretrained (zero-shot)": None, "expert: a": None}
    for row in first:
        for task in first[row]:
            assert torch.equal(again[row][task].bool(), first[row][task])


def test_a_damaged_or_stale_cache_is_rescored(tmp_path):
    path = tmp_path / "test.safetensors"
    calls: list[str] = []
    fixed_row_hits(path, _scorers(calls), SIZES, echo=lambda _: None)
    path.write_bytes(b"not a safetensors file")
    fixed_row_hits(path, _scorers(calls), SIZES, echo=lambda _: None)
    assert calls == ["pretrained", "a"] * 2
    # splits of another size (another profile's test split): scored again, never mixed
    calls.clear()
    fixed_row_hits(path, _scorers(calls), {"a": 4, "b": 2}, echo=lambda _: None)
    assert calls == ["pretrained", "a"]


def test_a_user_pool_is_always_scored():
    user_pool = SimpleNamespace(provenance={})
    assert cache_file(user_pool, "zero_shot") is None
    calls: list[str] = []
    fixed_row_hits(None, _scorers(calls), SIZES, echo=lambda _: None)
    fixed_row_hits(None, _scorers(calls), SIZES, echo=lambda _: None)
    assert calls == ["pretrained", "a"] * 2
    built_in = SimpleNamespace(provenance={"zoo": "/cache/zoo/abc"})
    assert str(cache_file(built_in, "zero_shot")).startswith("/cache/zoo/abc/scores/")

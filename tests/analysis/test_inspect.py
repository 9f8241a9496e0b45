"""Task-vector diagnostics: known answers for cosine, sign conflicts and effective rank; streaming over
checkpoints; the HTML report; the CLI; bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from mergesmith.analysis import inspect_task_vectors, summarize
from mergesmith.analysis.report import write_report
from mergesmith.analysis.stats import (
    cosine_from_gram,
    effective_rank,
    gram,
    pairwise_conflict_counts,
    random_sign_conflict_rate,
    sign_conflict_counts,
)
from mergesmith.errors import MergesmithError
from tests.helpers import run_cli


def test_cosine_identical_and_orthogonal():
    a = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    b = torch.zeros(1000)
    b[:10] = 1.0
    a[:10] = 0.0  # a and b have disjoint supports: exactly orthogonal
    cos = cosine_from_gram(gram(torch.stack([a, a, b, -2 * a])))
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert cos[0, 2] == 0.0
    assert cos[0, 3] == pytest.approx(-1.0, abs=1e-12)
    assert cosine_from_gram(gram(torch.stack([a, torch.zeros(1000)])))[0, 1] == 0.0  # zero vector: 0, not NaN


def test_sign_conflicts_by_hand():
    taus = torch.tensor(
        [[1.0, -1.0, 0.0, 2.0, 0.5, -3.0], [1.0, 1.0, 3.0, 0.0, 0.0, -1.0], [0.0, 2.0, -1.0, 0.0, 0.0, 1.0]]
    )
    # column: 0 agree(2) | 1 conflict(3) | 2 conflict(2) | 3 one nonzero | 4 one nonzero | 5 conflict(3)
    assert sign_conflict_counts(taus) == (3, 4)
    conflicts, both = pairwise_conflict_counts(taus)
    # pair (0,1): both nonzero at columns 0,1,5 -> conflict at 1 only; pair (1,2): columns 1,2,5 -> conflicts at 2,5
    assert (conflicts[0, 1].item(), both[0, 1].item()) == (1.0, 3.0)
    assert (conflicts[1, 2].item(), both[1, 2].item()) == (2.0, 3.0)
    assert (conflicts[0, 2].item(), both[0, 2].item()) == (2.0, 2.0)
    assert random_sign_conflict_rate(2) == 0.5 and random_sign_conflict_rate(3) == 0.75


def test_effective_rank_known_answers():
    u, v = torch.randn(7, 1), torch.randn(1, 5)
    assert effective_rank(torch.linalg.svdvals(u @ v)) == pytest.approx(1.0, abs=1e-5)
    assert effective_rank(torch.linalg.svdvals(torch.eye(6))) == pytest.approx(6.0)
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    )
    assert effective_rank(torch.zeros(4)) == 0.0


def _save(directory, tensors):
    directory.mkdir(parents=True)
    save_file(tensors, directory / "model.safetensors")
    return directory


@pytest.fixture()
def constructed(tmp_path):
    """A base and experts whose task vectors are known: 0 and 1 identical, 2 orthogonal to them (other tensors)."""
    base = {
        "model.layers.0.w": torch.zeros(4, 6),
        "model.layers.1.w": torch.ones(4, 6),
        "embed.weight": torch.zeros(10),
    }
    gen = torch.Generator().manual_seed(1)
    rank1 = torch.randn(4, 1, generator=gen) @ torch.randn(1, 6, generator=gen)
    e0 = {**base, "model.layers.0.w": rank1}
    e2 = {
        **base,
        "model.layers.1.w": base["model.layers.1.w"] + torch.randn(4, 6, generator=gen),
        "embed.weight": torch.ones(10),
    }
    return (
        _save(tmp_path / "base", base),
        [_save(tmp_path / "e0", e0), _save(tmp_path / "e1", dict(e0)), _save(tmp_path / "e2", e2)],
    )


def test_streamed_diagnostics_on_constructed_checkpoints(constructed):
    base, experts = constructed
    summary = summarize(inspect_task_vectors(base, experts, top_k=3))
    assert summary.experts == ["e0", "e1", "e2"]
    assert summary.cosine[0][1] == pytest.approx(1.0, abs=1e-9)
    assert summary.cosine[0][2] == 0.0 and summary.cosine[1][2] == 0.0
    layer0 = next(layer for layer in summary.layers if layer.layer == 0)
    assert layer0.effective_rank[0] == pytest.approx(1.0, abs=1e-4)  # a rank-1 task matrix
    assert layer0.norms[2] == 0.0 and layer0.conflict_rate == 0.0  # e0 and e1 agree everywhere
    assert [layer.layer for layer in summary.layers] == [0, 1, "other"]
    assert len(summary.top_singular["model.layers.0.w"][0]) == 3
    assert summary.verdict in ("caution", "poor") and any("nearly the same update" in f for f in summary.findings)


def test_html_report_with_images(constructed, tmp_path):
    base, experts = constructed
    summary = summarize(inspect_task_vectors(base, experts))
    files = write_report(summary, tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert len(pngs) == 5 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    data = json.loads((tmp_path / "report" / "diagnostics.json").read_text())
    assert data["cosine"][0][1] == pytest.approx(1.0) and data["verdict"] == summary.verdict
    assert all(p.exists() for p in files)


def test_cli_end_to_end(gpt2_family, tmp_path):
    fam = gpt2_family  # the session's tiny GPT-2 base and two fine-tunes (tests/conftest.py)
    result = run_cli("inspect", fam.base, *fam.experts, "--out", tmp_path / "rep", "--top-k", "4", "-q")
    assert result.exit_code == 0, result.output
    assert "Task vectors" in result.output and "mergeability:" in result.output and "Per layer" in result.output
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "cosine.png").is_file()
    summary = json.loads((tmp_path / "rep" / "diagnostics.json").read_text())
    assert [layer["layer"] for layer in summary["layers"]] == [0, 1, "other"]
    assert abs(summary["cosine"][0][1]) < 0.1  # independent random task vectors are nearly orthogonal


def test_bad_input_one_line_exit_2(constructed, tmp_path):
    base, experts = constructed
    missing = run_cli("inspect", base, tmp_path / "nope", "--out", tmp_path / "out1")
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1 and "no such file" in missing.output
    bad = _save(
        tmp_path / "bad",
        {"model.layers.0.w": torch.zeros(4, 5), "model.layers.1.w": torch.ones(4, 6), "embed.weight": torch.zeros(10)},
    )
    mismatched = run_cli("inspect", base, experts[0], bad, "--out", tmp_path / "out2")
    assert mismatched.exit_code == 2 and len(mismatched.output.strip().splitlines()) == 1
    assert "model.layers.0.w" in mismatched.output and "[4, 5]" in mismatched.output
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    with pytest.raises(MergesmithError, match="lacks 'embed.weight'"):
        inspect_task_vectors(
            base,
            [
                _save(
                    tmp_path / "partial", {"model.layers.0.w": torch.zeros(4, 6), "model.layers.1.w": torch.ones(4, 6)}
                )
            ],
        )

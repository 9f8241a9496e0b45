"""pcb, tsv_m, iso_c, iso_cts, cart, lines (modules pcb, tsv, iso, cart, lines): known answers from the papers'
equations, what they give where the papers' definitions do not return the expert, the non-matrix fallback said once
per merge, the tensor depth filled in by the engine and by merge_state_dicts alike, parameter errors, and
``mergesmith merge`` end to end on tiny LLaMA checkpoints.

Parity with FusionBench for TSV-M, Iso-C and Iso-CTS: test_fusionbench_parity_spectral.py.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mergesmith.api import merge_state_dicts, plan_merge
from mergesmith.engine.layers import layer_counts, relative_depth
from mergesmith.errors import ConfigError
from mergesmith.methods import METHODS, _spectral as sp, cart, iso, lines, pcb, tsv
from mergesmith.methods._spec import param_infos
from tests.helpers import load_tensors, run_cli, write_yaml

NEW = ["pcb", "tsv_m", "iso_c", "iso_cts", "cart", "lines"]


def make(shape, n, seed=0, scale=0.1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    experts = [base + scale * torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]
    return base, experts


def singular_values(m):
    return torch.linalg.svdvals(m)


# ---------------------------------------------------------------------------------------------------------------
# Iso-C and Iso-CTS


def test_iso_c_flattens_the_spectrum_of_the_sum():
    base, experts = make((30, 20), 3, seed=1)
    delta = sum(e - base for e in experts)
    out = iso.merge_c(base, experts, iso.CParams(alpha=1.5))
    s = singular_values(out - base)
    expected = 1.5 * singular_values(delta).mean()
    torch.testing.assert_close(s, torch.full_like(s, float(expected)), rtol=1e-9, atol=1e-12)
    # the same singular vectors as the task-arithmetic sum: (out - base) = c U V^T
    u, _, vh = torch.linalg.svd(delta, full_matrices=False)
    torch.testing.assert_close(out - base, expected * u @ vh, rtol=1e-9, atol=1e-12)


def test_iso_c_identical_experts_give_the_flattened_expert():
    """The contract's identity does not hold by the paper's definition: T identical experts give the base plus the
    expert's task matrix with its spectrum flattened, scaled by T (Delta = T tau)."""
    base, (expert,) = make((16, 12), 1, seed=2)
    tau = expert - base
    out = iso.merge_c(base, [expert.clone() for _ in range(3)], iso.CParams())
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    torch.testing.assert_close(out - base, 3 * s.mean() * u @ vh, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(out, expert)


def test_iso_c_rank_deficient_sum_stays_in_its_range():
    """A task matrix with zero rows (untouched embedding rows): the flat spectrum covers the nonzero singular values
    only, so the merged matrix stays zero on those rows instead of gaining arbitrary null-space directions."""
    base = torch.zeros(12, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    experts = []
    for _ in range(2):
        tau = torch.zeros(12, 8, dtype=torch.float64)
        tau[:4] = torch.randn(4, 8, generator=g, dtype=torch.float64)
        experts.append(base + tau)
    out = iso.merge_c(base, experts, iso.CParams())
    assert torch.equal(out[4:], torch.zeros(8, 8, dtype=torch.float64))
    s = singular_values(out)
    delta_s = singular_values(experts[0] + experts[1])
    torch.testing.assert_close(s[:4], torch.full((4,), float(delta_s[:4].mean()), dtype=torch.float64))
    assert float(s[4:].abs().max()) < 1e-12


def test_iso_cts_with_the_whole_rank_common_is_iso_c():
    base, experts = make((20, 14), 3, seed=4)
    whole = iso.merge_cts(base, experts, iso.CTSParams(alpha=0.7, common_space_fraction=1.0))
    torch.testing.assert_close(whole, iso.merge_c(base, experts, iso.CParams(alpha=0.7)), rtol=1e-9, atol=1e-12)


def test_iso_cts_spectrum_is_flat_and_subspaces_split_the_rank():
    base, experts = make((24, 20), 3, seed=5)
    out = iso.merge_cts(base, experts, iso.CTSParams(common_space_fraction=0.8))
    s = singular_values(out - base)
    torch.testing.assert_close(s, torch.full_like(s, float(s.mean())), rtol=1e-8, atol=1e-12)
    # r = 20, int(0.8 r) = 16 common; round(4 / 3) * 3 = 3 task directions -> 17 common, 1 per task
    assert iso.subspace_sizes(20, 3, 0.8) == (17, 1)
    assert iso.subspace_sizes(12, 3, 0.8) == (9, 1)
    assert iso.subspace_sizes(10, 4, 0.0) == (2, 2)
    # the task-specific directions add what the common subspace misses: Iso-CTS differs from Iso-C
    assert not torch.allclose(out, iso.merge_c(base, experts, iso.CParams()))


def test_iso_cts_identical_experts_give_a_flat_spectrum_of_the_expert():
    """r = 12: the top 9 directions of Delta = 3 tau are common, and every task adds the same 10th direction of tau.
    The three copies orthogonalise to one, so the merge is sigma_bar times a rank-10 partial isometry, with
    sigma_bar the mean of the 9 common singular values and the 3 task ones."""
    base, (expert,) = make((16, 12), 1, seed=6)
    tau = expert - base
    out = iso.merge_cts(base, [expert.clone() for _ in range(3)], iso.CTSParams())
    u, s_tau, vh = torch.linalg.svd(tau, full_matrices=False)
    sigma_bar = torch.cat([3 * s_tau[:9], s_tau[9:10].repeat(3)]).mean()
    torch.testing.assert_close(out - base, sigma_bar * u[:, :10] @ vh[:10], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# TSV-M


def test_tsv_m_one_task_at_full_rank_is_task_arithmetic():
    base, experts = make((18, 11), 1, seed=7)
    out = tsv.merge(base, experts, tsv.Params(alpha=0.6, sv_reduction=1.0))
    torch.testing.assert_close(out, base + 0.6 * (experts[0] - base), rtol=1e-10, atol=1e-12)
    # and so is the default budget with one task (1/T = 1)
    torch.testing.assert_close(tsv.merge(base, experts, tsv.Params(alpha=0.6)), out, rtol=1e-10, atol=1e-12)


def test_tsv_m_orthogonal_low_rank_tasks_sum_exactly():
    """Task matrices of rank <= k in mutually orthogonal row and column subspaces: their singular vectors are already
    orthonormal, the decorrelation changes nothing and TSV-M is the task-arithmetic sum."""
    g = torch.Generator().manual_seed(8)
    q_left, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    q_right, _ = torch.linalg.qr(torch.randn(18, 18, generator=g, dtype=torch.float64))
    base = torch.randn(24, 18, generator=g, dtype=torch.float64)
    taus = []
    for t in range(3):  # rank 2 each, k = int(18 / 3) = 6
        cols = slice(2 * t, 2 * t + 2)
        taus.append(
            q_left[:, cols] @ torch.diag(torch.tensor([3.0 - t, 1.0], dtype=torch.float64)) @ q_right[:, cols].T
        )
    out = tsv.merge(base, [base + tau for tau in taus], tsv.Params())
    torch.testing.assert_close(out, base + sum(taus), rtol=1e-10, atol=1e-12)


def test_tsv_m_decorrelates_interfering_tasks():
    base, experts = make((24, 20), 3, seed=9)
    merged = tsv.merge(base, experts, tsv.Params()) - base
    taus = [e - base for e in experts]
    k = tsv.rank_per_task((24, 20), 3, None)
    assert k == 6
    # rebuild: U_perp and V_perp have orthonormal columns and reproduce the merged matrix with the kept spectrum
    parts = [torch.linalg.svd(t, full_matrices=False) for t in taus]
    u_cat = torch.cat([u[:, :k] for u, _, _ in parts], dim=1)
    vh_cat = torch.cat([vh[:k] for _, _, vh in parts], dim=0)
    s_cat = torch.cat([s[:k] for _, s, _ in parts])
    pu, _, qu = torch.linalg.svd(u_cat, full_matrices=False)
    pv, _, qv = torch.linalg.svd(vh_cat.T, full_matrices=False)
    u_perp, v_perp = pu @ qu, pv @ qv
    torch.testing.assert_close(u_perp.T @ u_perp, torch.eye(18, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(merged, u_perp @ torch.diag(s_cat) @ v_perp.T, rtol=1e-9, atol=1e-12)
    # the orthogonalised directions differ from the raw concatenation (the tasks did interfere)
    assert not torch.allclose(merged, u_cat @ torch.diag(s_cat) @ vh_cat, atol=1e-6)


def test_tsv_m_identical_experts_give_the_truncated_expert():
    """Identical experts at the default budget: T copies of the top n/T triplets orthogonalise to one copy of them,
    the expert's best rank-k approximation (at ``sv_reduction`` 1 the expert itself: the contract table)."""
    base, (expert,) = make((15, 12), 1, seed=10)
    out = tsv.merge(base, [expert.clone() for _ in range(3)], tsv.Params())
    torch.testing.assert_close(out - base, sp.low_rank(expert - base, 4), rtol=1e-9, atol=1e-11)


def test_tsv_m_zero_task_matrix_does_not_bend_the_others():
    """A frozen weight in one expert (zero task matrix) contributes nothing, not arbitrary null-space directions:
    the merge equals TSV-M of the other experts with the same per-task budget."""
    base, experts = make((20, 16), 2, seed=11)
    with_frozen = tsv.merge(base, experts + [base.clone()], tsv.Params(sv_reduction=1 / 3))
    without = tsv.merge(base, experts, tsv.Params(sv_reduction=1 / 3))
    torch.testing.assert_close(with_frozen, without, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# CART


def test_cart_at_full_rank_is_weight_averaging():
    """Centered task vectors sum to zero: at full rank CART is theta_avg = task arithmetic with lambda 1/T."""
    base, experts = make((14, 9), 4, seed=12)
    out = cart.merge(None, experts, cart.Params(rank_ratio=1.0, lambda_=1.7))
    average = sum(experts) / 4
    torch.testing.assert_close(out, average, rtol=1e-10, atol=1e-12)
    ta = merge_state_dicts({"w": base}, [{"w": e} for e in experts], "task_arithmetic", weight=1.0, **{"lambda": 0.25})[
        "w"
    ]
    torch.testing.assert_close(out, ta, rtol=1e-10, atol=1e-12)


def test_cart_low_rank_centered_vectors():
    _, experts = make((16, 10), 3, seed=13)
    out = cart.merge(None, experts, cart.Params(rank_ratio=0.2, lambda_=1.5))
    average = sum(experts) / 3
    k = 2  # int(10 * 0.2)
    expected = average.clone()
    for e in experts:
        u, s, vh = torch.linalg.svd(e - average, full_matrices=False)
        expected += 1.5 * u[:, :k] @ torch.diag(s[:k]) @ vh[:k]
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(out, average)


def test_cart_averages_non_matrices_and_needs_no_base():
    _, experts = make((7,), 3, seed=14)
    torch.testing.assert_close(cart.merge(None, experts, cart.Params()), sum(experts) / 3, rtol=1e-12, atol=1e-12)
    assert METHODS["cart"].base == "unused"


# ---------------------------------------------------------------------------------------------------------------
# LiNeS


def test_lines_scale_grows_with_depth():
    base, experts = make((6, 5), 3, seed=15)
    mtv = sum(e - base for e in experts)
    spec = lines.SPEC
    for depth in (0.0, 0.25, 1.0):
        out = spec.merge(base, experts, spec.make_params(3, {"beta": 0.8}, facts={"depth": depth}))
        torch.testing.assert_close(out, base + (1 / 3 + 0.8 * depth) * mtv, rtol=1e-10, atol=1e-12)
    out = spec.merge(base, experts, spec.make_params(3, {"alpha": 0.2, "beta": 0.5}, facts={"depth": 0.5}))
    torch.testing.assert_close(out, base + 0.45 * mtv, rtol=1e-10, atol=1e-12)


def test_lines_with_beta_zero_is_task_arithmetic():
    base, experts = make((9, 7), 3, seed=16)
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    sd_base = {n: base for n in names}
    sd_experts = [{n: e for n in names} for e in experts]
    ours = merge_state_dicts(sd_base, sd_experts, "lines", alpha=0.3, beta=0.0)
    ta = merge_state_dicts(sd_base, sd_experts, "task_arithmetic", weight=1.0, **{"lambda": 0.3})
    for n in names:
        torch.testing.assert_close(ours[n], ta[n], rtol=1e-12, atol=1e-12)


def test_relative_depth_of_tensor_names():
    names = [
        "model.embed_tokens.weight",
        *(f"model.layers.{i}.self_attn.q_proj.weight" for i in range(5)),
        "model.norm.weight",
        "lm_head.weight",
    ]
    counts = layer_counts(names)
    depths = [relative_depth(n, counts) for n in names]
    assert depths == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    bert = [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.output.dense.weight",
        "bert.encoder.layer.1.output.dense.weight",
        "bert.pooler.dense.weight",
    ]
    assert [relative_depth(n, layer_counts(bert)) for n in bert] == [0.0, 0.0, 1.0, 1.0]
    assert relative_depth("transformer.wte.weight", {"transformer.h.": 2}) == 0.0


def test_lines_depth_is_a_tensor_fact_not_a_parameter():
    assert set(param_infos(lines.Params)) == {"alpha", "beta"}
    base, experts = make((4, 3), 2)
    with pytest.raises(ValueError, match="without one"):
        lines.SPEC.merge(base, experts, lines.Params())
    with pytest.raises(ConfigError, match="unknown parameter"):
        merge_state_dicts({"w": base}, [{"w": e} for e in experts], "lines", depth=0.5)


# ---------------------------------------------------------------------------------------------------------------
# PCB-Merging


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _min_max(values):
    low, high = min(values), max(values)
    return [(v - low) / (high - low) for v in values]


def _pcb_by_hand(taus, density, lam):
    """The paper's balancing, drop, rescale and merge equations in plain Python, for a few entries."""
    n, d = len(taus), len(taus[0])
    scores = []
    for i in range(n):
        intra = _softmax([n * v for v in _min_max([x * x for x in taus[i]])])
        inter = [0.0] * d
        for j in range(n):
            inter = [a + b for a, b in zip(inter, _softmax(_min_max([x * y for x, y in zip(taus[i], taus[j])])))]
        beta = [a * b for a, b in zip(intra, inter)]
        threshold = sorted(beta)[int((1 - density) * d)]
        scores.append([b if b >= threshold else 0.0 for b in beta])
    merged = []
    for e in range(d):
        total = sum(scores[i][e] for i in range(n))
        merged.append(lam * sum(scores[i][e] * taus[i][e] for i in range(n)) / total if total > 0 else 0.0)
    return merged


@pytest.mark.parametrize("density", [1.0, 0.5, 0.25])
def test_pcb_matches_the_papers_equations_by_hand(density):
    taus = [[0.4, -0.1, 0.3, 0.05], [-0.2, -0.3, 0.35, 0.0], [0.1, 0.2, -0.05, 0.6]]
    base = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    experts = [base + torch.tensor(t, dtype=torch.float64) for t in taus]
    out = pcb.merge(base, experts, pcb.Params(density=density, lambda_=1.3))
    expected = base + torch.tensor(_pcb_by_hand(taus, density, 1.3), dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_pcb_keeps_the_top_fraction_of_each_tasks_scores():
    base, experts = make((40, 25), 3, seed=17)
    taus = torch.stack([(e - base).reshape(-1) for e in experts])
    scores = pcb.drop_low_scores(pcb.balancing_scores(taus), 0.2)
    assert [int((row > 0).sum()) for row in scores] == [200, 200, 200]  # D - int(0.8 D)
    out = pcb.merge(base, experts, pcb.Params(density=0.2))
    dropped_by_all = (scores > 0).sum(dim=0) == 0
    assert torch.equal(out.reshape(-1)[dropped_by_all], base.reshape(-1)[dropped_by_all])


# ---------------------------------------------------------------------------------------------------------------
# non-matrix fallback, said once per merge


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts"])
def test_non_matrices_take_the_mean_task_vector(name):
    base, experts = make((11,), 3, seed=18)
    values = {"alpha": 0.9}
    out = METHODS[name].merge(base, experts, METHODS[name].params(**{"alpha": 0.9}), None)
    torch.testing.assert_close(out, base + values["alpha"] * sum(e - base for e in experts) / 3, rtol=1e-12, atol=1e-12)


def test_merge_state_dicts_warns_once_per_merge():
    base, experts = make((8, 6), 2, seed=19)
    bias, bias_experts = make((6,), 2, seed=20)
    sd_base = {"a.weight": base, "a.bias": bias, "b.weight": base, "b.bias": bias}
    sd_experts = [{"a.weight": e, "a.bias": b, "b.weight": e, "b.bias": b} for e, b in zip(experts, bias_experts)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_state_dicts(sd_base, sd_experts, "tsv_m")
        merge_state_dicts(sd_base, sd_experts, "lines")
    messages = [str(w.message) for w in caught]
    assert messages == ["tsv_m: 2 tensors are not 2-D matrices (biases, norms); " + sp.NON_MATRIX_MEAN]


# ---------------------------------------------------------------------------------------------------------------
# parameter errors


@pytest.mark.parametrize(
    "name, values, message",
    [
        ("pcb", {"density": 0.0}, "pcb: density must be in \\(0, 1\\], got 0"),
        ("pcb", {"lambda": math.inf}, "lambda must be a finite number, got inf"),
        ("tsv_m", {"sv_reduction": 1.5}, "sv_reduction must be in \\(0, 1\\], got 1.5"),
        ("tsv_m", {"alpha": math.nan}, "alpha must be a finite number"),
        ("iso_cts", {"common_space_fraction": -0.1}, "common_space_fraction must be in \\[0, 1\\], got -0.1"),
        ("cart", {"rank_ratio": 0.0}, "rank_ratio must be in \\(0, 1\\], got 0"),
        ("lines", {"beta": math.inf}, "beta must be a finite number"),
    ],
)
def test_parameter_errors_name_the_parameter(name, values, message):
    with pytest.raises(ConfigError, match=message):
        METHODS[name].make_params(2, values)


def test_a_depth_outside_the_stack_is_refused():
    base, experts = make((6, 5), 2)
    with pytest.raises(ValueError, match="depth must be in \\[0, 1\\]"):
        lines.SPEC.merge(base, experts, lines.SPEC.make_params(2, {}, facts={"depth": 1.5}))


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts", "cart", "doge_ta"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_matrix_gives_a_nan_matrix_not_a_factorisation_error(name, value):
    """The SVD of a matrix with NaN/Inf is undefined (LAPACK raises): the merged matrix is NaN, as arithmetic on a
    NaN gives; the engine has already warned about the input, or refused it with --strict."""
    base, experts = make((6, 5), 3)
    experts[1][2, 3] = value
    spec = METHODS[name]
    params = spec.make_params(3, {"steps": 2} if name == "doge_ta" else {})
    out = spec.merge(base if spec.base != "unused" else None, experts, params, None)
    assert out.shape == base.shape and torch.isnan(out).all()
    bias_base, bias_experts = make((5,), 3)
    bias_experts[0][1] = value  # not a matrix: averaged, so only that entry is non-finite
    out = spec.merge(bias_base if spec.base != "unused" else None, bias_experts, params, None)
    assert int((~torch.isfinite(out)).sum()) == 1


def test_shape_errors():
    base, experts = make((6, 5), 2)
    for name in NEW:
        spec = METHODS[name]
        with pytest.raises(ValueError, match="shape"):
            facts = {"depth": 0.5} if name == "lines" else None
            spec.merge(
                base if spec.base != "unused" else None,
                [experts[0], experts[1][:3]],
                spec.make_params(2, {}, facts=facts),
                None,
            )
        if spec.base == "required":
            with pytest.raises(ValueError, match="base"):
                spec.merge(None, experts, spec.params(), None)


# ---------------------------------------------------------------------------------------------------------------
# end to end: the engine, the plan, the CLI


def _config(fam, method: str, **params) -> dict:
    config = {"merge_method": method, "models": [{"model": str(p)} for p in fam.experts], "dtype": "float32"}
    if METHODS[method].base != "unused":
        config["base_model"] = str(fam.base)
    if params:
        config["parameters"] = params
    return config


def test_engine_and_merge_state_dicts_agree(llama_family, tmp_path):
    """The plan fills each tensor's depth from its name like merge_state_dicts does: the same bytes for LiNeS (with a
    streamed row-block merge in the engine) and the same values for an SVD method."""
    base = load_tensors(llama_family.base)
    experts = [load_tensors(p) for p in llama_family.experts]
    for method, params in (("lines", {"beta": 0.7}), ("tsv_m", {"alpha": 0.9})):
        out = tmp_path / method
        assert (
            run_cli(
                "merge",
                write_yaml(tmp_path / f"{method}.yaml", _config(llama_family, method, **params)),
                out,
                "--quiet",
            ).exit_code
            == 0
        )
        engine = load_tensors(out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            memory = merge_state_dicts(base, experts, method, **params)
        assert engine.keys() == memory.keys()
        for name in engine:
            if method == "lines":
                assert torch.equal(engine[name], memory[name]), name
            else:
                torch.testing.assert_close(engine[name], memory[name], rtol=1e-4, atol=1e-5)  # SVD threads differ
    # LiNeS really scales by depth: embeddings by alpha = 1/3, the last layer and the head by 1/3 + beta
    lines_out = load_tensors(tmp_path / "lines")
    for name, scale in (
        ("model.embed_tokens.weight", 1 / 3),
        ("model.layers.3.mlp.up_proj.weight", 1 / 3 + 0.7),
        ("model.layers.1.mlp.up_proj.weight", 1 / 3 + 0.7 / 3),
        ("model.norm.weight", 1 / 3 + 0.7),
    ):
        mtv = sum(e[name] - base[name] for e in experts)
        torch.testing.assert_close(lines_out[name], base[name] + scale * mtv, rtol=1e-5, atol=1e-6)


def test_plan_fills_depth_and_notes_the_fallback_once(llama_family, tmp_path):
    plan = plan_merge(write_yaml(tmp_path / "c.yaml", _config(llama_family, "lines")))
    depths = {job.out_name: job.params.depth for job in plan.jobs if job.params is not None}
    assert depths["model.embed_tokens.weight"] == 0.0
    assert depths["model.layers.2.self_attn.q_proj.weight"] == pytest.approx(2 / 3)
    assert depths["model.norm.weight"] == 1.0
    plan = plan_merge(write_yaml(tmp_path / "d.yaml", _config(llama_family, "iso_cts")))
    notes = [n for n in plan.notes if n.startswith("iso_cts:")]
    n_other = sum(1 for j in plan.jobs if j.params is not None and len(j.shape) != 2)
    assert n_other > 0 and notes == [
        f"iso_cts: {n_other} tensors are not 2-D matrices (biases, norms); " + sp.NON_MATRIX_MEAN
    ]


def test_depth_follows_the_output_layers_of_slices(llama_family, tmp_path):
    """With slices the output stack is what counts: 3 + 2 output layers, depth l / 4 for output layer l."""
    e0, e1 = (str(p) for p in llama_family.experts[:2])
    config = {
        "merge_method": "lines",
        "base_model": str(llama_family.base),
        "slices": [
            {"sources": [{"model": e0, "layer_range": [0, 3]}, {"model": e1, "layer_range": [0, 3]}]},
            {"sources": [{"model": e0, "layer_range": [2, 4]}, {"model": e1, "layer_range": [2, 4]}]},
        ],
    }
    plan = plan_merge(write_yaml(tmp_path / "c.yaml", config))
    depths = {job.out_name: job.params.depth for job in plan.jobs if job.params is not None}
    assert [depths[f"model.layers.{i}.mlp.up_proj.weight"] for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert depths["model.embed_tokens.weight"] == 0.0 and depths["model.norm.weight"] == 1.0


def test_config_rejects_bad_values_before_merging(llama_family, tmp_path):
    for params, message in (({"sv_reduction": 0.0}, "sv_reduction must be in"), ({"depth": 0.5}, "unknown parameter")):
        method = "tsv_m" if "sv_reduction" in params else "lines"
        with pytest.raises(ConfigError, match=message):
            plan_merge(write_yaml(tmp_path / "c.yaml", _config(llama_family, method, **params)))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "method, params",
    [
        ("pcb", {"density": 0.2, "lambda": 1.0}),
        ("tsv_m", {}),
        ("iso_c", {"alpha": 1.2}),
        ("iso_cts", {"common_space_fraction": 0.8}),
        ("cart", {"rank_ratio": 0.25}),
        ("lines", {"beta": 0.5}),
    ],
)
def test_cli_merge_loads_with_transformers(llama_family, tmp_path, method, params):
    import transformers

    result = run_cli(
        "merge", write_yaml(tmp_path / "c.yaml", _config(llama_family, method, **params)), tmp_path / "out", "--quiet"
    )
    assert result.exit_code == 0, result.output
    if METHODS[method].non_matrix:
        assert result.output.count(f"note: {method}:") == 1
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens).logits
    assert torch.isfinite(logits).all()
    merged, base = load_tensors(tmp_path / "out"), load_tensors(llama_family.base)
    assert all(not torch.equal(merged[k], base[k]) for k in base if k.endswith("up_proj.weight"))


def test_svd_retries_in_float64_when_lapack_does_not_converge(monkeypatch):
    """gesdd can fail on clustered singular values (TSV-M's concatenated orthonormal bases hit it on the bench)."""
    real = torch.linalg.svd
    calls = []

    def flaky(matrix, full_matrices=True):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(matrix, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)))
    clustered = torch.cat([q[:, :6], q[:, 3:9]], dim=1)  # two orthonormal blocks: singular values near 1 and sqrt 2
    u, s, vh = sp.svd(clustered)
    assert calls == [torch.float32, torch.float64] and u.dtype == s.dtype == torch.float32
    assert torch.allclose((u * s) @ vh, clustered, atol=1e-5)
    monkeypatch.setattr(
        torch.linalg,
        "svd",
        lambda m, full_matrices=True: (_ for _ in ()).throw(
            torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        ),
    )
    with pytest.raises(torch.linalg.LinAlgError):  # float64 failing too is not hidden
        sp.svd(clustered.double())

"""Choosing a grid point on validation: ties within float noise go to the first point; the grid plot shows noise flat."""

from __future__ import annotations

import math

import pytest

from mergesmith.bench import report
from mergesmith.bench.grids import TIE_TOLERANCE, choose_point, grid_points


def test_float_noise_is_a_tie_won_by_the_first_point():
    # tsv_m's alpha grid, smallest first: the same accuracy summed in another order goes to its first point
    alphas = [p["alpha"] for p in grid_points("tsv_m")]
    assert alphas == sorted(alphas)
    assert choose_point([0.77499998, 0.77500001]) == 0
    assert choose_point([0.5, 0.7, 0.7 + TIE_TOLERANCE / 2, 0.6]) == 1


def test_a_real_difference_still_wins():
    one_example = 1 / 3000  # one validation example of 1000 on each of 3 tasks
    assert choose_point([0.775, 0.775 + one_example]) == 1
    assert choose_point([0.7, 0.9, 0.8]) == 1


def test_missing_scores_are_never_chosen():
    assert choose_point([None, 0.4, math.nan]) == 1
    assert choose_point([None, None]) == 0
    with pytest.raises(ValueError):
        choose_point([])


def test_grid_plot_has_no_offset_and_shows_noise_flat():
    from matplotlib.figure import Figure

    row = {
        "name": "tsv_m",
        "params": {"alpha": 0.3},
        "grid": [
            {"params": {"alpha": 0.3}, "validation_average": 0.77499998},
            {"params": {"alpha": 0.5}, "validation_average": 0.77500001},
        ],
    }
    fig = Figure()
    ax = fig.add_subplot()
    report._plot_one_grid(ax, row, "C0")
    formatter = ax.yaxis.get_major_formatter()
    labels = formatter.format_ticks(ax.yaxis.get_majorticklocs())  # sets the offset the axis would draw
    assert formatter.get_offset() == ""
    assert all(float(label.replace("\N{MINUS SIGN}", "-")) > 70 for label in labels)  # the values, not offsets from one
    low, high = ax.get_ylim()
    assert high - low >= report.MIN_GRID_SPAN_POINTS


def test_method_sets_expand_in_order_without_repeats():
    from mergesmith.bench.grids import METHOD_SETS, expand_method_sets

    assert expand_method_sets(["ties", "default"]) == ["ties"] + [m for m in METHOD_SETS["default"] if m != "ties"]
    assert expand_method_sets(["papers"])[-1] == "wemoe"
    assert expand_method_sets(["regmean"]) == ["regmean"]


def test_a_method_set_takes_no_parameters():
    import pytest

    from mergesmith.bench.run import check_method_sets
    from mergesmith.errors import MergesmithError

    assert check_method_sets({"default": {}, "ties": {"density": 0.3}}) == {"ties": {"density": 0.3}}
    with pytest.raises(MergesmithError, match="papers is a set of methods and takes no parameters"):
        check_method_sets({"papers": {"lambda": 1.0}})


def test_the_cli_offers_every_protocol():
    from mergesmith.bench.finetune import PROTOCOLS
    from mergesmith.commands.data import bench

    option = next(p for p in bench.params if p.name == "protocol")
    assert tuple(option.type.choices) == PROTOCOLS

"""criterion "auto" (the default, onnxprune/autoselect.py): of contribution and sensitivity, the ranking that
saves more at equal output damage on calibration samples."""

import numpy as np
import pytest

import onnxprune
from onnxprune import autoselect
from onnxprune.autoselect import compare, compare_at
from conftest import make_mlp, random_inputs
from test_sensitivity import two_branches


def test_the_walk_that_saves_more_at_equal_damage_wins():
    cheap = [(0.1, 0.2, 0.001), (0.2, 0.5, 0.002), (0.35, 0.7, 0.01)]
    costly = [(0.1, 0.1, 0.001), (0.2, 0.3, 0.002), (0.35, 0.5, 0.01)]
    figures = compare({"contribution": costly, "sensitivity": cheap})
    assert figures["sensitivity"] > figures["contribution"]
    # saving the same at lower damage also wins: the same steps, each at a tenth of the damage
    figures = compare({"contribution": [(f, s, d / 10) for f, s, d in costly], "sensitivity": costly})
    assert figures["contribution"] > figures["sensitivity"]


def test_damage_is_taken_non_decreasing_and_levels_stop_at_the_lower_top():
    # a walk whose damage dips after a bad step is judged by the worst damage so far
    dipping = [(0.1, 0.3, 0.5), (0.2, 0.6, 0.001)]
    steady = [(0.1, 0.2, 0.001), (0.2, 0.4, 0.002)]
    figures = compare({"contribution": steady, "sensitivity": dipping})
    # levels: 0, 0.001, 0.002 (the dipping walk's 0.5 is above the steady walk's top): dipping saves 0 there
    assert figures["sensitivity"] == 0.0
    assert figures["contribution"] == pytest.approx((0 + 0.2 + 0.4) / 3)


def test_at_a_fixed_amount_the_ranking_with_less_damage_there_wins():
    """The encoder of benchmarks/versus.py in small: `early` does less damage while little is removed, `late`
    more; compared over every damage level `late` wins, compared where the amount lands it depends."""
    early = [(0.1, 0.08, 0.0009), (0.2, 0.16, 0.0022), (0.35, 0.28, 0.0053), (0.5, 0.40, 0.0113), (0.7, 0.56, 0.0365)]
    late = [(0.1, 0.18, 0.0046), (0.2, 0.27, 0.0070), (0.35, 0.39, 0.0085), (0.5, 0.51, 0.0111), (0.7, 0.67, 0.0183)]
    overall = compare({"contribution": early, "sensitivity": late})
    assert overall["sensitivity"] > overall["contribution"]
    saving, low = compare_at({"contribution": early, "sensitivity": late}, 0.1)
    assert saving == pytest.approx(0.13)
    assert low["contribution"] == pytest.approx(0.0009 + (0.0022 - 0.0009) * 5 / 8)  # between its 0.08 and 0.16
    assert low["sensitivity"] == pytest.approx(0.0046 * 0.13 / 0.18)  # between the original and its 0.18
    assert low["contribution"] < low["sensitivity"]
    saving, high = compare_at({"contribution": early, "sensitivity": late}, 0.5)
    assert saving == pytest.approx(0.455) and high["sensitivity"] < high["contribution"]
    # a walk that never saves that much is infinitely damaging there
    _, short = compare_at({"contribution": early[:1], "sensitivity": [(0.1, 0.5, 0.01)]}, 0.1)
    assert short["contribution"] == float("inf") and np.isfinite(short["sensitivity"])


def test_auto_takes_sensitivity_where_one_branch_barely_reaches_the_output():
    """Branch b's consumer output is scaled by 0.01 before the model's output: removing its neurons costs the
    outputs almost nothing, which sensitivity measures and contribution (a share within each layer) cannot."""
    model = two_branches()
    feeds = {"x": np.random.default_rng(1).standard_normal((400, 8)).astype(np.float32)}
    report = onnxprune.prune(model, feeds, fraction=0.4, holdout=0, compensation="fold").report
    chosen = report.settings["criterion_chosen"]
    assert report.settings["criterion"] == "auto"
    assert chosen["criterion"] == "sensitivity", chosen
    figures = chosen["damage_at_equal_saving"]  # a fixed amount: compared where it lands
    assert figures["sensitivity"] < figures["contribution"]
    assert [p[0] for p in chosen["curves"]["sensitivity"]] == sorted({*autoselect.AUTO_FRACTIONS, 0.4})
    same = onnxprune.prune(model, feeds, fraction=0.4, holdout=0, compensation="fold", criterion="sensitivity")
    assert {g.id: g.neurons_after for g in report.groups} == {g.id: g.neurons_after for g in same.report.groups}
    assert "auto (sensitivity)" in report.format_table()


def test_above_the_size_limit_nothing_is_probed_and_contribution_ranks(monkeypatch):
    model = make_mlp([6, 24, 16, 4], seed=3)
    feeds = random_inputs(model, n=200, seed=1)
    monkeypatch.setattr(autoselect, "AUTO_MAX_PARAMETERS", 10)
    probed = []
    monkeypatch.setattr("onnxprune.sensitivity.gains", lambda *a, **k: probed.append(1) or {})
    report = onnxprune.prune(model, feeds, fraction=0.3, holdout=0).report
    chosen = report.settings["criterion_chosen"]
    assert chosen["criterion"] == "contribution" and "above 10 parameters" in chosen["reason"]
    assert not probed
    plain = onnxprune.prune(model, feeds, fraction=0.3, holdout=0, criterion="contribution").report
    assert {g.id: g.neurons_after for g in report.groups} == {g.id: g.neurons_after for g in plain.groups}


def test_each_fold_chooses_on_the_samples_its_statistics_came_from(monkeypatch):
    """Cross-fitting: a fold's candidates are judged on samples no decision of theirs used, the choice of
    ranking included: every probe of a fold's builder runs on the other folds' samples only."""
    model = make_mlp([6, 24, 16, 4], seed=3)
    feeds = random_inputs(model, n=240, seed=1)
    x = feeds[next(iter(feeds))]
    seen = []
    original = autoselect.choose

    def spy(selector, probe, macs, per_cost):
        seen.append(probe.data.n_samples)
        return original(selector, probe, macs, per_cost)

    monkeypatch.setattr(autoselect, "choose", spy)
    report = onnxprune.prune(model, feeds, metric="cosine", min_cosine=0.5, folds=3).report
    assert len(x) == 240
    assert sorted(seen) == [160, 160, 160, 240]  # three folds' complements, then the written model's data
    assert sum(report.settings["criterion_chosen"]["folds"].values()) == 3  # what each fold took, reported


def test_a_sweep_says_which_ranking_auto_took():
    model = two_branches()
    feeds = {"x": np.random.default_rng(1).standard_normal((400, 8)).astype(np.float32)}
    result = onnxprune.sweep(model, feeds, grid=[0.0, 0.2, 0.4], metric="cosine", holdout=0.5)
    assert result.choice is not None and result.choice.criterion == "sensitivity"
    assert result.to_dict()["criterion_chosen"]["criterion"] == "sensitivity"
    assert result.format_table().startswith("criterion auto (sensitivity), refit")

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.criteria import (CRITERIA, GroupEvidence, keep_masks, masks_below, masks_for_fraction,
                                register, scores_of)
from onnxprune.stats import ActivationStats


def evidence(seed=0, sizes=(20, 12, 7)):
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        a = np.maximum(rng.standard_normal((200, n)) * rng.random(n) * 3 + rng.standard_normal(n), 0)
        out[f"g{i}"] = GroupEvidence(None, ActivationStats.of(a), [rng.standard_normal((n, 5))])
    return out


def test_cli_choices_come_from_the_registry():
    help_text = CliRunner().invoke(main, ["prune", "--help"]).output
    choices = help_text.split("--criterion [")[1].split("]")[0].split("|")
    assert sorted(choices) == sorted(CRITERIA)
    assert {"seed", "contribution", "apoz", "variance", "dead"} <= set(CRITERIA)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register("seed")(lambda e: e)


def test_seed_score_below_one_is_exactly_the_seed_rule():
    ev = evidence()
    for mt, st in [(0.1, 0.4), (0.5, 1.0), (0.0, 2.0)]:
        masks = masks_below(scores_of(ev, "seed", mean_threshold=mt, std_threshold=st), 1.0)
        for name, e in ev.items():
            removed = (np.abs(e.stats.mean) < mt) & (e.stats.std < st)
            if removed.all():
                continue  # never_empty keeps one
            np.testing.assert_array_equal(masks[name], ~removed)
    # the stats-only helper agrees
    stats = {n: e.stats for n, e in ev.items()}
    m = keep_masks(stats, "seed", mean_threshold=0.5, std_threshold=1.0)
    assert all(np.array_equal(m[n], masks_below(scores_of(ev, "seed", mean_threshold=0.5, std_threshold=1.0), 1)[n])
               for n in ev)


def test_relative_thresholds_scale_with_the_layer():
    ev = evidence()
    scaled = {n: GroupEvidence(None, ActivationStats(e.stats.count, e.stats.mean * 10, e.stats.m2 * 100,
                                                     e.stats.zeros, e.stats.max_abs * 10), e.weights)
              for n, e in ev.items()}
    a = masks_below(scores_of(ev, "seed", mean_threshold=0.3, std_threshold=0.3, relative=True), 1.0)
    b = masks_below(scores_of(scaled, "seed", mean_threshold=0.3, std_threshold=0.3, relative=True), 1.0)
    assert all(np.array_equal(a[n], b[n]) for n in ev)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_stricter_settings_never_keep_more(criterion):
    scores = scores_of(evidence(3), criterion)
    previous = None
    for f in np.linspace(0, 0.95, 12):
        masks = masks_for_fraction(scores, f)
        assert all(m.any() for m in masks.values())  # no group emptied
        if previous is not None:
            for n in masks:
                assert not (masks[n] & ~previous[n]).any()  # kept set only shrinks
        previous = masks
    previous = None
    for t in sorted({0.0, *np.quantile(np.concatenate(list(scores.values())), [0.1, 0.5, 0.9])}):
        masks = masks_below(scores, t)
        if previous is not None:
            for n in masks:
                assert not (masks[n] & ~previous[n]).any()
        previous = masks


def test_fraction_is_global_and_counts_neurons():
    scores = {"a": np.array([0.1, 0.2, 5.0, 6.0]), "b": np.array([0.05, 3.0])}
    masks = masks_for_fraction(scores, 0.5)  # remove 3 of 6: the three lowest anywhere
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].tolist() == [False, True]
    masks = masks_for_fraction({"a": np.array([1.0, 2.0])}, 0.99)
    assert masks["a"].tolist() == [False, True]  # the best neuron of a group is never a candidate


def test_contribution_weighs_outgoing_weights():
    stats = ActivationStats.of(np.random.default_rng(0).standard_normal((100, 3)))
    w = np.array([[1.0, 0.0], [0.0, 0.01], [1.0, 1.0]])
    s = CRITERIA["contribution"](GroupEvidence(None, stats, [w]))
    assert s[1] < s[0] < s[2]
    assert s.sum() == pytest.approx(1.0)


def test_apoz_ranks_by_how_often_active():
    a = np.zeros((10, 3))
    a[:2, 0] = 1
    a[:, 1] = 1
    a[:5, 2] = 1
    s = CRITERIA["apoz"](GroupEvidence(None, ActivationStats.of(a), []))
    np.testing.assert_allclose(s, [0.2, 1.0, 0.5])


def test_coupled_evidence_sums_every_consumer_with_its_own_tap_variance():
    """A neuron read at two taps (before and after a residual Add) by two consumers."""
    stats = ActivationStats.of(np.random.default_rng(0).standard_normal((50, 3)))
    var = [np.array([1.0, 0.0, 4.0]), np.array([0.0, 1.0, 1.0])]
    sq = [np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 0.0])]
    e = GroupEvidence(None, stats, [np.ones((3, 2)), np.ones((3, 2))], sq, var)
    np.testing.assert_allclose(CRITERIA["contribution"](e), np.array([1.0, 2.0, 4.0]) / 7)
    # consumer_share: 1/5, 0, 4/5 at the first consumer; 0, 1, 0 at the second
    np.testing.assert_allclose(CRITERIA["consumer_share"](e), [0.2, 1.0, 0.8])
    single = GroupEvidence(None, stats, [np.ones((3, 2))], sq[:1], var[:1])
    np.testing.assert_allclose(CRITERIA["consumer_share"](single), CRITERIA["contribution"](single))

"""The confidence bounds: exact where the evidence is a count, and how close where it is a mean."""

import math

import numpy as np
import pytest

from onnxprune.bounds import (betainc, binomial_lower, binomial_upper, drop_samples_needed, mean_upper,
                              mixed_drop_upper, paired_coverage, paired_drop_score_upper, paired_drop_upper,
                              paired_drop_upper_betting, paired_drop_upper_bonferroni, samples_needed, t_quantile,
                              weighted_drop_upper)


def test_incomplete_beta_and_t_quantiles_match_known_values():
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - sum_{k<2} C(4,k) .4^k .6^(4-k)
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)
    assert t_quantile(0.95, 1) == pytest.approx(6.313751514675, rel=1e-9)
    assert t_quantile(0.95, 30) == pytest.approx(1.697260886594, rel=1e-9)
    assert binomial_upper(0, 300, 0.05) == pytest.approx(1 - 0.05 ** (1 / 300))
    assert binomial_lower(300, 300, 0.05) == pytest.approx(0.05 ** (1 / 300))


@pytest.mark.parametrize("n", [50, 300])
@pytest.mark.parametrize("rate", [0.0, 0.004, 0.02, 0.1])
def test_flip_bound_covers_the_true_rate_at_least_as_often_as_stated(n, rate):
    rng = np.random.default_rng(int(rate * 1000) + n)
    bounds = np.array([binomial_upper(k, n, 0.05) for k in range(n + 1)])  # every possible outcome
    flips = rng.binomial(n, rate, size=4000)
    assert (bounds[flips] >= rate).mean() >= 0.95


RATES = [0.0, 0.003, 0.01, 0.03, 0.1]  # break and fix rates: rare, near-equal, none, large


def adversarial(bound, n, alpha, fixes=(0.0, 0.01, 0.05), outcomes=((0, 0), (1, 0), (2, 1), (3, 3), (1, 2))):
    """True drops placed just above a bound's value at likely outcomes: where exact coverage dips lowest.

    Also with no breaks (p = 0) and many fixes, where the exact bound's supremum sits at the edge of the
    fix rates that keep an outcome likely (a grid over q alone once missed it: coverage 0.8905 at 90 %)."""
    points = []
    for q in fixes:
        for b, f in outcomes:
            p = q + bound(b, f, n, alpha) + 1e-9
            if 0 <= p <= 1 - q:
                points.append((p, q))
    for f in (2, 5, int(0.02 * n) + 3, int(0.05 * n) + 4):
        q = -bound(0, f, n, alpha) - 1e-9
        if 0 < q < 1:
            points.append((0.0, q))
    return points


@pytest.mark.parametrize("n, alpha", [(30, 0.05), (30, 0.1), (100, 0.05),
                                      pytest.param(100, 0.1, marks=pytest.mark.slow)])
def test_paired_drop_bound_covers_every_rate_exactly(n, alpha):
    """Coverage by enumeration of every likely outcome (no Monte Carlo error), on a grid of break and fix
    rates and just above the bound's own values, where coverage is lowest."""
    points = [(p, q) for p in RATES for q in RATES] + adversarial(paired_drop_upper, n, alpha)
    coverage = [paired_coverage(paired_drop_upper, p, q, n, alpha) for p, q in points]
    assert min(coverage) >= 1 - alpha - 1e-9
    assert min(coverage) < 1 - alpha + 0.01  # tight: not the Bonferroni bound's 2 % to spare


def test_coverage_by_enumeration_matches_simulation_and_catches_an_invalid_bound():
    rng = np.random.default_rng(1)
    n, p, q = 100, 0.005, 0.05
    counts = rng.multinomial(n, [p, q, 1 - p - q], size=20_000)
    seen = {(b, f): paired_drop_score_upper(int(b), int(f), n, 0.05) for b, f in {(b, f) for b, f, _ in counts}}
    simulated = np.mean([seen[(b, f)] >= p - q for b, f, _ in counts])
    exact = paired_coverage(paired_drop_score_upper, p, q, n, 0.05)
    assert abs(simulated - exact) < 4 * math.sqrt(exact * (1 - exact) / len(counts))
    assert exact < 0.93  # Tango's score bound alone (the order the exact bound uses) is not valid


@pytest.mark.parametrize("rates", [[(0.01, 0.0)], pytest.param([(0.02, 0.01), (0.005, 0.02), (0.05, 0.03)],
                                                                 marks=pytest.mark.slow)])
def test_paired_drop_bound_covers_in_simulation(rates):
    """A seeded simulation on 300 samples, as the bound is used: coverage within Monte Carlo error of >= 95 %."""
    rng = np.random.default_rng(1)
    n = 300
    for p_break, p_fix in rates:
        counts = rng.multinomial(n, [p_break, p_fix, 1 - p_break - p_fix], size=3000)
        bound = {(b, f): paired_drop_upper(int(b), int(f), n, 0.05) for b, f in {(b, f) for b, f, _ in counts}}
        covered = np.mean([bound[(b, f)] >= p_break - p_fix for b, f, _ in counts])
        assert covered >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 3000)


def test_paired_drop_bound_is_narrower_than_bonferroni_and_betting():
    for n, b, f in [(300, 0, 0), (500, 0, 0), (500, 3, 3), (500, 10, 12), (1000, 6, 2), (3000, 30, 30)]:
        exact = paired_drop_upper(b, f, n, 0.05)
        assert exact < paired_drop_upper_bonferroni(b, f, n, 0.05)
        assert exact < paired_drop_upper_betting(b, f, n, 0.05)
    assert paired_drop_upper_bonferroni(0, 0, 500, 0.05) == pytest.approx(0.00735, abs=1e-5)  # onnxprune 0.2
    assert paired_drop_upper_bonferroni(10, 12, 500, 0.05) == pytest.approx(0.0240, abs=1e-4)
    assert paired_drop_upper(10, 12, 500, 0.05) < 0.0126
    assert paired_drop_upper(3, 3, 500, 0.05) < 0.0097


@pytest.mark.parametrize("n", [1, 10, 500, 3000, 10_000_000])
def test_identical_model_gets_the_least_any_valid_bound_can_give(n):
    """No valid bound can go below 1 - alpha^(1/n) for no break and no fix (a model that breaks at that
    rate and fixes nothing shows none with probability alpha); this one pays 1/1000 of alpha above it."""
    assert paired_drop_upper(0, 0, n, 0.05) == pytest.approx(1 - (0.05 * 0.999) ** (1 / n), rel=1e-6, abs=2e-7)


def test_paired_drop_bound_grows_with_breaks_and_falls_with_fixes():
    n = 60
    table = np.array([[paired_drop_upper(b, f, n, 0.05) if b + f <= n else np.nan for f in range(12)]
                      for b in range(12)])
    assert np.all(np.diff(table, axis=0)[~np.isnan(np.diff(table, axis=0))] > 0)
    assert np.all(np.diff(table, axis=1)[~np.isnan(np.diff(table, axis=1))] < 0)
    assert paired_drop_upper(n, 0, n, 0.05) == 1.0 and paired_drop_upper(0, 0, 0, 0.05) == 1.0
    with pytest.raises(ValueError):
        paired_drop_upper(40, 30, n, 0.05)


@pytest.mark.slow
# n = 1000, n = 3000 at 90 % and more rates: benchmarks/bounds_width.py (35 s each here at n = 3000)
@pytest.mark.parametrize("n, alpha", [(300, 0.05), (300, 0.1), (3000, 0.05)])
def test_paired_drop_bound_covers_every_rate_exactly_on_more_samples(n, alpha):
    rates = [0.0, 0.002, 0.01] + ([0.03] if n < 3000 else [])
    points = [(p, q) for p in rates for q in rates] + adversarial(paired_drop_upper, n, alpha, fixes=(0.0, 0.01))
    assert min(paired_coverage(paired_drop_upper, p, q, n, alpha) for p, q in points) >= 1 - alpha - 1e-9


def mixed_coverage(n_labeled, n_unlabeled, p_break, p_fix, p_other, alpha, runs, rng):
    """Simulated coverage of mixed_drop_upper; unlabeled samples flip when they break, are fixed, or
    move from one wrong class to another (p_other)."""
    labeled = rng.multinomial(n_labeled, [p_break, p_fix, 1 - p_break - p_fix], size=runs)
    flips = rng.binomial(n_unlabeled, p_break + p_fix + p_other, size=runs)
    bounds = [mixed_drop_upper(int(b), int(f), n_labeled, int(k), n_unlabeled, alpha)
              for (b, f, _), k in zip(labeled, flips)]
    return float(np.mean(np.array(bounds) >= p_break - p_fix))


def test_mixed_evidence_bound_covers_and_uses_the_unlabeled_samples():
    rng = np.random.default_rng(5)
    # flips exactly as rare as breaks (the least the unlabeled samples can show): the hardest case for it
    coverage = mixed_coverage(100, 400, 0.01, 0.0, 0.0, 0.05, 1000, rng)
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 1000)
    assert mixed_drop_upper(3, 3, 500, 0, 5000, 0.05) < 0.2 * paired_drop_upper(3, 3, 500, 0.05)
    assert mixed_drop_upper(3, 3, 500, 200, 5000, 0.05) == paired_drop_upper(3, 3, 500, 0.8 * 0.05)
    assert mixed_drop_upper(3, 3, 500, 7, 0, 0.05) == paired_drop_upper(3, 3, 500, 0.05)
    assert mixed_drop_upper(0, 0, 0, 0, 1000, 0.05) == binomial_upper(0, 1000, 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("p_break, p_fix, p_other", [(0.004, 0.0, 0.0), (0.01, 0.005, 0.0), (0.003, 0.003, 0.01)])
def test_mixed_evidence_bound_covers_on_more_samples(p_break, p_fix, p_other):
    coverage = mixed_coverage(200, 1000, p_break, p_fix, p_other, 0.05, 1000, np.random.default_rng(6))
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 1000)


def test_samples_needed_for_a_candidate_is_where_its_rates_would_pass():
    n = drop_samples_needed(6, 2, 1000, 0.005, 0.05)
    assert paired_drop_upper(round(0.006 * n), round(0.002 * n), n, 0.05) <= 0.005
    assert paired_drop_upper(round(0.006 * 0.9 * n), round(0.002 * 0.9 * n), int(0.9 * n), 0.05) > 0.005
    assert drop_samples_needed(6, 0, 1000, 0.005, 0.05) is None  # observed 0.6 pp: never within 0.5 pp
    assert drop_samples_needed(0, 0, 1000, 0.005, 0.05) == samples_needed(0.005, 0.05)


def test_balanced_drop_bound_covers_a_rare_class():
    rng = np.random.default_rng(2)
    counts = np.array([255, 45])  # 15 % positives
    p_break, p_fix = np.array([0.002, 0.04]), np.array([0.004, 0.0])
    true = float((p_break - p_fix).mean())
    covered = []
    for _ in range(400):
        broken = rng.binomial(counts, p_break)
        fixed = rng.binomial(counts - broken, p_fix / (1 - p_break))
        covered.append(weighted_drop_upper(broken, fixed, counts, 0.05, draws=4000) >= true)
    assert np.mean(covered) >= 0.95


def skewed(rng, n):
    """Per-sample losses like a pruned model's: most small, one in ten much larger."""
    return np.where(rng.random(n) < 0.1, rng.exponential(0.05, n), rng.exponential(0.002, n))


def test_skewness_correction_brings_the_mean_bound_near_its_stated_coverage():
    """Losses skewed like these make the plain t bound cover far less than 95 %; Hall's correction
    comes close (the bound on a mean is approximate: no range is known)."""
    rng = np.random.default_rng(3)
    true = 0.1 * 0.05 + 0.9 * 0.002
    plain, corrected = [], []
    for _ in range(1500):
        x = skewed(rng, 150)
        s1, s2, s3 = x.sum(), (x * x).sum(), (x**3).sum()
        plain.append(mean_upper(s1, s2, 150, 0.05) >= true)
        corrected.append(mean_upper(s1, s2, 150, 0.05, s3) >= true)
    assert np.mean(plain) < 0.9
    assert np.mean(corrected) >= 0.93


def test_samples_needed_is_the_first_n_whose_empty_bound_fits():
    n = samples_needed(0.005, 0.05)
    assert paired_drop_upper(0, 0, n, 0.05) <= 0.005 < paired_drop_upper(0, 0, n - 1, 0.05)
    assert n == 598  # as a flip count's Clopper-Pearson floor; 736 with the Bonferroni split
    assert samples_needed(0.0, 0.05) is None
    assert math.isinf(mean_upper(1.0, 1.0, 1, 0.05))

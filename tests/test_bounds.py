"""The confidence bounds: exact where the evidence is a count, and how close where it is a mean."""

import math

import numpy as np
import pytest

from onnxprune.bounds import (betainc, binomial_lower, binomial_upper, mean_upper, paired_drop_upper, samples_needed,
                              t_quantile, weighted_drop_upper)


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


def test_paired_drop_bound_covers_break_minus_fix():
    rng = np.random.default_rng(1)
    n = 300
    for p_break, p_fix in [(0.01, 0.0), (0.02, 0.01), (0.005, 0.02), (0.05, 0.03)]:
        counts = rng.multinomial(n, [p_break, p_fix, 1 - p_break - p_fix], size=3000)
        seen = {(b, f) for b, f, _ in counts}
        bound = {(b, f): paired_drop_upper(int(b), int(f), n, 0.05) for b, f in seen}
        covered = [bound[(b, f)] >= p_break - p_fix for b, f, _ in counts]
        assert np.mean(covered) >= 0.95


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
    assert binomial_upper(0, n, 0.05) <= 0.005 < binomial_upper(0, n - 1, 0.05)
    assert samples_needed(0.0, 0.05) is None
    assert math.isinf(mean_upper(1.0, 1.0, 1, 0.05))

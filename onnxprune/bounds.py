"""One-sided confidence bounds for the loss of a pruned model, from paired per-sample evidence.

Counts (flips, samples a candidate breaks or fixes, samples whose score moves too much) get
exact Clopper-Pearson bounds. Means of continuous per-sample losses (1 - cosine, per-channel
squared error) cannot have a distribution-free bound without a known range, so they get an
approximate one: Student's t with Hall's (1992) correction for skewness, because such losses are
skewed to the right (most samples barely change, a few change a lot) and the plain t bound then
covers the true mean far less often than it claims (measured in tests/test_bounds.py). Everything
streams: counts, or sums of powers. Distributions come from scipy.special (no hand-written special
functions).
"""

from __future__ import annotations

import math
from functools import lru_cache
import numpy as np
from scipy import special


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    return float(special.betainc(a, b, min(max(x, 0.0), 1.0)))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(special.bdtr(k, n, p))


@lru_cache(maxsize=4096)
def binomial_upper(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson one-sided upper bound on a rate p after k events in n trials: P(X <= k | p) = alpha."""
    if n <= 0 or k >= n:
        return 1.0
    # the (1 - alpha) quantile of Beta(k + 1, n - k); special.betaincinv is ~25x faster than stats.beta.ppf
    return float(special.betaincinv(k + 1, n - k, 1.0 - alpha))


def binomial_lower(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson one-sided lower bound: P(X >= k | p) = alpha (0 when k = 0)."""
    if n <= 0 or k <= 0:
        return 0.0
    if k >= n:
        return alpha ** (1.0 / n)
    return float(special.betaincinv(k, n - k + 1, alpha))


@lru_cache(maxsize=256)
def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (q > 0.5)."""
    if df <= 0:
        return math.inf
    return float(special.stdtrit(df, q))


def paired_drop_upper(broken: int, fixed: int, n: int, alpha: float) -> float:
    """Upper bound on P(break) - P(fix) from paired evidence: each side at alpha/2 (Bonferroni)."""
    return binomial_upper(broken, n, alpha / 2) - binomial_lower(fixed, n, alpha / 2)


def mean_upper(total: float, total_sq: float, n: int, alpha: float, total_cube: float | None = None) -> float:
    """Upper bound on the mean of per-sample values from their sums of powers (approximate).

    Student's t, corrected for skewness by Hall's transformation when the sum of cubes is given:
    g(t) = t + a t^2 / 3 + a^2 t^3 / 27 + a / 6 with a = skewness / sqrt(n) makes the studentised
    mean closer to normal; the bound is mean - s / sqrt(n) * g^-1(-q).
    """
    if n <= 1:
        return math.inf
    mean = total / n
    var = max(total_sq - n * mean * mean, 0.0) / (n - 1)
    sd = math.sqrt(var)
    q = t_quantile(1.0 - alpha, n - 1)
    if total_cube is None or sd == 0.0:
        return mean + q * sd / math.sqrt(n)
    third = total_cube / n - 3 * mean * total_sq / n + 2 * mean**3  # central third moment
    a = third / sd**3 / math.sqrt(n)
    if abs(a) < 1e-12:
        t = -q
    else:
        t = 3.0 / a * (np.cbrt(1.0 + a * (-q - a / 6.0)) - 1.0)
    return mean - t * sd / math.sqrt(n)


def weighted_drop_upper(broken: np.ndarray, fixed: np.ndarray, counts: np.ndarray, alpha: float,
                        draws: int = 20_000, seed: int = 0) -> float:
    """Upper bound on the mean over classes of (P(break | class) - P(fix | class)).

    Balanced accuracy's drop: each class's break rate is drawn from Beta(b + 1, n - b) and its fix
    rate from Beta(f, n - f + 1) (the distributions whose quantiles are the Clopper-Pearson bounds),
    and the (1 - alpha) quantile of the mean difference is taken. Classes without samples are left out.
    """
    keep = counts > 0
    broken, fixed, counts = broken[keep], fixed[keep], counts[keep]
    if not len(counts):
        return math.inf
    rng = np.random.default_rng(seed)
    p_break = rng.beta(broken + 1.0, np.maximum(counts - broken, 1e-9), size=(draws, len(counts)))
    p_fix = np.where(fixed > 0, rng.beta(np.maximum(fixed, 1e-9), counts - fixed + 1.0, size=(draws, len(counts))), 0.0)
    return float(np.quantile((p_break - p_fix).mean(axis=1), 1.0 - alpha))


def samples_needed(budget: float, alpha: float) -> int | None:
    """How many samples a count-based bound needs before an identical model (no event) passes `budget`."""
    if budget <= 0:
        return None
    if budget >= 1:
        return 1
    return int(math.ceil(math.log(alpha) / math.log1p(-budget)))

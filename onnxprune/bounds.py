"""One-sided confidence bounds for the loss of a pruned model, from paired per-sample evidence.

Counts of one kind (flips, samples whose score moves too much) get exact Clopper-Pearson bounds.
The accuracy drop, P(break) - P(fix) from the samples a candidate breaks and those it fixes, gets an
exact bound of the difference itself with the whole risk on one side (paired_drop_upper; 0.6-0.8 times
the width of the Bonferroni split it replaces; docs/bounds.md compares methods and their coverage).
Means of continuous per-sample losses (1 - cosine, per-channel squared error) get an approximate
bound: Student's t with Hall's (1992) correction for skewness, because such losses are skewed to the
right (most samples barely change, a few change a lot) and the plain t bound then covers the true
mean far less often than it claims (measured in tests/test_bounds.py); a valid bound for values in
[0, 2] (betting) is 7-13 times wider at the losses pruning gives. Everything streams: counts, or sums
of powers. Distributions come from scipy.special (no hand-written special functions).
"""

from __future__ import annotations

import math
from functools import lru_cache
import numpy as np
from scipy import optimize, special


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


def paired_drop_upper_bonferroni(broken: int, fixed: int, n: int, alpha: float) -> float:
    """Upper bound on P(break) - P(fix): Clopper-Pearson on each side at alpha/2 (Bonferroni; valid, loose).

    onnxprune 0.2's bound, kept to compare with (benchmarks/bounds_width.py)."""
    return binomial_upper(broken, n, alpha / 2) - binomial_lower(fixed, n, alpha / 2)


# ---------------------------------------------------------------- paired drop: an exact (Buehler) bound
#
# A candidate breaks each sample with probability p and fixes it with probability q (a trinomial); the
# drop is p - q. The bound orders the outcomes (b, f) by an approximate bound, Tango's (1998) score bound,
# and returns the largest p - q under which the observed outcome or a lower-ranked one is still at least
# alpha likely (Buehler 1957; Lloyd & Kabaila 2003): exact for every (p, q), the whole risk on the one side.
# The nuisance q is searched over a confidence set for it at level _NUISANCE * alpha (Berger & Boos 1994),
# which keeps the search local (and fast) and costs 0.1 % of alpha.

_NUISANCE = 1e-3  # share of alpha spent on the confidence set of the fix rate
_TOLERANCE = 1e-7  # added to the numerical supremum, against rounding


def _score_z(b, f, n: int, t: float):
    """Tango's score statistic for H: p - q = t (vectorised over b and f): (b - f - nt) / its null sd."""
    b, f = np.asarray(b, float), np.asarray(f, float)
    r = n - b - f
    lin = -(b * (1 - t) + f * (1 - 3 * t) - 2 * r * t)
    const = -f * t * (1 - t)
    q = (np.sqrt(np.maximum(lin * lin - 8 * n * const, 0.0)) - lin) / (4 * n)  # restricted MLE of q
    q = np.clip(q, max(0.0, -t), max((1 - t) / 2, 0.0))
    sd = np.sqrt(n * np.maximum(2 * q + t * (1 - t), 0.0))
    diff = b - f - n * t
    degenerate = np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0))  # no variance: 0 or +-inf
    return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), degenerate)


def paired_drop_score_upper(broken: int, fixed: int, n: int, alpha: float) -> float:
    """Tango's score upper bound on P(break) - P(fix) (approximate: the order of outcomes, not a guarantee)."""
    if n <= 0 or broken >= n:
        return 1.0
    z = float(special.ndtri(1 - alpha))
    lo, hi = (broken - fixed) / n, 1.0 - 1e-15
    if _score_z(broken, fixed, n, hi) + z >= 0:
        return 1.0
    return float(optimize.brentq(lambda t: float(_score_z(broken, fixed, n, t)) + z, lo, hi, xtol=1e-14))


class _Outcomes:
    """The outcomes ranked at or below (broken, fixed) by the score bound: for each f, b <= frontier[f]."""

    def __init__(self, broken: int, fixed: int, n: int, alpha: float, fmax: int):
        self.n = n
        z = float(special.ndtri(1 - alpha))
        t0 = min(paired_drop_score_upper(broken, fixed, n, alpha) + 1e-12, 1.0)  # (broken, fixed) itself in
        fs = np.arange(fmax + 1)
        # largest b in [0, n - f] whose statistic at t0 is <= -z (it grows with b): integer bisection
        lo, hi = np.full(fmax + 1, -1), n - fs
        while np.any(lo < hi):
            mid = (lo + hi + 1) // 2
            inside = _score_z(np.maximum(mid, 0), fs, n, t0) <= -z + 1e-9
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid - 1)
        keep = lo >= 0  # f with no outcome in the set contribute nothing
        self.fs, self.frontier = fs[keep], lo[keep]
        self.full = self.frontier >= n - self.fs  # every b counts: P(b <= frontier | f) = 1
        self.log_choose = special.gammaln(n + 1) - special.gammaln(self.fs + 1) - special.gammaln(n - self.fs + 1)
        self.fmax = fmax

    def probability_at(self, q: float):
        """P(outcome ranked at or below the observed one | p, q) as a function of p, rounded up."""
        n, fs = self.n, self.fs
        pmf = np.exp(self.log_choose + special.xlogy(fs, q) + special.xlog1py(n - fs, -q))
        beyond = float(special.bdtrc(self.fmax, n, q)) if self.fmax < n else 0.0  # f past fmax: counted in
        certain = float(pmf[self.full].sum()) + beyond
        w, k, m = pmf[~self.full], self.frontier[~self.full], n - fs[~self.full]

        def probability(p):
            ratio = min(p / (1 - q), 1.0) if q < 1 else 1.0
            return certain + float(w @ special.bdtr(k, m, ratio))

        return probability

    def largest_break_rate(self, q: float, level: float, low: float = 0.0) -> float | None:
        """The largest p (<= 1 - q) at which the probability still exceeds `level`, rounded up; None if none.

        `low`: a p known to exceed `level` (the answer at a smaller q), to start the search from."""
        probability = self.probability_at(q)
        top = 1.0 - q
        low = min(low, top)
        if probability(low) <= level:  # low > 0 was rounded up at a smaller q: the answer is at most low
            return None if low <= 0.0 else low
        if probability(top) > level:
            return top
        high = min(low + 0.01, top)
        while high < top and probability(high) > level:
            low, high = high, min(high + 2 * (high - low), top)
        root = optimize.brentq(lambda p: probability(p) - level, low, high, xtol=1e-12)
        return min(root + 2e-12 + 4 * np.finfo(float).eps * root, top)


@lru_cache(maxsize=65536)
def paired_drop_upper(broken: int, fixed: int, n: int, alpha: float) -> float:
    """Exact one-sided upper bound on P(break) - P(fix) from a candidate's breaks and fixes on n samples.

    P(true drop <= bound) >= 1 - alpha for every break and fix rate (no approximation; coverage computed
    exactly in tests/test_bounds.py and benchmarks/bounds_width.py): Buehler's bound under the order of
    Tango's score bound, with the fix rate searched over its own (1 - alpha/1000) confidence set
    (Berger-Boos). An identical model gets 1 - (0.999 alpha)^(1/n), essentially the least any valid
    bound can give (1 - alpha^(1/n)). Grows with `broken`, falls with `fixed`.
    """
    if n <= 0:
        return 1.0
    if broken < 0 or fixed < 0 or broken + fixed > n:
        raise ValueError(f"{broken} broken and {fixed} fixed out of {n} samples")
    return _buehler(broken, fixed, n, alpha, n)


def _buehler(broken: int, fixed: int, n: int, alpha: float, fix_trials: int) -> float:
    """The bound of paired_drop_upper; the fix rate's confidence set is from `fixed` out of `fix_trials`."""
    if broken >= n:
        return 1.0
    gamma = _NUISANCE * alpha
    level = alpha - gamma
    q_top = binomial_upper(fixed, fix_trials, gamma)
    fmax = int(min(n, math.ceil(n * q_top + 12 * math.sqrt(n * q_top) + 12)))
    outcomes = _Outcomes(broken, fixed, n, alpha, fmax)

    def drop(q, low=0.0):
        p = outcomes.largest_break_rate(q, level, low)
        return -2.0 if p is None else p - q  # -2: no break rate keeps the outcome likely at this q

    # The largest p - q over q in [0, q_top]: a smooth curve with a few broad local maxima (the fix count's
    # distribution moves across the frontier's steps). A grid at about half the fix count's standard
    # deviation finds them (measured on ten typical counts: each local maximum rose by at most 4e-5 when
    # refined, and none more than 1.2e-4 below the top overtook it); those within 2e-4 of the top are
    # refined by Brent's method. A rigorous branch and bound over q (the probability rises with q and
    # falls with p) gave the same values to 1e-8 but took 20-40 times longer, as the curve is nearly flat
    # near its top. The largest p grows with q: each grid search starts from the previous one.
    # Where even p = 0 leaves the outcome too unlikely (q small against many fixes), no p - q is in the
    # set; the supremum may then sit at the edge q_min of the feasible q, as p -> 0: -q_min, which a grid
    # would miss (the curve jumps there). The probability at p = 0 rises with q: q_min by root-finding.
    q_min, edge = 0.0, -2.0
    if outcomes.probability_at(0.0)(0.0) <= level:
        q_min = optimize.brentq(lambda q: outcomes.probability_at(q)(0.0) - level, 0.0, q_top, xtol=1e-13)
        q_min = max(q_min - 1e-12, 0.0)
        edge = -q_min
    steps = max(8, int(math.ceil(4 * math.sqrt(n * (q_top - q_min)))))
    grid = q_min + (q_top - q_min) * np.linspace(0.0, 1.0, steps + 1) ** 2
    values, low = np.empty(len(grid)), 0.0
    for i, q in enumerate(grid):
        values[i] = drop(q, low)
        low = max(low, values[i] + q)
    values[0] = max(values[0], edge)
    best = float(values.max())
    peaks = [i for i in range(len(grid)) if values[i] > -2.0 and values[i] >= best - 2e-4
             and (i == 0 or values[i] >= values[i - 1]) and (i == len(grid) - 1 or values[i] >= values[i + 1])]
    for i in peaks:
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        if hi > lo:
            found = optimize.minimize_scalar(lambda q: -drop(q), bounds=(lo, hi), method="bounded",
                                             options={"xatol": 1e-8})
            best = max(best, -float(found.fun))
    return float(min(best + _TOLERANCE, 1.0))


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
    """How many samples paired_drop_upper needs before an identical model (no break, no fix) passes `budget`.

    Its floor is 1 - (alpha (1 - 1/1000))^(1/n), one sample more than a flip count's Clopper-Pearson floor
    1 - alpha^(1/n) at most; checked against the bound itself."""
    if budget <= 0:
        return None
    if budget >= 1:
        return 1
    n = int(math.ceil(math.log(alpha * (1 - _NUISANCE)) / math.log1p(-budget)))
    while n > 1 and paired_drop_upper(0, 0, n - 1, alpha) <= budget:
        n -= 1
    while paired_drop_upper(0, 0, n, alpha) > budget:
        n += 1
    return n


def paired_drop_upper_betting(broken: int, fixed: int, n: int, alpha: float) -> float:
    """Betting upper bound on P(break) - P(fix) (Waudby-Smith & Ramdas 2023), for comparison: valid, wider.

    The capital of betting against "mean >= m" on X = (D + 1) / 2 in [0, 1], with a constant bet
    c / (1 - m), c uniform on (0, 1] (a mixture, so the result depends on the counts only), is a
    nonnegative martingale under the null; the bound is the least m whose capital reaches 1 / alpha.
    """
    return _betting_upper([(broken, 1.0), (fixed, -1.0), (n - broken - fixed, 0.0)], alpha)


_BETS = np.linspace(0.0, 1.0, 101)[1:]


def _betting_upper(counts: list, alpha: float, bets: np.ndarray = _BETS) -> float:
    """The least mean m in [-1, 1] at which a mixture over `bets` of constant bets against "mean of the
    values >= m" reaches 1/alpha, from (count, value) pairs of values in [-1, 1]: prod (1 + c (m - x) / (1 - m))."""
    counts = [(k, x) for k, x in counts if k > 0]
    target = math.log(1.0 / alpha)

    def log_capital(m):  # grows with m
        scale = bets / (1.0 - m)
        terms = sum(k * np.log(np.maximum(1.0 + scale * (m - x), 1e-300)) for k, x in counts)  # c = 1 may lose all
        return float(special.logsumexp(terms) - math.log(len(bets)))

    lo, hi = -1.0, 1.0 - 1e-12
    if log_capital(hi) < target:
        return 1.0
    if log_capital(lo) >= target:
        return -1.0
    return float(optimize.brentq(lambda m: log_capital(m) - target, lo, hi, xtol=1e-12)) + 1e-11


@lru_cache(maxsize=4096)
def mixed_drop_upper(broken: int, fixed: int, n_labeled: int, flips: int, n_unlabeled: int, alpha: float,
                     share: float = 0.8) -> float:
    """Upper bound on the accuracy drop from labeled and unlabeled samples of the same distribution.

    Labeled samples give breaks and fixes; unlabeled ones only whether the decision flipped, and a sample
    whose decision does not flip cannot break, so P(flip) >= P(break). The labeled bound at
    share * alpha and the pooled bound (every unlabeled flip counted as a break, no unlabeled fix) at the
    rest: the smaller. The pooled outcome is stochastically above one of n_labeled + n_unlabeled samples
    of the labeled distribution, so its Buehler bound under the same order stays valid (the fix rate's
    confidence set comes from the labeled samples alone). Unlabeled samples that rarely flip bound the
    drop far below what the labels alone can; when they flip often the labeled bound decides.
    """
    if n_unlabeled <= 0:
        return paired_drop_upper(broken, fixed, n_labeled, alpha)
    if n_labeled <= 0:
        return binomial_upper(flips, n_unlabeled, alpha)  # P(break) - P(fix) <= P(break) <= P(flip)
    labeled = paired_drop_upper(broken, fixed, n_labeled, share * alpha)
    pooled = _buehler(broken + flips, fixed, n_labeled + n_unlabeled, (1 - share) * alpha, n_labeled)
    return min(labeled, pooled)


EXACT_NEEDED_UP_TO = 20_000  # drop_samples_needed refines with the exact bound up to this many samples


def drop_samples_needed(broken: int, fixed: int, n: int, budget: float, alpha: float,
                        most: int = 10_000_000) -> int | None:
    """About how many samples paired_drop_upper needs for a candidate with these rates to pass `budget`.

    The observed break and fix rates are taken as the truth and scaled (counts rounded); None when the
    observed drop itself is over the budget or more than `most` samples would be needed. An estimate for
    a message ("0.5 pp would need about N samples"), not a promise: the counts on new data will vary.
    """
    rate_b, rate_f = broken / max(n, 1), fixed / max(n, 1)
    if rate_b - rate_f >= budget:
        return None

    def passes(m, bound):
        return bound(int(round(rate_b * m)), int(round(rate_f * m)), m, alpha) <= budget

    if not passes(most, paired_drop_score_upper):
        return None
    lo, hi = 1, most  # first with the score bound (fast), then the exact bound from there
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid, paired_drop_score_upper) else (mid + 1, hi)
    if lo > EXACT_NEEDED_UP_TO:
        # the exact bound costs seconds a call on that many samples (minutes for the search); the score
        # bound, nearly exact there, answers "about N samples" as well
        return lo
    hi = lo
    while not passes(hi, paired_drop_upper):
        lo, hi = hi, min(int(hi * 1.25) + 1, most)
        if lo == most:
            return None
    while lo < hi:  # bisection, assuming the bound falls with the number of samples (up to rounding)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid, paired_drop_upper) else (mid + 1, hi)
    return lo


def paired_coverage(bound, p_break: float, p_fix: float, n: int, alpha: float, tail: float = 1e-12) -> float:
    """P(bound(b, f, n, alpha) >= p_break - p_fix) for (b, f) trinomial: exact, by enumeration, not simulation.

    `bound` must grow with b. For each f, the smallest b it covers is found by search (starting from the
    previous f's), and the binomial probability of b at or above it is summed. Outcomes beyond `tail`
    count as not covered, so the result is a lower bound by at most a few `tail`.
    """
    from scipy import stats

    delta = p_break - p_fix
    f_lo, f_hi = (int(v) for v in stats.binom.ppf([tail, 1 - tail], n, p_fix))
    ratio = p_break / (1 - p_fix) if p_fix < 1 else 0.0
    covered, guess = 0.0, None
    for f in range(max(f_lo, 0), min(f_hi, n) + 1):
        m = n - f
        b_lo, b_hi = (int(v) for v in stats.binom.ppf([tail, 1 - tail], m, ratio))
        covers = lambda b: bound(b, f, n, alpha) >= delta  # noqa: E731
        # smallest b in [b_lo, b_hi + 1] that is covered (b_hi + 1: none up to b_hi)
        lo, hi = b_lo, b_hi + 1
        if guess is not None and b_lo <= guess <= b_hi:
            if covers(guess):
                hi = guess
                step = 1
                while hi - step >= lo and covers(hi - step):
                    hi, step = hi - step, 2 * step
                lo = max(lo, hi - step + 1) if hi - step >= lo else lo
            else:
                lo = guess + 1
                step = 1
                while lo + step - 1 <= b_hi and not covers(lo + step - 1):
                    lo, step = lo + step, 2 * step
                hi = min(hi, lo + step - 1)
        while lo < hi:
            mid = (lo + hi) // 2
            if covers(mid):
                hi = mid
            else:
                lo = mid + 1
        guess = lo
        inside = 1.0 if lo <= 0 else float(special.bdtrc(lo - 1, m, ratio))
        if lo <= b_lo:
            inside = 1.0 - float(special.bdtr(b_lo - 1, m, ratio)) if b_lo > 0 else 1.0
        covered += float(stats.binom.pmf(f, n, p_fix)) * inside
    return covered

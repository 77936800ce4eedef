"""Bounds on a pruned model's accuracy drop: how wide each valid method is, and whether it is valid.

Not a timed test: prints tables (markdown) for docs/bounds.md and the report.

    PYTHONPATH=. python benchmarks/bounds_width.py            # everything (about 30 min on 2 cores)
    PYTHONPATH=. python benchmarks/bounds_width.py --quick    # widths, speed, coverage up to n = 300

A candidate breaks each held-out sample with probability p and fixes it with probability q; the drop is
p - q, and a bound is computed from the counts (b, f) on n samples. Methods:
- exact: paired_drop_upper, Buehler's bound under Tango's score order (what onnxprune uses);
- bonferroni: Clopper-Pearson upper on breaks minus lower on fixes, each at alpha/2 (onnxprune 0.2);
- betting: a mixture of constant bets on the mean of D in [-1, 1] (Waudby-Smith & Ramdas 2023);
- conditional: conditional on the m = b + f discordant samples, b ~ Bin(m, p / (p + q)); the drop is
  (p + q)(2 p / (p + q) - 1): Clopper-Pearson on the share at alpha/2 and on p + q at alpha/4 per side;
- score: Tango's score bound alone (approximate; the order the exact bound uses; shown invalid).

Coverage is computed exactly (paired_coverage: enumeration of every outcome with probability above
1e-12, no Monte Carlo error) at a grid of (p, q) and just above each bound's values at likely outcomes,
where an exact bound's coverage dips lowest; the worst point is then also simulated.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from onnxprune.bounds import (_betting_upper, _buehler, binomial_lower, binomial_upper, drop_samples_needed,
                              mixed_drop_upper, paired_coverage, paired_drop_score_upper, paired_drop_upper,
                              paired_drop_upper_betting, paired_drop_upper_bonferroni, samples_needed)


def conditional_upper(b: int, f: int, n: int, alpha: float) -> float:
    """Conditional on the discordant samples: valid (union of three one-sided bounds), for comparison."""
    m = b + f
    share = binomial_upper(b, m, alpha / 2) if m else 1.0
    sign = 2 * share - 1
    rate = binomial_upper(m, n, alpha / 4) if sign >= 0 else binomial_lower(m, n, alpha / 4)
    return rate * sign


METHODS = {
    "exact": paired_drop_upper,
    "bonferroni": paired_drop_upper_bonferroni,
    "betting": paired_drop_upper_betting,
    "conditional": conditional_upper,
    "score": paired_drop_score_upper,
}


def pp(x: float) -> str:
    return f"{100 * x:.3f}"


def width_table(alpha: float) -> None:
    print(f"\n## Width at {1 - alpha:.0%}: bound (pp), and bound minus the observed drop (pp)\n")
    rows = []
    for n in (300, 500, 1000, 3000):
        cases = [(0, 0), (1, 1), (3, 3), (3, 0), (0, 3)]
        for rb, rf in [(0.005, 0.005), (0.01, 0.01), (0.01, 0.005), (0.03, 0.03)]:
            cases.append((round(rb * n), round(rf * n)))
        if n == 500:
            cases.append((10, 12))
        if n == 1000:
            cases.append((6, 2))
        for b, f in dict.fromkeys(cases):
            rows.append((n, b, f))
    names = list(METHODS)
    print("| n | breaks | fixes | observed | " + " | ".join(names) + " | exact / bonferroni |")
    print("|---|---|---|---|" + "---|" * (len(names) + 1))
    for n, b, f in rows:
        obs = (b - f) / n
        values = {k: fn(b, f, n, alpha) for k, fn in METHODS.items()}
        cells = [f"{pp(v)} ({pp(v - obs)})" for v in values.values()]
        ratio = (values["exact"] - obs) / (values["bonferroni"] - obs)
        print(f"| {n} | {b} | {f} | {pp(obs)} | " + " | ".join(cells) + f" | {ratio:.2f} |")


def speed_table() -> None:
    print("\n## Speed per call (uncached, ms), over the width table's counts at 95 %\n")
    cases = [(n, round(r * n), round(s * n)) for n in (300, 500, 1000, 3000)
             for r, s in [(0, 0), (0.006, 0.006), (0.01, 0.005), (0.03, 0.03)]]
    print("| method | mean ms | max ms |")
    print("|---|---|---|")
    for name, fn in METHODS.items():
        times = []
        for n, b, f in cases:
            if hasattr(fn, "cache_clear"):
                fn.cache_clear()
            binomial_upper.cache_clear()
            t = time.perf_counter()
            fn(b, f, n, 0.05)
            times.append(1e3 * (time.perf_counter() - t))
        print(f"| {name} | {np.mean(times):.2f} | {max(times):.2f} |")


def adversarial(bound, n, alpha, fixes):
    """True drops just above the bound's value at likely outcomes: where exact coverage dips lowest.

    At each fix rate q, p = q + bound(b, f) + 1e-9 for likely (b, f); and with no breaks (p = 0, where
    the exact bound's supremum can sit at the edge of the feasible fix rates), q = -bound(0, f) - 1e-9."""
    points = []
    for q in fixes:
        f0 = int(round(n * q))
        for f in sorted({max(f0 - 1, 0), f0, f0 + 1}):
            for b in range(f0, f0 + 2 + int(3 * math.sqrt(n * q + 1))):
                if b + f > n:
                    continue
                p = q + bound(b, f, n, alpha) + 1e-9
                if 0 <= p <= 1 - q:
                    points.append((p, q))
        for f in range(f0, f0 + 2 + int(3 * math.sqrt(n * q + 1))):
            q0 = -bound(0, f, n, alpha) - 1e-9
            if 0 < q0 < 1:
                points.append((0.0, q0))
    return points


def coverage_table(sizes, methods, alphas) -> None:
    print("\n## Coverage (exact), worst over the grid and the adversarial points\n")
    print("grid: p, q in {0, 0.1, 0.5, 1, 2, 5} % (n = 3000: up to 2 %); adversarial: p = q + bound(b, f) + 1e-9 "
          "for q in {0, 0.5 %, 2 %} and likely (b, f), and p = 0, q = -bound(0, f) - 1e-9\n")
    print("| method | 1 - alpha | n | worst coverage | at (p, q) | points | Monte Carlo at the worst (40,000 runs) |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in methods:
        fn = METHODS[name]
        for alpha in alphas:
            for n in sizes:
                rates = (0.0, 0.001, 0.005, 0.01, 0.02) + (() if n >= 3000 else (0.05,))
                points = [(p, q) for p in rates for q in rates if p + q <= 1]
                points += adversarial(fn, n, alpha, [0.0, 0.005, 0.02])
                worst = min(((paired_coverage(fn, p, q, n, alpha, tail=1e-10), (p, q)) for p, q in points))
                (c, (p, q)) = worst
                counts = rng.multinomial(n, [p, q, 1 - p - q], size=40_000)
                seen = {key: fn(int(key[0]), int(key[1]), n, alpha) for key in {(b, f) for b, f, _ in counts}}
                mc = np.mean([seen[(b, f)] >= p - q for b, f, _ in counts])
                err = math.sqrt(mc * (1 - mc) / len(counts))
                print(f"| {name} | {1 - alpha:.2f} | {n} | {c:.4f} | ({100 * p:.3f} %, {100 * q:.3f} %) | "
                      f"{len(points)} | {mc:.4f} ± {err:.4f} |", flush=True)


def betting_product_upper(b, f, n_labeled, flips, n_unlabeled, alpha):
    """Mixed evidence by betting: the product of the labeled and unlabeled mixtures' capital (independent
    e-values), each betting against "mean >= m" on its own values (D in [-1, 1], the flip F >= D)."""
    from scipy import optimize, special

    from onnxprune.bounds import _BETS
    target = math.log(1 / alpha)

    def log_mix(counts, m):
        scale = _BETS / (1 - m)
        terms = sum(k * np.log(np.maximum(1 + scale * (m - x), 1e-300)) for k, x in counts if k)
        return float(special.logsumexp(terms + np.zeros(len(_BETS))) - math.log(len(_BETS)))

    def g(m):
        return (log_mix([(b, 1.0), (f, -1.0), (n_labeled - b - f, 0.0)], m)
                + log_mix([(flips, 1.0), (n_unlabeled - flips, 0.0)], m) - target)

    if g(1 - 1e-12) < 0:
        return 1.0
    return float(optimize.brentq(g, -1 + 1e-12, 1 - 1e-12, xtol=1e-12))


MIXED = {
    "labeled only": lambda b, f, nl, k, nu, a: paired_drop_upper(b, f, nl, a),
    "pooled only": lambda b, f, nl, k, nu, a: _buehler(b + k, f, nl + nu, a, nl),
    "min, 0.5 alpha each": lambda b, f, nl, k, nu, a: mixed_drop_upper(b, f, nl, k, nu, a, share=0.5),
    "min, 0.8 / 0.2 (mixed_drop_upper)": mixed_drop_upper,
    "betting product": betting_product_upper,
}


def mixed_tables(runs: int) -> None:
    print("\n## Mixed evidence: labeled (breaks, fixes) and unlabeled (flips), 95 %\n")
    print("Width (pp) at typical counts; flips on the unlabeled pool at the rate given.\n")
    print("| labeled n | b | f | unlabeled n | flip rate | " + " | ".join(MIXED) + " |")
    print("|---|---|---|---|---|" + "---|" * len(MIXED))
    for nl, b, f in [(300, 1, 1), (500, 3, 3), (1000, 6, 2)]:
        for nu in (1000, 10_000):
            for rate in (0.0, 0.002, 0.01, 0.03):
                k = int(round(rate * nu))
                cells = [pp(fn(b, f, nl, k, nu, 0.05)) for fn in MIXED.values()]
                print(f"| {nl} | {b} | {f} | {nu} | {100 * rate:.1f} % | " + " | ".join(cells) + " |", flush=True)
    print(f"\nCoverage of mixed_drop_upper (simulated, {runs} runs a row; flips = breaks + fixes + other "
          "wrong-to-wrong changes: other = 0 is the least the unlabeled samples can show)\n")
    print("| labeled n | unlabeled n | p | q | other | coverage ± MC error |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(3)
    worst = 1.0
    for nl, nu in [(100, 1000), (300, 3000), (1000, 1000)]:
        for p, q, other in [(0.0, 0.0, 0.0), (0.003, 0.0, 0.0), (0.01, 0.0, 0.0), (0.01, 0.005, 0.0),
                            (0.005, 0.005, 0.0), (0.02, 0.01, 0.01)]:
            labeled = rng.multinomial(nl, [p, q, 1 - p - q], size=runs)
            flips = rng.binomial(nu, p + q + other, size=runs)
            got = np.array([mixed_drop_upper(int(b), int(f), nl, int(k), nu, 0.05)
                            for (b, f, _), k in zip(labeled, flips)])
            c = float(np.mean(got >= p - q))
            worst = min(worst, c)
            print(f"| {nl} | {nu} | {100 * p:.1f} % | {100 * q:.1f} % | {100 * other:.1f} % | "
                  f"{c:.4f} ± {math.sqrt(max(c * (1 - c), 0.95 * 0.05) / runs):.4f} |", flush=True)
    print(f"\nworst simulated coverage: {worst:.4f}")


def needed_tables() -> None:
    print("\n## Samples needed\n")
    print("Identical model (no break, no fix), 95 %:\n")
    print("| budget (pp) | bonferroni (onnxprune 0.2) | exact (samples_needed) |")
    print("|---|---|---|")
    for budget in (0.001, 0.005, 0.01, 0.02, 0.05):
        old = next(n for n in range(1, 10**6) if paired_drop_upper_bonferroni(0, 0, n, 0.05) <= budget)
        print(f"| {100 * budget:g} | {old} | {samples_needed(budget, 0.05)} |")
    print("\nA candidate's observed rates taken as the truth (drop_samples_needed), 95 %:\n")
    print("| observed on n | rates (break / fix) | 0.5 pp | 1 pp | 2 pp |")
    print("|---|---|---|---|---|")
    for n, b, f in [(500, 3, 3), (500, 10, 12), (1000, 6, 2), (1000, 0, 0), (300, 5, 1)]:
        cells = [drop_samples_needed(b, f, n, budget, 0.05) for budget in (0.005, 0.01, 0.02)]
        print(f"| {b}, {f} of {n} | {100 * b / n:.2f} % / {100 * f / n:.2f} % | "
              + " | ".join("never" if c is None else f"{c:,}" for c in cells) + " |")


def betting_mean_upper(x: np.ndarray, alpha: float, top: float = 2.0) -> float:
    """Betting upper bound on the mean of values in [0, top] (a mixture of constant bets; needs every value,
    not only sums of powers as mean_upper has)."""
    from scipy import optimize, special

    from onnxprune.bounds import _BETS
    target = math.log(1 / alpha)

    def g(m):
        scale = _BETS / (top - m)
        with np.errstate(divide="ignore"):  # the largest bet loses everything on a value at the top
            terms = np.log1p(np.outer(m - x, scale)).sum(axis=0)
        return float(special.logsumexp(terms) - math.log(len(_BETS))) - target

    if g(top - 1e-9) < 0:
        return top
    return float(optimize.brentq(g, 0.0, top - 1e-9, xtol=1e-10)) if g(0.0) < 0 else 0.0


def mean_table(runs: int) -> None:
    """Continuous losses in [0, 2] (1 - cosine): today's t + Hall bound against a betting bound."""
    from onnxprune.bounds import mean_upper
    print("\n## Mean of per-sample losses in [0, 2]: t + Hall (mean_upper) against betting, 95 %\n")
    print(f"{runs} runs a row; width = bound minus the true mean\n")
    print("| losses | n | true mean | t + Hall: coverage / median width | betting: coverage / median width |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(4)
    gens = {
        "skewed (1 in 10 large)": (lambda n: np.where(rng.random(n) < 0.1, rng.exponential(0.05, n),
                                                       rng.exponential(0.002, n)), 0.1 * 0.05 + 0.9 * 0.002),
        "rare large (1 in 100 at 0.5)": (lambda n: np.where(rng.random(n) < 0.01, 0.5, rng.exponential(0.001, n)),
                                         0.01 * 0.5 + 0.99 * 0.001),
        "lognormal": (lambda n: np.minimum(rng.lognormal(-6, 1.5, n), 2.0), None),
    }
    for name, (gen, true) in gens.items():
        if true is None:
            true = float(np.mean(gen(2_000_000)))
        for n in (150, 300, 1000):
            t_b, bet_b = [], []
            for _ in range(runs):
                x = gen(n)
                t_b.append(mean_upper(x.sum(), (x * x).sum(), n, 0.05, (x ** 3).sum()))
                bet_b.append(betting_mean_upper(x, 0.05))
            t_b, bet_b = np.array(t_b), np.array(bet_b)
            print(f"| {name} | {n} | {true:.4f} | {np.mean(t_b >= true):.3f} / {np.median(t_b) - true:.4f} | "
                  f"{np.mean(bet_b >= true):.3f} / {np.median(bet_b) - true:.4f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coverage up to n = 300 only, fewer mixed runs")
    parser.add_argument("--only", default="width,speed,coverage,mixed,needed,mean")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods whose coverage is computed")
    parser.add_argument("--alphas", default="0.05,0.1", help="1 - confidence levels whose coverage is computed")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    if "width" in parts:
        width_table(0.05)
        width_table(0.1)
    if "speed" in parts:
        speed_table()
    if "needed" in parts:
        needed_tables()
    if "coverage" in parts:
        sizes = (100, 300) if args.quick else (100, 300, 1000, 3000)
        coverage_table(sizes, args.methods.split(","), [float(a) for a in args.alphas.split(",")])
    if "mixed" in parts:
        mixed_tables(300 if args.quick else 2000)
    if "mean" in parts:
        mean_table(200 if args.quick else 500)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which search procedure certifies the most with the same guarantee? (issue 20, not a timed test)

    python benchmarks/search_procedures.py [--model mnist_mlp] [--size 1000] [--splits 20] [--folds K]

Per random split, `size` samples go to the tool and the rest of the pool is the test split. On the tool's
samples, one cross-fitted sweep over the full 2.5 % grid records every candidate's paired evidence
(broken, fixed, n) and its guards; on the test split, a sweep with the same statistics records each
candidate's loss on data no decision used. The procedures below are then replayed on the recorded
evidence, all at the same 95 % family-wise confidence:

- fixed-sequence testing over the 2.5 %, 5 % and 10 % grids (the walk stops at the first failure);
- two fixed sequences (from 0 % and from 40 %), Bonferroni-split (alpha/2 each);
- Wiens' fallback procedure: 90 % of alpha on the first candidate, the rest spread over the others, a
  level carried forward while candidates pass;
- every candidate of the 10 % (or 5 %) grid tested at alpha over their number, the smallest that passes
  (Bonferroni: no order, no stop);
- the 2.5 % walk without its guards (what the guard costs);
- a ceiling that is *not* a valid procedure: the largest candidate whose own bound passes, each tested
  alone at the full alpha (an upper limit of what any order could certify from this evidence).

"Oracle" is the largest candidate whose observed loss on the test split is within the budget. The
records are cached in benchmarks/.cache/procedures/ by split, model, size, folds and onnxprune's source.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import onnxprune  # noqa: E402
from onnxprune import bounds  # noqa: E402
from onnxprune.progress import Console  # noqa: E402

GRID = tuple(round(0.025 * i, 3) for i in range(37))


@functools.lru_cache(maxsize=None)  # one model and pool for every split
def load(name: str):
    if name.startswith("mnist"):
        import mnist as source
    else:
        import models as source
    return source.build(name)


def figures(candidate) -> list[dict]:
    return [{"metric": f.metric, "loss": f.loss, "bound": f.bound, "budget": f.budget, "n": f.samples,
             "guard": f.guard, "evidence": f.evidence} for f in candidate.figures]


def record(name: str, size: int, split: int, folds: int | None, cache: Path) -> dict:
    """A split's evidence: every grid candidate's cross-fitted figures and its loss on the test split."""
    from budget import tool_digest

    target = cache / f"{name}-{size}-{split}-{folds or 'default'}-{tool_digest()}.json"
    if target.exists():
        return json.loads(target.read_text())
    path, pool = load(name)
    import onnx

    inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    data = {k: pool[k] for k in [*inputs, "labels"] if k in pool}
    order = np.random.default_rng(1000 + split).permutation(len(data["labels"]))
    tool, test = np.sort(order[:size]), np.sort(order[size:])
    part = lambda idx: {k: v[idx] for k, v in data.items()}  # noqa: E731
    extra = {"folds": folds} if folds else {}
    crossfit = onnxprune.sweep(str(path), part(tool), grid=GRID, threads=1, console=Console(), **extra)
    tested = onnxprune.sweep(str(path), part(tool), eval_data=part(test), grid=GRID, threads=1, console=Console())
    out = {"p0": crossfit.parameters_before,
           "cands": [{"fraction": c.fraction, "params": c.parameters, "cf": figures(c), "test": figures(t),
                      "test_params": t.parameters} for c, t in zip(crossfit.candidates, tested.candidates)]}
    cache.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, default=float))
    return out


# ------------------------------------------------------------------------------------------ procedures

def passes(c: dict, budget: float, alpha: float, guard: bool = True) -> bool:
    """The accuracy figure's exact bound at level alpha within the budget, and (with `guard`) every
    other figure as the tool judges it: a guard on what it observed, a metric on its bound."""
    ev = c["cf"][0]["evidence"]
    ok = 100 * bounds.paired_drop_upper(ev["broken"], ev["fixed"], ev["n"], alpha) <= budget + 1e-12
    for f in c["cf"][1:] if guard else ():
        ok = ok and (f["loss"] if f["guard"] else f["bound"]) <= f["budget"] + 1e-12
    return ok


def fixed_sequence(cands, budget, alpha, guard=True):
    chosen = None
    for c in cands:
        if not passes(c, budget, alpha, guard):
            break
        chosen = c
    return chosen


def chains(cands, budget, alpha, starts):
    found = [fixed_sequence(cands[s:], budget, alpha / len(starts)) for s in starts]
    found = [c for c in found if c is not None]
    return min(found, key=lambda c: c["params"]) if found else None


def fallback(cands, budget, alpha, first=0.9):
    weights = [first] + [(1 - first) / (len(cands) - 1)] * (len(cands) - 1)
    level, chosen = 0.0, None
    for c, w in zip(cands, weights):
        level += w * alpha
        if passes(c, budget, level):
            chosen = c
        else:
            level = 0.0
    return chosen


def bonferroni(cands, budget, alpha):
    """Every candidate tested at alpha / their number, the smallest model that passes (valid by Bonferroni)."""
    ok = [c for c in cands if passes(c, budget, alpha / len(cands))]
    return min(ok, key=lambda c: c["params"]) if ok else None


def ceiling(cands, budget, alpha):
    ok = [c for c in cands if passes(c, budget, alpha, guard=False)]
    return min(ok, key=lambda c: c["params"]) if ok else None


PROCEDURES = {
    "fixed sequence, 2.5 % grid (the tool's)": lambda c, b, a: fixed_sequence(c, b, a),
    "fixed sequence, 5 % grid": lambda c, b, a: fixed_sequence(c[::2], b, a),
    "fixed sequence, 10 % grid": lambda c, b, a: fixed_sequence(c[::4], b, a),
    "2 sequences (0 %, 40 %), alpha/2 each": lambda c, b, a: chains(c, b, a, [0, 16]),
    "fallback (90 % of alpha first)": lambda c, b, a: fallback(c, b, a),
    "all of the 10 % grid at alpha/10 (Bonferroni)": lambda c, b, a: bonferroni(c[::4], b, a),
    "all of the 5 % grid at alpha/19 (Bonferroni)": lambda c, b, a: bonferroni(c[::2], b, a),
    "2.5 % grid without guards": lambda c, b, a: fixed_sequence(c, b, a, guard=False),
    "ceiling (not valid: each alone)": lambda c, b, a: ceiling(c, b, a),
}


def binding(records: list[dict], budget: float, alpha: float) -> str:
    """Which check stopped the tool's walk (2.5 % grid) on each split: the budget's bound, a guard, both."""
    counts = {"budget": 0, "guard": 0, "both": 0, "nothing (grid end)": 0}
    for r in records:
        stop = next((c for c in r["cands"] if not passes(c, budget, alpha)), None)
        if stop is None:
            counts["nothing (grid end)"] += 1
            continue
        budget_fails = not passes(stop, budget, alpha, guard=False)
        guard_fails = any(f["guard"] and f["loss"] > f["budget"] + 1e-12 for f in stop["cf"][1:])
        counts["both" if budget_fails and guard_fails else "budget" if budget_fails else "guard"] += 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def table(records: list[dict], budgets, alpha: float = 0.05) -> None:
    for budget in budgets:
        oracle = [max([1 - c["test_params"] / r["p0"] for c in r["cands"] if c["test"][0]["loss"] <= budget] + [0])
                  for r in records]
        print(f"\nbudget {budget:g} pp, {len(records)} splits; oracle median reduction {np.median(oracle):.1%}")
        print(f"{'procedure':46s} {'median':>7s} {'p10':>7s} {'/oracle':>8s} {'over budget on test':>20s}")
        for name, procedure in PROCEDURES.items():
            reductions, over = [], 0
            for r in records:
                chosen = procedure(r["cands"], budget, alpha)
                reductions.append(0.0 if chosen is None else 1 - chosen["params"] / r["p0"])
                over += chosen is not None and chosen["test"][0]["loss"] > budget
            med = np.median(reductions)
            print(f"{name:46s} {med:7.1%} {np.percentile(reductions, 10):7.1%} {med / np.median(oracle):8.2f} "
                  f"{over:>17d}/{len(records)}")
        print(f"what stopped the tool's walk: {binding(records, budget, alpha)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_mlp")
    parser.add_argument("--size", type=int, default=1000, help="labeled samples given to the tool [1000]")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--folds", type=int, default=None, help="cross-fitting folds [the tool's default]")
    parser.add_argument("--budgets", default="0.5,1,2")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    cache = HERE / ".cache" / "procedures"
    records = []
    for s in range(args.splits):
        records.append(record(args.model, args.size, s, args.folds, cache))
        print(f"split {s + 1}/{args.splits}", file=sys.stderr, flush=True)
    print(f"{args.model}, {args.size} samples to the tool, the rest of the pool as test split, "
          f"folds {args.folds or 'default'}")
    table(records, [float(b) for b in args.budgets.split(",")])


if __name__ == "__main__":
    main()

"""What a search's evaluations certify: at the budget asked, at looser ones, and with more samples.

Fixed-sequence testing certifies, at a budget B, the last candidate before the first whose bound
is over B. The bounds do not depend on B, so from one walk the same data answers for every looser
budget too: the budget a candidate needs is the largest primary bound up to it (while every other
check passes). That is what the report says when the budget asked cannot be certified ("this data
certifies -44 % at --max-drop 1"), with about how many samples the next candidate would need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bounds import binomial_upper, drop_samples_needed
from .metrics import Figure

# the option that sets each metric's budget, and how a budget reads in it
OPTIONS = {"accuracy": "--max-drop", "agreement": "--max-drop", "detection": "--max-drop",
           "balanced_accuracy": "--max-class-drop", "cosine": "--min-cosine", "channel": "--max-channel-error",
           "custom": "max_loss"}
NICE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20, 50)
MOST_SAMPLES = 10_000_000


@dataclass
class Step:
    """A candidate of the walk and the primary budget it needs to be certified (None: never, another check fails)."""

    label: str
    reduction: float
    needed: float | None


def walk_needs(candidates, parameters_before: int) -> list[Step]:
    """Along the walk (in its order), the primary budget each candidate would need: the largest primary
    bound up to it, as long as every other check passes."""
    needed, out = 0.0, []
    for c in candidates:
        if needed is not None and all(f.passed for f in c.figures[1:]):
            needed = max(needed, c.primary.bound)
        else:
            needed = None
        out.append(Step(c.label, 1 - c.parameters / parameters_before if parameters_before else 0.0, needed))
    return out


def looser(steps: list[Step], budget: float, metric: str, most: int = 2) -> list[tuple[float, Step]]:
    """Up to `most` looser budgets (round values) at which the walk certifies more, each with the largest
    candidate it certifies there."""
    out, best = [], max([s.reduction for s in steps if s.needed is not None and s.needed <= budget + 1e-12],
                        default=0.0)
    for value in _round_budgets(budget, metric):
        reached = [s for s in steps if s.needed is not None and s.needed <= value + 1e-12]
        if reached and reached[-1].reduction > best + 1e-9:
            out.append((value, reached[-1]))
            best = reached[-1].reduction
            if len(out) == most:
                break
    return out


def _round_budgets(budget: float, metric: str) -> list[float]:
    if metric == "cosine":  # budgets of 1 - cosine, looser when larger
        return [1 - c for c in (0.999, 0.995, 0.99, 0.98, 0.95, 0.9) if 1 - c > budget]
    return [v for v in NICE if v > budget]


def option_text(metric: str, budget: float) -> str:
    """`--max-drop 1`, `--min-cosine 0.98`, ...: the option and value a user would give."""
    option = OPTIONS.get(metric, "the budget")
    value = 1 - budget if metric == "cosine" else budget
    return f"{option} {value:g}"


def samples_needed(figure: Figure, alpha: float) -> int | None:
    """About how many samples the figure's candidate would need to pass its budget at the rates observed
    (None: its observed loss is itself over the budget, or more than MOST_SAMPLES)."""
    ev, budget = figure.evidence, figure.budget
    scale = 100.0 if figure.unit in ("pp", "%") else 1.0
    if ev and "broken" in ev:
        return drop_samples_needed(ev["broken"], ev["fixed"], ev["n"], budget / scale, alpha)
    if ev and "events" in ev:
        rate = ev["events"] / max(ev["n"], 1)
        if rate >= budget / scale:
            return None
        low, high = 1, MOST_SAMPLES
        if binomial_upper(int(round(rate * high)), high, alpha) > budget / scale:
            return None
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if binomial_upper(int(round(rate * mid)), mid, alpha) <= budget / scale else \
                (mid + 1, high)
        return low
    # a mean: the bound's margin over the mean shrinks as 1 / sqrt(n)
    if figure.loss >= budget or not math.isfinite(figure.bound) or figure.bound <= figure.loss:
        return None
    n = figure.samples * ((figure.bound - figure.loss) / (budget - figure.loss)) ** 2
    return int(math.ceil(n)) if n <= MOST_SAMPLES else None


def summary(candidates, chosen, parameters_before: int, alpha: float) -> dict | None:
    """What the walk certifies beyond its choice: at looser round budgets, and what stopped it, with about
    how many samples that candidate would need. None when there is nothing to say."""
    if not candidates:
        return None
    steps = walk_needs(candidates, parameters_before)
    primary = candidates[0].primary
    # Looser budgets are said when nothing was certified: the walk then went on for a few steps
    # (Selector._explore); otherwise it stopped where the budget did, and would only say "at least".
    certified_nothing = chosen is None or not chosen.fraction
    out = {"metric": primary.metric, "budget": primary.budget,
           "looser": [{"budget": value, "option": option_text(primary.metric, value), "candidate": s.label,
                       "parameter_reduction": s.reduction}
                      for value, s in (looser(steps, primary.budget, primary.metric) if certified_nothing else [])]}
    stop = next((c for c in candidates if not c.within_budget), None)
    if stop is not None:
        failed = [f for f in stop.figures if not f.passed]
        out["stopped_at"] = {"candidate": stop.label,
                             "parameter_reduction": 1 - stop.parameters / parameters_before if parameters_before
                             else 0.0,
                             "failed": [f"{f.label}: {'observed ' if f.guard else 'bound '}"
                                        f"{f.loss if f.guard else f.bound:.3g}{f.unit and ' ' + f.unit} > "
                                        f"{f.budget:g}{f.unit and ' ' + f.unit}" for f in failed],
                             "samples_needed": None if any(f.guard for f in failed) else
                             _most([samples_needed(f, alpha) for f in failed])}
    return out


def _most(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else max(values, default=None)


def lines(summary: dict | None, chosen_label: str | None) -> list[str]:
    """The summary in words, for the report's notes."""
    if not summary:
        return []
    out = []
    for entry in summary["looser"]:
        out.append(f"this data certifies {entry['candidate']} (-{100 * entry['parameter_reduction']:.1f} % "
                   f"parameters) at {entry['option']}")
    stop = summary.get("stopped_at")
    if stop is not None:
        need = stop["samples_needed"]
        more = (f"; at its observed rates about {need:,} samples would certify it" if need else
                "; more samples would not certify it at its observed rates" if need is None and not any(
                    "observed" in f for f in stop["failed"]) else "")
        out.append(f"the search stopped at {stop['candidate']} (-{100 * stop['parameter_reduction']:.1f} % "
                   f"parameters): {', '.join(stop['failed'])}{more}")
    return out

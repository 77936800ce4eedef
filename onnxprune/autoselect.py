"""The default criterion, "auto": of two rankings, the one that measurably costs this model less.

`contribution` scores a neuron by its share of its consumers' input signal within its layer; `sensitivity`
(sensitivity.py) by its signal scaled by what its group's removals were measured to cost the outputs.
Neither wins everywhere (benchmarks/versus.py and budget.py, docs/method.md): on the MNIST CNN the
sensitivity ranking keeps the outputs as close at 80 % fewer parameters as contribution does at 59 %, while
on a ResNeXt-style CNN it does several times contribution's damage at equal cost.

So both are walked on calibration samples, never on the data that judges candidates (with cross-fitting,
each fold's builder chooses on the other folds' samples, as its statistics come from them): at each of
AUTO_FRACTIONS the candidate is built (compensated as configured, refit solved per consumer, not
sequentially) and its output damage measured on up to PROBE_SAMPLES samples (sensitivity.output_damage:
the squared change of every output over its variance), against the cost it saves (parameters, or MACs
with that objective). Damage is kept non-decreasing along each walk. A ranking's figure is the cost it
saves at a damage level, averaged over every level both walks measured up to the lower of their largest
damages: the ranking that saves more at equal damage is used, contribution on a tie. Asked for a fixed
amount (`fraction`), the rankings are compared where that amount lands instead: both walks also build the
candidate at that fraction, and the one with the lower damage at the saving halfway between the two
candidates' (each walk's damage interpolated linearly in the saving) is used. Rankings cross: on the small
encoder of benchmarks/versus.py contribution does less damage below about a third of the MACs and
sensitivity above, so one figure over every level picked the same ranking for every amount. The choice
and the figures are reported.

Models above AUTO_MAX_PARAMETERS rank by contribution without probing: each probe is a build and a pass
over the probe samples, about (groups + 2 x len(AUTO_FRACTIONS)) passes per builder, once more per fold,
which on a 29 M-parameter encoder costs more than the whole search (ask for `criterion="sensitivity"`
there to pay for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .blockselect import objective_cost
from .criteria import masks_for_fraction, unit_scores
from .rewrite import apply_masks

AUTO_FRACTIONS = (0.1, 0.2, 0.35, 0.5, 0.7)
AUTO_MAX_PARAMETERS = 2_000_000
RANKINGS = ("contribution", "sensitivity")


@dataclass
class Choice:
    """Which ranking "auto" took and why (the report's `criterion_chosen`)."""

    criterion: str
    reason: str
    figures: dict[str, float] = field(default_factory=dict)   # ranking -> mean cost saved at equal damage
                                                              # (at a fixed amount: damage at `saving`)
    curves: dict[str, list] = field(default_factory=dict)     # ranking -> [(fraction, saved, damage)]
    saving: float | None = None  # at a fixed amount: the saving compared at (figures: damage there)

    def to_dict(self) -> dict:
        figures = {"saved_at_equal_damage": self.figures} if self.saving is None else \
            {"damage_at_equal_saving": self.figures, "saving": self.saving}
        return {"criterion": self.criterion, "reason": self.reason, **figures,
                "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    def line(self) -> str:
        return f"criterion auto: {self.criterion} ({self.reason})"


def choose(selector, probe, macs, per_cost) -> tuple[dict[str, np.ndarray], Choice]:
    """The scores "auto" ranks by and the choice. `selector` is the Selector being built (its compensation,
    groups, objective and alignment), `probe` a sensitivity.Probe of calibration samples (None: none at hand),
    `per_cost(scores)` turns contribution scores into scores per unit of the objective's cost. The selector's
    scores are still its raw ones: criterion "auto" scores as contribution (criteria.py)."""
    comp, config = selector.comp, selector.config
    contribution = per_cost(selector.scores)
    if probe is None:
        return contribution, Choice("contribution", "no calibration samples to probe")
    if selector.parameters_before > AUTO_MAX_PARAMETERS:
        return contribution, Choice("contribution", f"above {AUTO_MAX_PARAMETERS:,} parameters nothing is probed")
    if not selector.groups:
        return contribution, Choice("contribution", "no prunable group")
    from .sensitivity import probe_samples, reference_outputs, sensitivity_scores

    data = probe_samples(probe.data)
    reference = reference_outputs(comp.model, data, probe)
    rankings = {"contribution": contribution, "sensitivity": sensitivity_scores(
        comp, probe, selector.ranking_costs(macs), data=data, reference=reference)}
    cost = objective_cost(config.objective, data, comp.model)
    before = cost(comp.model)
    seen: dict[bytes, tuple[float, float]] = {}  # masks -> (saved, damage): where both walks agree, built once
    at = config.fraction if config.mode == "fraction" and config.fraction else None
    fractions = AUTO_FRACTIONS if at is None else tuple(sorted({*AUTO_FRACTIONS, at}))
    curves = {name: _walk(selector, unit_scores(scores, selector.groups, "auto"), probe, data, reference, cost, before,
                          seen, fractions) for name, scores in rankings.items()}
    unit = {"macs": "MACs", "both": "parameters and MACs (mean share)"}.get(config.objective, "parameters")
    if at is None:
        figures = compare(curves)
        best = max(RANKINGS, key=lambda name: (figures[name], name == "contribution"))
        shown = ", ".join(f"{name} {figures[name]:.1%}" for name in RANKINGS)
        reason = f"{unit} saved at equal output damage on {data.n_samples} calibration samples: {shown}"
        return rankings[best], Choice(best, reason, figures, curves)
    saving, figures = compare_at(curves, at)
    best = min(RANKINGS, key=lambda name: (figures[name], name != "contribution"))
    shown = ", ".join(f"{name} {figures[name]:.3g}" for name in RANKINGS)
    reason = (f"output damage at {saving:.1%} fewer {unit} (where {at:.1%} of the neurons lands) on "
              f"{data.n_samples} calibration samples: {shown}")
    return rankings[best], Choice(best, reason, figures, curves, saving)


def _walk(selector, scores, probe, data, reference, cost, before, seen,
          fractions=AUTO_FRACTIONS) -> list[tuple[float, float, float]]:
    """(fraction, share of the cost saved, output damage) of the candidates at `fractions`."""
    from .sensitivity import damage_of

    comp = selector.comp
    out = []
    for f in fractions:
        masks = selector.aligned_by(masks_for_fraction(scores, f), scores)
        key = b"".join(np.packbits(masks[g]).tobytes() + b"|" for g in sorted(masks))
        if key not in seen:
            model = apply_masks(comp.model, comp.all_groups, masks, updates=comp.updates(masks), index=comp.index,
                                check_shapes=False)
            seen[key] = (1.0 - cost(model) / before if before else 0.0, damage_of(model, reference, data, probe))
        out.append((f, *seen[key]))
    return out


def compare(curves: dict[str, list[tuple[float, float, float]]]) -> dict[str, float]:
    """Per ranking, the mean over damage levels of the largest share saved at a damage at most that level
    (damage non-decreasing along each walk; the original, saving 0 at damage 0, counts), over every level
    measured up to the lower of the walks' largest damages."""
    steps = {}
    for name, points in curves.items():
        damage, out = 0.0, [(0.0, 0.0)]
        for _, saved, d in points:
            damage = max(damage, d if np.isfinite(d) else np.inf)
            out.append((saved, damage))
        steps[name] = out
    top = min(max(d for _, d in s) for s in steps.values())
    levels = sorted({d for s in steps.values() for _, d in s if d <= top})

    def saved_at(s, level):
        return max(saved for saved, d in s if d <= level)

    return {name: float(np.mean([saved_at(s, level) for level in levels])) for name, s in steps.items()}


def compare_at(curves: dict[str, list[tuple[float, float, float]]], fraction: float) -> tuple[float, dict[str, float]]:
    """(saving, per ranking its output damage at that saving): the saving halfway between what the rankings'
    candidates at `fraction` save; each walk's damage (non-decreasing in the saving, the original at (0, 0))
    interpolated linearly between its candidates, infinite past its largest saving."""
    at = {name: next(saved for f, saved, _ in points if f == fraction) for name, points in curves.items()}
    saving = float(np.mean(list(at.values())))
    figures = {}
    for name, points in curves.items():
        pairs = sorted([(0.0, 0.0)] + [(saved, d if np.isfinite(d) else np.inf) for _, saved, d in points])
        saved = np.array([p[0] for p in pairs])
        damage = np.minimum(np.maximum.accumulate([p[1] for p in pairs]), np.finfo(float).max)
        figures[name] = float(np.interp(saving, saved, damage)) if saving <= saved[-1] else float("inf")
    return saving, figures

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
damages: the ranking that saves more at equal damage is used, contribution on a tie. The choice and both
figures are reported.

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
    curves: dict[str, list] = field(default_factory=dict)     # ranking -> [(fraction, saved, damage)]

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "reason": self.reason, "saved_at_equal_damage": self.figures,
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
    curves = {name: _walk(selector, unit_scores(scores, selector.groups, "auto"), probe, data, reference, cost, before,
                          seen) for name, scores in rankings.items()}
    figures = compare(curves)
    best = max(RANKINGS, key=lambda name: (figures[name], name == "contribution"))
    unit = {"macs": "MACs", "both": "parameters and MACs (mean share)"}.get(config.objective, "parameters")
    shown = ", ".join(f"{name} {figures[name]:.1%}" for name in RANKINGS)
    reason = (f"{unit} saved at equal output damage on {data.n_samples} calibration samples: {shown}")
    return rankings[best], Choice(best, reason, figures, curves)


def _walk(selector, scores, probe, data, reference, cost, before, seen) -> list[tuple[float, float, float]]:
    """(fraction, share of the cost saved, output damage) of the candidates at AUTO_FRACTIONS."""
    from .sensitivity import damage_of

    comp = selector.comp
    out = []
    for f in AUTO_FRACTIONS:
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

"""Whole residual blocks as a structure the budget search removes: their evidence, rank, cost, and the
masks and edit records that remove them (discovery is groups/blocks.py, the edit graph/branch.py).

Evidence. The statistics pass taps each removable block's branch output `b` and stream (the Add's
output `y`). Removing the branch and folding its per-feature mean leaves an error of ``b - mean(b)``
on the stream: its *stream share* ``D = sum_f var(b_f) / sum_f var(y_f)`` is the relative error the
removal injects where it happens (0 for a branch whose output is constant: removed exactly).

Rank: a measured exchange rate. The criteria score a neuron relative to its layer (the default
`contribution`: its share of its consumers' input variance, summing to 1 per group), as if every layer
mattered alike, so no score of theirs says what a whole branch is worth against a neuron. A block is
placed among the neurons by what both measurably cost on the statistics' own samples (at most
PROBE_SAMPLES of them, the held-out data untouched): the output damage (squared error over the
outputs' variance) of the model without that block alone, and of the neuron-only candidates at
PROBE_FRACTIONS (compensated), each against the cost it saves (parameters, or MACs with that
objective). The block goes into the neurons' order just before the first probed step whose neurons cost
more damage per unit saved than the block does (the greedy order of a knapsack), and not before the
neuron-only walk has done as much damage as the block alone: the candidates' damage then grows at most
twofold where a block joins, so that a block costly for the budget does not stop fixed-sequence testing
before the neurons would have. With no calibration samples to probe (a Selector built by hand), a block
ranks as the mean score of the neurons that go with it, scaled by its stream share over the mean share of
the model's blocks.

Cost and the fraction. The search's fractions count neurons; a block counts as the neurons that go
with it (`ResidualBlock.neurons`; its stream width when it holds no group), those already removed
not counted twice. Candidates remove the lowest-ranked neurons and blocks together, in one order, so
a larger fraction removes a superset (what fixed-sequence testing walks). A removed block's inner
groups keep their masks whole: their neurons go with the block, and no record touches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .criteria import masks_for_fraction as neuron_masks_for_fraction
from .graph.branch import RemovedBranch
from .groups.blocks import ResidualBlock, find_blocks
from .stats import ActivationStats

SHAPE_KINDS = ("shape", "broadcast")  # reasons that the data's own shapes may settle


@dataclass
class BlockRank:
    """A removable block as the ranking sees it: its score (per neuron that goes with it), its weight
    (those neurons), the groups inside it and the blocks nested in it."""

    id: str
    score: float
    weight: int
    share: float
    groups: list[str] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)
    damage: float | None = None  # measured: the block alone's output damage on the calibration probe
    saved: float | None = None   # and the cost it saves (parameters, or MACs)
    step: int | None = None      # the probed neuron-only step it goes before (None: after them all)
    rate: float = 0.0            # damage per cost saved: among blocks of one score, the lower goes first


def stream_share(block: ResidualBlock, tap_stats: dict[str, ActivationStats]) -> float | None:
    """sum var(branch) / sum var(stream) on the calibration data; None when the block was not measured."""
    branch, stream = tap_stats.get(block.branch), tap_stats.get(block.stream)
    if branch is None or stream is None or not branch.count or not stream.count:
        return None
    added, total = float((branch.std ** 2).sum()), float((stream.std ** 2).sum())
    if total > 0:
        return added / total
    return 0.0 if added == 0 else float("inf")


def residual_blocks(model, index, groups, dataset, options) -> list[ResidualBlock]:
    """The model's residual blocks (groups.blocks.find_blocks). Where static shape inference cannot show
    that a skip has its block's shape (a Split sized at run time), the shapes of one batch of the data
    (2 samples, or the model's fixed batch) decide: the skip must have the stream's shape there."""
    blocks = find_blocks(model, index, groups)
    unsure = [b for b in blocks if b.reason is not None and b.reason.kind in SHAPE_KINDS]
    if not unsure:
        return blocks
    tensors = sorted({t for b in unsure for t in (b.skip, b.stream)})
    shapes = observed_shapes(model, index, tensors, dataset, options)
    return find_blocks(model, index, groups, shapes) if shapes else blocks


def observed_shapes(model, index, tensors: list[str], dataset, options) -> dict[str, tuple]:
    """The shapes of `tensors` on one batch of the data; empty when the model cannot be run so."""
    from .bench import data_feeds
    from .runtime import tapped_model
    from .session import make_session, run

    try:
        feeds = data_feeds(dataset, dataset.fixed_batch or min(2, dataset.n_samples))
        session = make_session(tapped_model(model, tensors, index), options)
        values = run(session, feeds, options, tensors, purpose="probe")
    except Exception:  # onnxruntime's own errors: the blocks keep their static reason
        return {}
    return {t: tuple(int(d) for d in np.shape(v)) for t, v in zip(tensors, values)}


def block_taps(blocks: list[ResidualBlock]) -> dict[str, tuple[int, int]]:
    """{tensor: (features, axis)} the statistics pass measures for the removable blocks."""
    out = {}
    for b in blocks:
        if b.removable and b.width:
            for tap in b.taps:
                out[tap] = (b.width, b.axis)
    return out


def rank_blocks(blocks: list[ResidualBlock], tap_stats: dict[str, ActivationStats], raw: dict[str, np.ndarray],
                macs: dict[int, int] | None = None) -> list[BlockRank]:
    """Every measured removable block's rank among the neurons (see the module docstring). `raw` are the
    criterion's scores per group before any cost division; `macs` per node when the objective is MACs."""
    shares = {b.id: stream_share(b, tap_stats) for b in blocks if b.removable}
    shares = {k: v for k, v in shares.items() if v is not None and np.isfinite(v)}
    if not shares:
        return []
    mean_share = float(np.mean(list(shares.values())))
    scored = [np.asarray(s, np.float64) for s in raw.values() if len(s)]
    model_mean = float(np.mean(np.concatenate(scored))) if scored else 1.0
    out = []
    for b in blocks:
        if b.id not in shares:
            continue
        inner = [np.asarray(raw[g], np.float64) for g in b.groups if g in raw and len(raw[g])]
        mean = float(np.mean(np.concatenate(inner))) if inner else model_mean
        weight = b.neurons or b.width or 1
        relative = shares[b.id] / mean_share if mean_share > 0 else 0.0
        score = relative * mean
        if macs is not None:
            cost = sum(macs.get(n, 0) for n in b.nodes)
            score /= max(cost / weight, 1.0)
        out.append(BlockRank(b.id, score, weight, shares[b.id], list(b.groups), list(b.blocks)))
    return out


PROBE_SAMPLES = 256  # calibration samples the probes run (the first ones)
PROBE_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # neuron-only candidates probed
# a block joins the walk once the neurons before it have done at least this many times its own damage
DAMAGE_BEFORE = 1.0


class Probe:
    """The output damage of a model against the original's outputs on a few calibration samples: the squared
    error summed over every floating output, over the original outputs' variance (0: the same outputs)."""

    def __init__(self, model, data, batch_size: int, options):
        self.data = data.subset(np.arange(min(data.n_samples, PROBE_SAMPLES)))
        self.batch_size, self.options = batch_size, options
        self.reference = self._outputs(model)
        floats = [r for r in self.reference if r.dtype.kind == "f"]
        self.scale = sum(float(((r - r.mean(axis=0)) ** 2).sum()) for r in floats) or 1.0

    def _outputs(self, model) -> list[np.ndarray]:
        from .reference import as_array
        from .session import make_session, run

        session = make_session(model, self.options)
        parts = [[as_array(v) for v in run(session, feeds, self.options, purpose="probe")]
                 for feeds in self.data.batches(self.batch_size)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def damage(self, model) -> float:
        outputs = self._outputs(model)
        return sum(float(((np.asarray(o, np.float64) - r) ** 2).sum())
                   for o, r in zip(outputs, self.reference) if r.dtype.kind == "f") / self.scale


def probed_ranks(ranks: list[BlockRank], selector) -> list[BlockRank]:
    """The blocks re-scored by what they measurably cost against neurons (module docstring, "Measured
    exchange"): `selector` (a selection.Selector with `calibration` set) builds the candidates."""
    from .rewrite import parameter_count

    replay = selector.calibration
    probe = Probe(selector.model, replay.data, replay.batch_size, replay.options)
    cost = objective_cost(selector.config.objective, replay.data, selector.model)
    before = cost(selector.model)
    curve = _NeuronCurve(selector, probe, cost, before) if any(len(v) for v in selector.scores.values()) else None
    out = []
    for r in ranks:
        model = build_only(selector, {r.id: np.zeros(1, bool)})
        saved, damage = before - cost(model), probe.damage(model)
        rate = damage / max(saved, 1e-12)
        step, score = curve.place(rate, damage) if curve is not None else (None, rate)
        out.append(BlockRank(r.id, score, r.weight, r.share, r.groups, r.nested, damage=damage, saved=saved,
                             step=step, rate=rate))
    return out


class _NeuronCurve:
    """The neuron-only walk probed at PROBE_FRACTIONS: cost saved and output damage at each step (damage kept
    non-decreasing), and the score of the last neuron each step removes."""

    def __init__(self, selector, probe: Probe, cost, before: float):
        from .criteria import masks_for_fraction as neurons_at
        from .rewrite import apply_masks

        self.steps, self.thresholds = [(0.0, 0.0)], []
        for f in PROBE_FRACTIONS:
            masks = selector.aligned(neurons_at(selector.scores, f))
            model = apply_masks(selector.model, selector.all_groups, masks, index=selector.index,
                                check_shapes=False, updates=selector.comp.updates(masks))  # not sequential
            self.steps.append((before - cost(model), max(self.steps[-1][1], probe.damage(model))))
            self.thresholds.append(max((float(np.max(selector.scores[g][~m])) for g, m in masks.items()
                                        if g in selector.scores and not m.all()), default=0.0))
        self.rates = [(d1 - d0) / max(c1 - c0, 1e-12) for (c0, d0), (c1, d1) in zip(self.steps, self.steps[1:])]
        self.lowest = min((float(np.min(v)) for v in selector.scores.values() if len(v)), default=0.0)

    def place(self, rate: float, damage: float) -> tuple[int | None, float]:
        """(the step a block goes before, its score): the first step whose neurons cost more per unit saved
        than the block (`rate`), and not before the walk has done as much damage as the block alone."""
        by_rate = next((k for k, r in enumerate(self.rates) if r >= rate), None)
        by_damage = next((k for k, (_, d) in enumerate(self.steps[:-1]) if d >= DAMAGE_BEFORE * damage), None)
        if by_rate is None or by_damage is None:
            return None, self.thresholds[-1] + abs(self.thresholds[-1]) + 1.0  # after every probed step
        k = max(by_rate, by_damage)
        return k, (self.lowest - 1.0 if k == 0 else self.thresholds[k - 1])


def build_only(selector, masks: dict[str, np.ndarray]):
    """The model with only the blocks of `masks` removed (no neuron, no compensation)."""
    from .rewrite import apply_masks

    return apply_masks(selector.model, selector.all_groups, masks, index=selector.index, check_shapes=False,
                       blocks=selector.removals(masks))


COSTED = ("macs", "both")  # objectives whose ranking divides scores by a per-node cost (run.objective_costs)


def objective_cost(objective: str, data, original=None):
    """What a candidate costs in the objective's unit: parameters, MACs per sample (shapes read from the
    first sample of `data`), or for objective both the sum of its parameters' and its MACs' shares of
    `original`'s (2 for the original)."""
    from .rewrite import parameter_count

    if objective not in COSTED:
        return parameter_count
    from .bench import data_feeds, macs_per_sample

    feeds = data_feeds(data, 1)

    def macs(model) -> float:
        value = macs_per_sample(model, feeds, data.batch_axes)
        return float(value) if value is not None else float(parameter_count(model))

    if objective == "macs":
        return macs
    p0, m0 = max(parameter_count(original), 1), max(macs(original), 1.0)
    return lambda model: parameter_count(model) / p0 + macs(model) / m0


def masks_for_fraction(scores: dict[str, np.ndarray], fraction: float,
                       ranks: list[BlockRank] = ()) -> dict[str, np.ndarray]:
    """criteria.masks_for_fraction with blocks ranked among the neurons: the lowest-ranked neurons and blocks
    go until they weigh `fraction` of all (each group keeps its best neuron; a block's entry is a 1-element
    mask, False when it goes). A neuron inside a block that goes costs nothing more."""
    if not ranks:
        return neuron_masks_for_fraction(scores, fraction)
    walk = _Walk(scores, ranks)
    walk.run(int(round(fraction * walk.total)))
    return walk.masks


class _Walk:
    """One order of every neuron (but each group's best) and every block, removed from the lowest up."""

    def __init__(self, scores: dict[str, np.ndarray], ranks: list[BlockRank]):
        self.names = list(scores)
        self.masks = {n: np.ones(len(scores[n]), bool) for n in self.names}
        self.ranks = ranks
        for r in ranks:
            self.masks[r.id] = np.ones(1, bool)
        group_of, neuron_of, values = [], [], []
        for gi, n in enumerate(self.names):
            s = np.asarray(scores[n], np.float64)
            idx = np.delete(np.arange(len(s)), int(np.argmax(s))) if len(s) else np.arange(0)
            group_of.append(np.full(len(idx), gi))
            neuron_of.append(idx)
            values.append(s[idx])
        self.group_of = np.concatenate([np.full(len(ranks), -1)] + group_of).astype(int)
        self.neuron_of = np.concatenate([np.arange(len(ranks))] + neuron_of).astype(int)
        values = np.concatenate([np.array([r.score for r in ranks], np.float64)] + values)
        # among equal scores blocks go first (a block saves more), the lower damage rate first
        ties = np.full(len(values), len(ranks))
        ties[:len(ranks)] = np.argsort(np.argsort([r.rate for r in ranks], kind="stable"))
        self.order = np.lexsort((ties, values))
        counted = set(self.names)
        self.total = sum(len(scores[n]) for n in self.names) + sum(
            max(r.weight - sum(len(scores[g]) for g in r.groups if g in counted), 0) for r in ranks)
        self.gone: set[str] = set()        # removed blocks and those nested in them
        self.inside = np.zeros(len(self.names), bool)  # groups inside a removed block

    def run(self, target: int) -> None:
        spent, cursor = 0, 0
        blocks_at = np.flatnonzero(self.group_of[self.order] < 0)
        for stop in [*blocks_at, len(self.order)]:
            if spent >= target:
                return
            spent += self._neurons(self.order[cursor:stop], target - spent)
            if spent >= target or stop == len(self.order):
                return
            spent += self._block(self.ranks[self.neuron_of[self.order[stop]]])
            cursor = stop + 1

    def _neurons(self, entries: np.ndarray, need: int) -> int:
        """Remove up to `need` neurons of `entries` (in order), skipping those inside removed blocks."""
        entries = entries[~self.inside[self.group_of[entries]]][:need]
        for gi, j in zip(self.group_of[entries], self.neuron_of[entries]):
            self.masks[self.names[gi]][j] = False
        return len(entries)

    def _block(self, rank: BlockRank) -> int:
        if rank.id in self.gone:
            return 0
        self.gone.add(rank.id)
        self.gone.update(rank.nested)
        self.masks[rank.id][:] = False
        already = 0
        for g in rank.groups:
            if g in self.masks:
                already += int((~self.masks[g]).sum())
                self.inside[self.names.index(g)] = True
        return max(rank.weight - already, 0)


def settle(masks: dict[str, np.ndarray], blocks: list[ResidualBlock]) -> dict[str, np.ndarray]:
    """The masks with every group inside a removed block kept whole (its neurons go with the block, so no
    record of theirs applies) and every block nested in a removed one marked kept (it goes with it)."""
    removed = outermost_removed(blocks, masks)
    if not removed:
        return masks
    out = dict(masks)
    for b in removed:
        for g in b.groups:
            if g in out:
                out[g] = np.ones(len(out[g]), bool)
        for nested in b.blocks:
            if nested in out:
                out[nested] = np.ones(1, bool)
    return out


def outermost_removed(blocks: list[ResidualBlock], masks: dict[str, np.ndarray]) -> list[ResidualBlock]:
    """The blocks the masks remove, without those nested in another removed block."""
    removed = [b for b in blocks if b.id in masks and not masks[b.id].all()]
    nested = {n for b in removed for n in b.blocks}
    return [b for b in removed if b.id not in nested]


def removals(blocks: list[ResidualBlock], masks: dict[str, np.ndarray],
             tap_stats: dict[str, ActivationStats]) -> list[tuple[RemovedBranch, tuple]]:
    """The edit records (with the stream's layout) of the blocks the masks remove: each folds its branch's
    mean output on the calibration data (as measured in `tap_stats`)."""
    out = []
    for b in outermost_removed(blocks, masks):
        stats = tap_stats.get(b.branch)
        mean = stats.mean.copy() if stats is not None and stats.count else None
        out.append((RemovedBranch(b.stream, b.position, b.branch, b.axis, mean, b.dtype), b.layout))
    return out


def removed_with(blocks: list[ResidualBlock], masks: dict[str, np.ndarray]) -> dict[str, str]:
    """{group or nested block id: the id of the removed block it goes with}."""
    out = {}
    for b in outermost_removed(blocks, masks):
        for inner in [*b.groups, *b.blocks]:
            out[inner] = b.id
    return out


def block_macs(block: ResidualBlock, macs: dict[int, int] | None) -> int | None:
    """Multiply-adds per sample of the branch's linear nodes; None when unknown."""
    return None if macs is None else sum(macs.get(n, 0) for n in block.nodes)

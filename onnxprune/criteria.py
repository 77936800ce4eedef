"""Which neurons matter: criteria score neurons, allocation turns scores into keep-masks.

A criterion is a function ``evidence -> scores`` (one score per neuron, higher means
more important), registered by name; the CLI's choices come from this registry.
Allocation is global: one threshold, or one fraction of all prunable neurons, across
every group, so layers lose neurons in proportion to how little they matter rather
than by a per-layer threshold that suits one activation scale. No group is ever emptied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .groups import NeuronGroup
from .stats import ActivationStats

SEED_MEAN, SEED_STD = 0.1, 0.4  # the seed's thresholds; their ratio shapes the seed's score


@dataclass
class GroupEvidence:
    """What a criterion may look at for one group: statistics and the consumers' weights."""

    group: NeuronGroup
    stats: ActivationStats
    weights: list[np.ndarray]  # per consumer, what a constant unit of each neuron adds to its outputs
    sq_norms: list[np.ndarray] | None = None  # per consumer, each neuron's squared outgoing weights
    variances: list[np.ndarray] | None = None  # per consumer, each neuron's variance at the tap it reads

    @property
    def outgoing_sq_norm(self) -> np.ndarray:
        """Per neuron, squared norm of its outgoing weights, summed over consumers."""
        if self.sq_norms is not None:
            return sum(self.sq_norms)
        return sum((w**2).sum(axis=1) for w in self.weights)

    @property
    def scale(self) -> float:
        """The layer's activation scale: RMS of all its activations, sqrt(mean_j(mean_j^2 + std_j^2))."""
        s = self.stats
        return float(np.sqrt(np.mean(s.mean**2 + s.std**2))) or 1.0


Criterion = Callable[..., np.ndarray]
CRITERIA: dict[str, Criterion] = {}


def register(name: str):
    def wrap(fn: Criterion) -> Criterion:
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered")
        CRITERIA[name] = fn
        return fn

    return wrap


@register("seed")
def seed(e: GroupEvidence, *, mean_threshold: float | None = None, std_threshold: float | None = None,
         relative: bool = False, **_) -> np.ndarray:
    """max(|mean| / mean_threshold, std / std_threshold): below 1 exactly when the seed's rule removes it.

    A threshold left out does not constrain; with neither given, the seed's 0.1 and 0.4
    set the ratio. With `relative`, mean and std are first divided by the layer's scale.
    """
    if mean_threshold is None and std_threshold is None:
        mean_threshold, std_threshold = SEED_MEAN, SEED_STD
    scale = e.scale if relative else 1.0
    mean, std = np.abs(e.stats.mean) / scale, e.stats.std / scale
    by_mean = np.zeros_like(mean) if mean_threshold is None else _ratio(mean, mean_threshold)
    by_std = np.zeros_like(std) if std_threshold is None else _ratio(std, std_threshold)
    return np.maximum(by_mean, by_std)


def _ratio(value: np.ndarray, threshold: float) -> np.ndarray:
    if threshold == 0:
        return np.full_like(value, math.inf)
    return value / threshold


@register("contribution")
def contribution(e: GroupEvidence, **_) -> np.ndarray:
    """Share of the consumers' input signal variance: var_j * |W_j|^2 over the group's total.

    In a coupled group a neuron is read at several taps (before and after each residual Add, on
    both sides of a Concat): its contribution sums var_j(tap) * |W_j(consumer)|^2 over every
    consumer, each with the variance of the tensor it actually reads.
    """
    if e.variances is not None and e.sq_norms is not None:
        c = sum(v * q for v, q in zip(e.variances, e.sq_norms))
        c = np.asarray(c, dtype=np.float64) if not np.isscalar(c) else np.zeros(len(e.stats.mean))
        total = c.sum()
        return c / total if total > 0 else c
    c = e.stats.std**2 * e.outgoing_sq_norm
    total = c.sum()
    return c / total if total > 0 else c


@register("absolute")
def absolute(e: GroupEvidence, **_) -> np.ndarray:
    """var_j * |W_j|^2 summed over consumers, not divided by the layer's total: the variance a neuron
    adds to what its consumers write. Comparable across layers when they all write into streams of one
    scale (the residual stream of a post-LayerNorm transformer: every block reads a normalised stream),
    where `contribution`'s per-layer shares are not: a layer whose heads add almost nothing to the stream
    still has shares that sum to 1."""
    if e.variances is not None and e.sq_norms is not None:
        c = sum(v * q for v, q in zip(e.variances, e.sq_norms))
        return np.asarray(c, dtype=np.float64) if not np.isscalar(c) else np.zeros(len(e.stats.mean))
    return e.stats.std**2 * e.outgoing_sq_norm


@register("sensitivity")
def sensitivity(e: GroupEvidence, **_) -> np.ndarray:
    """`absolute`, scaled per group by what its removals were measured to cost the model's outputs and
    divided by what each neuron costs (sensitivity.py; the probes run where calibration data is at
    hand; without it, this is `absolute`)."""
    return absolute(e)


@register("auto")
def auto(e: GroupEvidence, **_) -> np.ndarray:
    """The default: `contribution` or `sensitivity`, whichever saves more at equal output damage on
    calibration samples (autoselect.py; where nothing is probed, this is `contribution`)."""
    return contribution(e)


@register("consumer_share")
def consumer_share(e: GroupEvidence, **_) -> np.ndarray:
    """Per consumer, the neuron's share of that consumer's input signal variance; summed over consumers.

    Equal to `contribution` for a group with one consumer. A neuron that several consumers read
    (a residual stream channel, read by every block and by the head) weighs as much as its
    shares at all of them, so allocation across groups takes more from singly-read layers.
    """
    if e.variances is None or e.sq_norms is None:
        return contribution(e)
    out = np.zeros(len(e.stats.mean))
    for v, q in zip(e.variances, e.sq_norms):
        c = v * q
        total = c.sum()
        if total > 0:
            out += c / total
    return out


@register("apoz")
def apoz(e: GroupEvidence, **_) -> np.ndarray:
    """1 - average percentage of zeros: how often the neuron is active (for ReLU networks)."""
    return 1.0 - e.stats.zero_fraction


@register("variance")
def variance(e: GroupEvidence, **_) -> np.ndarray:
    """Share of the group's activation variance."""
    v = e.stats.std**2
    return v / v.sum() if v.sum() > 0 else v


@register("dead")
def dead(e: GroupEvidence, **_) -> np.ndarray:
    """max |a|: zero exactly for neurons that never fired, so only they fall below any threshold."""
    return e.stats.max_abs


def scores_of(evidence: dict[str, GroupEvidence], criterion: str, **settings) -> dict[str, np.ndarray]:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    return {name: np.asarray(CRITERIA[criterion](e, **settings), dtype=np.float64) for name, e in evidence.items()}


def never_empty(keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    if not keep.any():
        keep = keep.copy()
        keep[int(np.argmax(scores))] = True
    return keep


def keep_required(masks: dict[str, np.ndarray], groups, scores: dict[str, np.ndarray] | None = None
                  ) -> dict[str, np.ndarray]:
    """Keep one neuron (the best scored) in every range a group must not empty: each part of a Split or
    a Slice of its features, which would otherwise become a zero-size tensor; and one in the group.

    The parts come first, so a group whose every neuron was removed keeps one per part, not one more.
    Last, a group cut in units (attention heads) keeps every unit it keeps any neuron of, whole."""
    out = dict(masks)
    for g in groups:
        mask = out.get(g.id)
        if mask is None:
            continue
        group_scores = scores[g.id] if scores is not None and g.id in scores else np.zeros(len(mask))
        for lo, hi in g.nonempty:
            if not mask[lo:hi].any():
                mask = mask.copy()
                mask[lo + int(np.argmax(group_scores[lo:hi]))] = True
        out[g.id] = g.whole_units(never_empty(mask, group_scores))
    return out


def unit_scores(scores: dict[str, np.ndarray], groups, criterion: str) -> dict[str, np.ndarray]:
    """Scores with every neuron of a unit (an attention head) given its unit's: the mean for rankings,
    the max for the threshold criteria (a head goes below a threshold only when all its neurons do)."""
    how = "max" if criterion in ("dead", "seed") else "mean"
    out = dict(scores)
    for g in groups:
        if g.id in out and g.unit > 1:
            out[g.id] = g.unit_scores(out[g.id], how)
    return out


def masks_below(scores: dict[str, np.ndarray], threshold: float, *, inclusive: bool = False,
                allow_empty: bool = False) -> dict[str, np.ndarray]:
    """Remove every neuron whose score is below `threshold` (at or below with `inclusive`).

    With `allow_empty` a group may lose every neuron: for callers that apply `keep_required` next."""
    keep = (lambda m, s: m) if allow_empty else never_empty
    if inclusive:
        return {n: keep(s > threshold, s) for n, s in scores.items()}
    return {n: keep(s >= threshold, s) for n, s in scores.items()}


def masks_for_fraction(scores: dict[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """Remove the `fraction` of all prunable neurons with the lowest scores, across groups.

    Each group's best neuron is never a candidate, so no group is emptied.
    """
    names = list(scores)
    masks = {n: np.ones(len(scores[n]), bool) for n in names}
    candidates = []
    for gi, n in enumerate(names):
        s = scores[n]
        idx = np.delete(np.arange(len(s)), int(np.argmax(s)))
        candidates.append((np.full(len(idx), gi), idx, s[idx]))
    if not candidates:
        return masks
    group_ids = np.concatenate([c[0] for c in candidates])
    neuron_ids = np.concatenate([c[1] for c in candidates])
    values = np.concatenate([c[2] for c in candidates])
    total = sum(len(s) for s in scores.values())
    k = min(int(round(fraction * total)), len(values))
    for i in np.argsort(values, kind="stable")[:k]:
        masks[names[group_ids[i]]][neuron_ids[i]] = False
    return masks


def keep_order(scores: np.ndarray) -> np.ndarray:
    """A group's neurons from the one kept longest to the one removed first: masks_for_fraction removes
    them from the end (lowest score first, the lower index first among equals; the best never) and
    align_masks adds them back from the front, so every mask they make keeps a leading part of it."""
    order = np.argsort(scores, kind="stable")[::-1]
    if len(order):
        best = int(np.argmax(scores))
        order = np.r_[best, order[order != best]]
    return order


def align_masks(masks: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                multiples: dict[str, int]) -> dict[str, np.ndarray]:
    """Keep a multiple of `multiples[group]` neurons in each group, adding back its best removed ones.

    onnxruntime's CPU convolutions run in blocks of 8 channels (16 with AVX-512): 27 channels
    can be slower than 32, while 24 are faster.
    """
    out = {}
    for name, mask in masks.items():
        step = multiples.get(name, 1)
        kept = int(mask.sum())
        target = min(len(mask), -(-kept // step) * step) if step > 1 else kept
        if target > kept:
            mask = mask.copy()
            rank = np.empty(len(mask), int)
            rank[keep_order(scores[name])] = np.arange(len(mask))
            removed = np.flatnonzero(~mask)
            mask[removed[np.argsort(rank[removed])[: target - kept]]] = True  # the best removed ones
        out[name] = mask
    return out


def balance_blocks(masks: dict[str, np.ndarray], groups, scores: dict[str, np.ndarray] | None = None
                   ) -> dict[str, np.ndarray]:
    """Keep equal counts in the channel blocks of every grouped Conv (each set of `NeuronGroup.balanced`):
    every block keeps as many as the block that keeps most (at least one), adding back its best-scored
    removed neurons. Never removes a neuron.

    A range that must not be emptied (`keep_required`'s Split parts) keeps its one neuron first: added
    after balancing, it would break the balance.
    """
    out = dict(masks)
    for g in groups:
        mask = out.get(g.id)
        if mask is None or not getattr(g, "balanced", None):
            continue
        group_scores = scores[g.id] if scores is not None and g.id in scores else np.zeros(len(mask))
        out[g.id] = _balanced(mask, group_scores, g.balanced, g.nonempty)
    return out


def _balanced(mask: np.ndarray, scores: np.ndarray, sets: list, nonempty: list) -> np.ndarray:
    mask = np.array(mask, bool)
    for lo, hi in nonempty:
        if not mask[lo:hi].any():
            mask[lo + int(np.argmax(scores[lo:hi]))] = True
    rows = [np.array([np.arange(lo, hi) for lo, hi in blocks]) for blocks in sets]  # [blocks, width] each
    # Two grouped Convs reading the same neurons in different blocks may each add for the other: repeat
    # until every set is balanced. Each pass that changes anything adds a neuron, so this ends.
    for _ in range(len(mask) + 1):
        changed = False
        for idx in rows:
            kept = mask[idx]
            counts = kept.sum(axis=1)
            target = max(1, int(counts.max()))
            if (counts == target).all():
                continue
            # kept neurons first, then the removed ones by decreasing score; the first `target` stay
            order = np.argsort(-np.where(kept, np.inf, scores[idx]), axis=1, kind="stable")[:, :target]
            mask[np.take_along_axis(idx, order, axis=1)] = True
            changed = True
        if not changed:
            return mask
    raise AssertionError("balancing channel blocks did not converge")


def keep_masks(stats: dict[str, ActivationStats], criterion: str = "dead", groups=None,
               **settings) -> dict[str, np.ndarray]:
    """Keep-masks from statistics alone (no weights): `dead` or the seed's thresholds.

    With `groups`, grouped Convs' blocks keep equal counts (`balance_blocks`) and the ranges they must
    not empty keep a neuron too (see `keep_required`)."""
    evidence = {n: GroupEvidence(None, s, []) for n, s in stats.items()}
    scores = scores_of(evidence, criterion, **settings)
    if groups is not None:
        scores = unit_scores(scores, groups, criterion)
    threshold, inclusive = (0.0, True) if criterion == "dead" else (1.0, False)
    masks = masks_below(scores, threshold, inclusive=inclusive, allow_empty=groups is not None)
    return keep_required(balance_blocks(masks, groups, scores), groups, scores) if groups is not None else masks

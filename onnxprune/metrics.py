"""Metrics: how a pruned model's outputs differ from the original's, with a bound on how much.

A metric is registered by name (`--metric NAME` lists the registry) and builds a *check* for
one model output: a streaming accumulator fed batch by batch with the original's and the
pruned model's outputs (and labels), whose memory does not grow with the number of samples.
At the end a check gives a `Figure`: the observed loss, a one-sided upper confidence bound of
it from paired per-sample evidence (see bounds.py), the budget and whether the bound is within.

`--metric auto` guards every output with what suits it:
- a classifier ([N, classes]) or a single score ([N, 1], compared as decisions at a threshold):
  accuracy with labels (and balanced accuracy when the classes are imbalanced, so a rare class
  cannot collapse unseen), else top-1 agreement; and the change of the scores themselves;
- any other floating-point output: per-channel error, each channel (axis 1) on its own scale,
  so that a collapsed channel cannot hide behind large ones.
The Python API also takes a callable `fn(before, after, labels) -> per-sample losses`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .bounds import binomial_upper, mean_upper, mixed_drop_upper, weighted_drop_upper
from .data import UNLABELED
from .errors import InputError

SCORE_SHARE = 5.0  # % of samples whose score may move by more than --max-score-change


@dataclass
class Budget:
    """How much worse each metric may get (percentage points, cosine, channel error, score change)."""

    max_drop: float = 0.5            # accuracy, agreement, decisions, detections: pp
    max_class_drop: float = 5.0      # balanced accuracy (mean per-class recall) of imbalanced classes: pp
    min_cosine: float = 0.99         # mean cosine similarity
    max_channel_error: float = 0.01  # per-channel squared error over the channel's variance
    max_score_change: float = 0.2    # |change| of a probability that at most SCORE_SHARE % of samples exceed
                                     # without their decision changing
    max_loss: float | None = None    # a callable metric's mean per-sample loss
    decision_threshold: float = 0.5  # single-score outputs: decisions at this score
    detection_score: float = 0.25    # detection metric: a detection is a score at or above this
    channel_axis: int | None = None  # per-channel error: the axis whose entries differ in meaning (None: guess)

    def to_dict(self) -> dict:
        """The budgets a report lists."""
        return {"max_drop": self.max_drop, "min_cosine": self.min_cosine, "max_class_drop": self.max_class_drop,
                "max_channel_error": self.max_channel_error, "max_score_change": self.max_score_change}


@dataclass
class Figure:
    """One metric of one output: observed loss, its upper confidence bound, the budget."""

    metric: str
    label: str
    output: str | None
    loss: float
    bound: float
    budget: float
    samples: int
    unit: str = ""
    method: str = "exact"      # exact (Clopper-Pearson; breaks and fixes: Buehler), t (Student t, approximate), beta (simulated)
    confidence: float = 0.95
    before: float | None = None
    after: float | None = None
    detail: str | None = None
    held_out: bool = True      # False when the samples also fed the statistics (fixed rules hold nothing out)
    folds: int = 0             # > 1: judged by cross-fitting (each fold's samples judged what the others built)
    # A guard vetoes damage the budget's metric cannot see, on what was observed: it fails when its
    # observed loss is over its limit. Its bound is reported, but it is not what is certified (the
    # budget's metrics are): a bound at the limit would decide the amount on noise, not on damage.
    guard: bool = False
    # what the bound was computed from, to say how many samples another budget would need: counts of a
    # rate ({"events", "n"}), breaks and fixes ({"broken", "fixed", "n"}), or nothing (means)
    evidence: dict | None = None

    @property
    def passed(self) -> bool:
        return bool((self.loss if self.guard else self.bound) <= self.budget + 1e-12)

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        where = (f"{self.samples} samples, {self.folds}-fold cross-fitted" if self.folds > 1 else
                 f"{self.samples} held-out samples" if self.held_out else f"{self.samples} samples, not held out")
        if self.metric == "cosine":
            text = (f"mean cosine {1 - self.loss:.4f} ({self.confidence:.0%} lower bound {1 - self.bound:.4f}, "
                    f"{where}; budget >= {1 - self.budget:g})")
        elif self.guard:
            text = (f"{self.label} {_num(self.loss)}{unit} (guard, judged as observed: at most {_num(self.budget)}"
                    f"{unit}; {self.confidence:.0%} upper bound {_num(self.bound)}{unit}, {where})")
        else:
            text = (f"{self.label} {_num(self.loss)}{unit} ({self.confidence:.0%} upper bound {_num(self.bound)}{unit}, "
                    f"{where}; budget {_num(self.budget)}{unit})")
        if self.output:
            text = f"{self.output}: {text}"
        return text + (f"; {self.detail}" if self.detail else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


class Check:
    """A streaming accumulator for one metric of one output."""

    metric = ""
    unit = ""

    def __init__(self, output: int, name: str, budget: Budget, confidence: float):
        self.k, self.name, self.budget, self.confidence = output, name, budget, confidence
        self.n = 0

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    def update(self, before: list[np.ndarray], after: list[np.ndarray], labels: np.ndarray | None) -> None:
        raise NotImplementedError

    def figure(self) -> Figure:
        raise NotImplementedError

    def floor(self, n: int) -> float:
        """The bound an identical model would get on n samples (0 where the bound allows it)."""
        return 0.0

    def limit(self) -> float:
        raise NotImplementedError

    def _figure(self, label, loss, bound, **extra) -> Figure:
        return Figure(self.metric, label, self.name, float(loss), float(bound), float(self.limit()), self.n,
                      self.unit, confidence=self.confidence, **extra)


# ---------------------------------------------------------------- how outputs are read

def decisions(array: np.ndarray, threshold: float) -> np.ndarray | None:
    """Top-1 class per sample of a classifier-like output; a single score is a decision at `threshold`."""
    if array.dtype.kind in "fc" and array.ndim == 2 and array.shape[1] == 1:
        return (array[:, 0] >= threshold).astype(np.int64)
    if array.dtype.kind in "fc" and array.ndim == 2 and array.shape[1] > 1:
        return array.argmax(axis=1)
    if array.ndim == 1 and array.dtype.kind in "iub":
        return array.astype(np.int64)
    return None


def kind_of(array: np.ndarray) -> str:
    """classifier ([N, C] floats), score ([N, 1] floats), labels ([N] ints), values (other floats) or other."""
    if array.dtype.kind in "fc":
        if array.ndim == 2 and array.shape[1] == 1:
            return "score"
        if array.ndim == 2 and array.shape[1] > 1:
            return "classifier"
        return "values" if array.ndim >= 1 else "other"
    if array.ndim == 1 and array.dtype.kind in "iub":
        return "labels"
    return "other"


def n_classes(array: np.ndarray) -> int | None:
    kind = kind_of(array)
    return array.shape[1] if kind == "classifier" else 2 if kind == "score" else None


def as_probabilities(array: np.ndarray, probabilities: bool) -> np.ndarray:
    """Scores as probabilities: kept when they already are, else softmax (classes) or sigmoid (one score)."""
    x = np.asarray(array, dtype=np.float64)
    if probabilities:
        return x
    if x.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probabilities(array: np.ndarray) -> bool:
    return bool(array.size) and float(array.min()) >= 0.0 and float(array.max()) <= 1.0


# ---------------------------------------------------------------- checks

class Accuracy(Check):
    """Accuracy against labels; evidence: the samples the candidate breaks and those it fixes. Samples
    without a label (-1) count whether their decision flipped: one that does not flip cannot break, so
    the flip rate bounds the drop too, and a large unlabeled pool tightens the bound (bounds.py)."""

    metric, unit = "accuracy", "pp"

    def __init__(self, output, name, budget, confidence, labeled_share: float = 1.0):
        super().__init__(output, name, budget, confidence)
        self.correct_before = self.correct_after = self.broken = self.fixed = 0
        self.unlabeled = self.flips = 0
        self.labeled_share = labeled_share  # of the evaluation data, for the identical model's bound

    def _hits(self, before, after, labels):
        threshold = self.budget.decision_threshold
        return decisions(before[self.k], threshold) == labels, decisions(after[self.k], threshold) == labels

    def update(self, before, after, labels):
        known = labels != UNLABELED
        if not known.all():
            t = self.budget.decision_threshold
            flipped = decisions(before[self.k], t)[~known] != decisions(after[self.k], t)[~known]
            self.unlabeled += int((~known).sum())
            self.flips += int(flipped.sum())
            before, after, labels = ([x[known] for x in before], [x[known] for x in after], labels[known])
        b, a = self._hits(before, after, labels)
        self.n += len(b)
        self.correct_before += int(b.sum())
        self.correct_after += int(a.sum())
        self.broken += int((b & ~a).sum())
        self.fixed += int((~b & a).sum())

    def limit(self):
        return self.budget.max_drop

    def floor(self, n):
        labeled = int(round(n * self.labeled_share))
        return 100 * mixed_drop_upper(0, 0, labeled, 0, n - labeled, self.alpha)

    def figure(self):
        before, after = 100 * self.correct_before / max(self.n, 1), 100 * self.correct_after / max(self.n, 1)
        bound = mixed_drop_upper(self.broken, self.fixed, self.n, self.flips, self.unlabeled, self.alpha)
        detail = f"{self.broken} broken, {self.fixed} fixed"
        if self.unlabeled:
            detail += f" of {self.n} labeled; {self.flips} of {self.unlabeled} unlabeled flipped"
        figure = self._figure("accuracy drop", before - after, 100 * bound, before=before, after=after, detail=detail,
                              evidence={"broken": self.broken, "fixed": self.fixed, "n": self.n})
        figure.samples = self.n + self.unlabeled
        return figure


class BalancedAccuracy(Accuracy):
    """The mean over classes of recall: no class may collapse unseen behind the others' accuracy."""

    metric = "balanced_accuracy"

    def __init__(self, output, name, budget, confidence, classes: int, prior: np.ndarray | None = None):
        super().__init__(output, name, budget, confidence)
        self.counts = np.zeros(classes, np.int64)
        self.hit_before = np.zeros(classes, np.int64)
        self.hit_after = np.zeros(classes, np.int64)
        self.class_broken = np.zeros(classes, np.int64)
        self.class_fixed = np.zeros(classes, np.int64)
        self.prior = prior  # class shares, for the identical model's bound before the search

    def update(self, before, after, labels):
        known = labels != UNLABELED  # recall per class needs the class: samples without a label say nothing
        if not known.all():
            before, after, labels = ([x[known] for x in before], [x[known] for x in after], labels[known])
        b, a = self._hits(before, after, labels)
        self.n += len(b)
        k = len(self.counts)
        self.counts += np.bincount(labels, minlength=k)[:k]
        self.hit_before += np.bincount(labels[b], minlength=k)[:k]
        self.hit_after += np.bincount(labels[a], minlength=k)[:k]
        self.class_broken += np.bincount(labels[b & ~a], minlength=k)[:k]
        self.class_fixed += np.bincount(labels[~b & a], minlength=k)[:k]

    def limit(self):
        return self.budget.max_class_drop

    def floor(self, n):
        if self.prior is None:
            return 0.0
        counts = np.round(self.prior * n).astype(np.int64)
        zero = np.zeros(len(counts), np.int64)
        return 100 * weighted_drop_upper(zero, zero, counts, self.alpha)

    def figure(self):
        seen = self.counts > 0
        recall_before = self.hit_before[seen] / self.counts[seen]
        recall_after = self.hit_after[seen] / self.counts[seen]
        drops = 100 * (recall_before - recall_after)
        worst = int(np.flatnonzero(seen)[np.argmax(drops)]) if seen.any() else None
        bound = 100 * weighted_drop_upper(self.class_broken, self.class_fixed, self.counts, self.alpha)
        detail = None if worst is None else (f"worst class {worst}: recall {100 * recall_before[np.argmax(drops)]:.1f} "
                                             f"-> {100 * recall_after[np.argmax(drops)]:.1f} % "
                                             f"({int(self.counts[worst])} samples)")
        fig = self._figure("balanced accuracy drop", float(drops.mean()) if seen.any() else 0.0, bound,
                           before=100 * float(recall_before.mean()) if seen.any() else None,
                           after=100 * float(recall_after.mean()) if seen.any() else None, detail=detail)
        fig.method = "beta"
        return fig


class Agreement(Check):
    """Top-1 decisions that differ from the original's (single scores: decisions at the threshold)."""

    metric, unit = "agreement", "pp"

    def __init__(self, output, name, budget, confidence):
        super().__init__(output, name, budget, confidence)
        self.flips = 0

    def update(self, before, after, labels):
        t = self.budget.decision_threshold
        b, a = decisions(before[self.k], t), decisions(after[self.k], t)
        self.n += b.size
        self.flips += int((b != a).sum())

    def limit(self):
        return self.budget.max_drop

    def floor(self, n):
        return 100 * binomial_upper(0, n, self.alpha)

    def figure(self):
        return self._figure("decisions flipped", 100 * self.flips / max(self.n, 1),
                            100 * binomial_upper(self.flips, self.n, self.alpha),
                            before=100.0, after=100 * (1 - self.flips / max(self.n, 1)), detail=f"{self.flips} flips",
                            evidence={"events": self.flips, "n": self.n})


class ScoreChange(Check):
    """How many samples see a probability move by more than --max-score-change without their decision
    changing (at most 5 % may): the damage decisions cannot see, such as every score shifted by 0.3.
    A flipped decision is the budget metric's evidence already, and a healthy classifier's large moves
    come with flips: counted here they made the guard, not the budget, decide the amount."""

    metric, unit = "score", "%"

    def __init__(self, output, name, budget, confidence):
        super().__init__(output, name, budget, confidence)
        self.moved = 0
        self.largest = 0.0
        self.probabilities: bool | None = None
        self._changes = np.zeros(0)

    def update(self, before, after, labels):
        b, a = np.asarray(before[self.k]), np.asarray(after[self.k])
        if self.probabilities is None:
            self.probabilities = looks_like_probabilities(b)
        pb, pa = as_probabilities(b, self.probabilities), as_probabilities(a, self.probabilities)
        change = np.abs(pa - pb).max(axis=1)
        t = self.budget.decision_threshold
        kept = decisions(pb, t) == decisions(pa, t)
        self.n += len(change)
        self.moved += int(((change > self.budget.max_score_change) & kept).sum())
        self.largest = max(self.largest, float(change[kept].max()) if kept.any() else 0.0)

    def limit(self):
        return SCORE_SHARE

    def floor(self, n):
        return 0.0  # a guard judges what it observes: an identical model moves nothing

    def figure(self):
        return self._figure(f"samples whose probability moves > {self.budget.max_score_change:g} (decision kept)",
                            100 * self.moved / max(self.n, 1), 100 * binomial_upper(self.moved, self.n, self.alpha),
                            detail=f"largest change {self.largest:.3g}", guard=True)


class Cosine(Check):
    """Mean over samples of 1 - cosine similarity of the flattened outputs."""

    metric = "cosine"

    def __init__(self, output, name, budget, confidence):
        super().__init__(output, name, budget, confidence)
        self.total = self.total_sq = self.total_cube = 0.0
        self.lowest = 1.0

    def update(self, before, after, labels):
        b = np.asarray(before[self.k]).reshape(len(before[self.k]), -1)
        a = np.asarray(after[self.k]).reshape(len(b), -1)
        nb = np.sqrt(np.einsum("ij,ij->i", b, b).astype(np.float64))
        na = np.sqrt(np.einsum("ij,ij->i", a, a).astype(np.float64))
        dots = np.einsum("ij,ij->i", b, a).astype(np.float64)
        norms = nb * na
        same = (np.abs(b - a).max(axis=1) == 0).astype(float) if b.size else np.ones(len(b))
        cos = np.clip(np.where(norms > 0, dots / np.where(norms > 0, norms, 1), same), -1.0, 1.0)
        loss = 1.0 - cos
        self.n += len(loss)
        self.total += float(loss.sum())
        self.total_sq += float((loss * loss).sum())
        self.total_cube += float((loss**3).sum())
        self.lowest = min(self.lowest, float(cos.min()) if cos.size else 1.0)

    def limit(self):
        return 1.0 - self.budget.min_cosine

    def figure(self):
        fig = self._figure("1 - cosine", self.total / max(self.n, 1),
                           mean_upper(self.total, self.total_sq, self.n, self.alpha, self.total_cube),
                           detail=f"lowest {self.lowest:.4f}")
        fig.method = "t"
        return fig


class ChannelError(Check):
    """Per channel (axis 1): squared error over the original channel's variance; the worst channel counts.

    A channel of boxes in pixels and a channel of class scores near zero are each judged on their
    own scale, so a wiped-out channel shows as an error near 1 however small its values are.
    """

    metric = "channel"

    def __init__(self, output, name, budget, confidence, axis: int | None = 1):
        super().__init__(output, name, budget, confidence)
        self.channels = None
        self.axis = axis

    def _per_channel(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1 or self.axis is None:
            return x.reshape(len(x), 1, -1)
        x = np.moveaxis(x, self.axis, 1)
        return x.reshape(x.shape[0], x.shape[1], -1)

    def update(self, before, after, labels):
        b, a = self._per_channel(before[self.k]), self._per_channel(after[self.k])
        if self.channels is None:
            c = b.shape[1]
            self.channels, self.positions = c, b.shape[2]
            self.sum_b, self.sum_b2 = np.zeros(c), np.zeros(c)
            self.err, self.err_sq, self.err_cube = np.zeros(c), np.zeros(c), np.zeros(c)
        per_sample = ((a - b) ** 2).sum(axis=2)  # [n, channels]
        self.n += len(b)
        self.sum_b += b.sum(axis=(0, 2))
        self.sum_b2 += (b * b).sum(axis=(0, 2))
        self.err += per_sample.sum(axis=0)
        self.err_sq += (per_sample * per_sample).sum(axis=0)
        self.err_cube += (per_sample**3).sum(axis=0)

    def limit(self):
        return self.budget.max_channel_error

    def figure(self):
        if not self.n:
            return self._figure("worst channel error", 0.0, math.inf)
        cells = self.n * self.positions
        var = np.maximum(self.sum_b2 / cells - (self.sum_b / cells) ** 2, 0.0)
        # a channel the original holds constant is judged on a scale of the typical channel's
        scale = self.positions * np.maximum(var, 1e-2 * float(np.median(var)) + 1e-30)
        loss = self.err / self.n / scale
        bound = np.array([mean_upper(t, s, self.n, self.alpha, c)
                          for t, s, c in zip(self.err, self.err_sq, self.err_cube)]) / scale
        worst = int(np.argmax(bound))
        fig = self._figure("worst channel error", loss[worst], bound[worst],
                           detail=f"worst channel {worst} of {self.channels}")
        fig.method = "t"
        return fig


class Detection(Check):
    """YOLO-style detections ([N, 4 + classes, anchors] or [N, anchors, 5 + classes]) kept and not invented.

    A detection is an anchor whose class score (times objectness in the 5 + classes layout) is at
    least the score threshold; it is kept when the other model has one of the same class whose box
    overlaps it by IoU >= 0.5. The evidence is per image: whether its detections changed at all.
    """

    metric, unit = "detection", "pp"

    def __init__(self, output, name, budget, confidence):
        super().__init__(output, name, budget, confidence)
        self.changed = self.original = self.kept = self.pruned = self.invented = 0
        self.box_error = 0.0

    def _detections(self, x):
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1] < x.shape[2]:  # [N, 4 + classes, anchors]
            boxes, scores = x[:, :4].transpose(0, 2, 1), x[:, 4:].transpose(0, 2, 1)
        else:  # [N, anchors, 5 + classes]
            boxes, scores = x[:, :, :4], x[:, :, 5:] * x[:, :, 4:5]
        cls = scores.argmax(axis=2)
        best = scores.max(axis=2)
        return boxes, cls, best >= self.budget.detection_score

    @staticmethod
    def _gather(boxes, cls, on):
        """Each image's detections first, padded to the most any image has: boxes [n, k, 4], classes, valid."""
        k = max(int(on.sum(axis=1).max()) if on.size else 0, 1)
        order = np.argsort(~on, axis=1, kind="stable")[:, :k]
        valid = np.take_along_axis(on, order, axis=1)
        return np.take_along_axis(boxes, order[..., None], axis=1), np.take_along_axis(cls, order, axis=1), valid

    @staticmethod
    def _iou(a, b):
        """IoU of every box of a [n, ka, 4] with every box of b [n, kb, 4] (centre, size), per image."""
        def corners(x):
            return x[..., 0] - x[..., 2] / 2, x[..., 1] - x[..., 3] / 2, x[..., 0] + x[..., 2] / 2, x[..., 1] + x[..., 3] / 2

        ax0, ay0, ax1, ay1 = (c[:, :, None] for c in corners(a))
        bx0, by0, bx1, by1 = (c[:, None, :] for c in corners(b))
        inter = (np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
                 * np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None))
        union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
        return inter / np.where(union > 0, union, 1)

    def update(self, before, after, labels):
        before, after = np.asarray(before[self.k]), np.asarray(after[self.k])
        step = 64  # images at a time: the IoU table is images x detections x detections
        for start in range(0, len(before), step):
            self._update(before[start:start + step], after[start:start + step])

    def _update(self, before, after):
        bb, bc, bv = self._gather(*self._detections(before))
        ab, ac, av = self._gather(*self._detections(after))
        iou = self._iou(bb, ab)
        match = (iou >= 0.5) & (bc[:, :, None] == ac[:, None, :]) & bv[:, :, None] & av[:, None, :]
        kept = match.any(axis=2)   # the original's detections the pruned model still makes
        real = match.any(axis=1)   # the pruned model's detections the original makes too
        missed = (bv & ~kept).any(axis=1)
        invented = (av & ~real).any(axis=1)
        self.n += len(bb)
        self.changed += int((missed | invented).sum())
        self.original += int(bv.sum())
        self.kept += int(kept.sum())
        self.pruned += int(av.sum())
        self.invented += int((av & ~real).sum())
        best = np.argmax(np.where(match, iou, -1.0), axis=2)  # each kept detection's closest match
        partner = np.take_along_axis(ab, best[..., None], axis=1)
        self.box_error += float(np.abs(partner - bb)[kept].sum())

    def limit(self):
        return self.budget.max_drop

    def floor(self, n):
        return 100 * binomial_upper(0, n, self.alpha)

    def figure(self):
        recall = self.kept / self.original if self.original else 1.0
        precision = 1 - self.invented / self.pruned if self.pruned else 1.0
        detail = (f"detections kept {recall:.1%} of {self.original}, precision {precision:.1%} of {self.pruned}"
                  + (f", box error {self.box_error / max(4 * self.kept, 1):.3g}" if self.kept else ""))
        return self._figure("images whose detections change", 100 * self.changed / max(self.n, 1),
                            100 * binomial_upper(self.changed, self.n, self.alpha), detail=detail,
                            evidence={"events": self.changed, "n": self.n})


class Custom(Check):
    """A callable `fn(before, after, labels) -> per-sample losses`, bounded on its mean (Student t)."""

    metric = "custom"

    def __init__(self, output, name, budget, confidence, fn: Callable):
        super().__init__(output, name, budget, confidence)
        self.fn = fn
        self.total = self.total_sq = self.total_cube = 0.0

    def update(self, before, after, labels):
        loss = np.asarray(self.fn(before, after, labels), dtype=np.float64).reshape(-1)
        if not np.isfinite(loss).all():
            raise InputError("the metric function returned NaN or infinite losses")
        self.n += len(loss)
        self.total += float(loss.sum())
        self.total_sq += float((loss * loss).sum())
        self.total_cube += float((loss**3).sum())

    def limit(self):
        return self.budget.max_loss

    def figure(self):
        fig = self._figure(getattr(self.fn, "__name__", "loss"), self.total / max(self.n, 1),
                           mean_upper(self.total, self.total_sq, self.n, self.alpha, self.total_cube))
        fig.method = "t"
        return fig


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class MetricSpec:
    """A metric: what it needs of an output (`why_not` says why it does not apply) and its check."""

    name: str
    description: str
    why_not: Callable[[np.ndarray, bool], str | None]
    check: type


METRICS: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    if spec.name in METRICS or spec.name == "auto":
        raise ValueError(f"metric {spec.name!r} is already registered")
    METRICS[spec.name] = spec
    return spec


def _classifier_or_score(array, labels):
    return None if kind_of(array) in ("classifier", "score", "labels") else "needs a classifier-like output"


def _float(array, labels):
    return None if array.dtype.kind in "fc" and array.ndim >= 1 else "needs a floating-point output"


def _labelled(array, labels):
    if not labels:
        return "needs labels"
    return _classifier_or_score(array, labels)


def _probabilities(array, labels):
    return None if kind_of(array) in ("classifier", "score") else "needs a [batch, classes] or [batch, 1] score output"


def _detections(array, labels):
    layout_ok = array.ndim == 3 and (array.shape[1] >= 5 if array.shape[1] < array.shape[2] else array.shape[2] >= 6)
    if array.dtype.kind != "f" or not layout_ok:
        return "needs a YOLO-style [batch, 4 + classes, anchors] or [batch, anchors, 5 + classes] output"
    return None


register(MetricSpec("accuracy", "accuracy against labels (drop in pp)", _labelled, Accuracy))
register(MetricSpec("balanced_accuracy", "mean per-class recall against labels (drop in pp)", _labelled,
                    BalancedAccuracy))
register(MetricSpec("agreement", "top-1 decisions that flip (pp); single scores at --decision-threshold",
                    _classifier_or_score, Agreement))
register(MetricSpec("score", "samples whose probability moves by more than --max-score-change without their "
                             "decision changing (at most 5 %)",
                    _probabilities, ScoreChange))
register(MetricSpec("cosine", "mean cosine similarity of each sample's flattened output (--min-cosine)",
                    _float, Cosine))
register(MetricSpec("channel", "worst per-channel squared error over the channel's variance "
                               "(--max-channel-error)", _float, ChannelError))
register(MetricSpec("detection", "images whose YOLO-style detections change (pp)", _detections, Detection))


# ---------------------------------------------------------------- choosing the checks

@dataclass
class Plan:
    """The checks a comparison runs, and why they were chosen (shown in the report)."""

    checks: list  # factories: () -> Check
    explanation: list[str]

    def start(self) -> list[Check]:
        return [make() for make in self.checks]


def _imbalanced(labels: np.ndarray | None, classes: int) -> np.ndarray | None:
    """Class shares when the smallest class has less than half an even share, else None."""
    if labels is not None:
        labels = labels[labels != UNLABELED]
    if labels is None or not len(labels):
        return None
    shares = np.bincount(labels, minlength=classes)[:classes] / len(labels)
    present = shares[shares > 0]
    return shares if len(present) > 1 and present.min() < 0.5 / len(present) else None


def channel_axis(array: np.ndarray, declared: tuple | None, given: int | None = None) -> tuple[int | None, str]:
    """Which axis of an output holds its channels (entries that differ in meaning), and why.

    [N, C, ...] images and [N, features] vectors: axis 1. Rank 3 is ambiguous: [N, 4 + classes,
    anchors] keeps its channels on axis 1, [N, sequence, features] on axis 2. A dimension the
    model declares symbolic is positions (a sequence length); otherwise the smaller one is taken
    for the channels (22 box and class rows against 2,100 anchors). `given` overrides.
    """
    if array.ndim <= 1:
        return None, "one value per sample"
    if given is not None:
        if not -array.ndim < given < array.ndim or given % array.ndim == 0:
            raise InputError(f"--channel-axis {given} is not a non-batch axis of an output of rank {array.ndim}")
        return given % array.ndim, "as given"
    if array.ndim != 3:
        return 1, "[N, C, ...]"
    dims = list(declared) if declared is not None and len(declared) == 3 else [None, None, None]
    symbolic = [not isinstance(d, int) or d <= 0 for d in dims]
    if symbolic[1] and not symbolic[2]:
        return 2, "axis 1 is a sequence"
    if symbolic[2] and not symbolic[1]:
        return 1, "axis 2 is a sequence"
    if array.shape[2] < array.shape[1]:
        return 2, "the smaller of axes 1 and 2"
    return 1, "the smaller of axes 1 and 2"


def plan_checks(metric, names: list[str], probe: list[np.ndarray], labels: np.ndarray | None,
                budget: Budget, confidence: float, outputs: list[str] | None = None,
                declared: list[tuple | None] | None = None) -> Plan:
    """The checks for `metric` ("auto", a registered name or a callable) on the model's outputs.

    `probe` holds the original outputs for a few samples (to see shapes and kinds); `labels`
    the labels of the evaluation data (all of them, for class shares), or None; `declared` the
    model's declared output shapes (symbolic dimensions tell positions from channels).
    """
    if outputs:
        unknown = [o for o in outputs if o not in names]
        if unknown:
            raise InputError(f"--outputs: {', '.join(map(repr, unknown))} not among the model's outputs "
                             f"({', '.join(names)})")
    chosen = [i for i, n in enumerate(names) if not outputs or n in outputs]
    planner = _Planner(names, probe, labels, budget, confidence, declared)
    if labels is not None:
        planner.label_output = labelled_output(names, probe, outputs)
    if planner.label_output is not None:
        check_labels(labels, probe[planner.label_output], names[planner.label_output])
    if callable(metric):
        return planner.custom(metric)
    if metric != "auto":
        return planner.named(metric, chosen)
    return planner.auto(chosen)


class _Planner:
    """Builds a Plan: check factories for outputs of the probe, and a line on each saying why."""

    def __init__(self, names, probe, labels, budget: Budget, confidence: float, declared):
        self.names, self.probe, self.labels, self.declared = names, probe, labels, declared
        self.budget, self.confidence = budget, confidence
        self.label_output: int | None = None
        self.checks, self.explanation = [], []

    def add(self, cls, i, *args) -> None:
        names, budget, confidence = self.names, self.budget, self.confidence
        self.checks.append(lambda cls=cls, i=i, args=args: cls(i, names[i], budget, confidence, *args))

    def plan(self) -> Plan:
        return Plan(self.checks, self.explanation)

    def channel_axis(self, i: int) -> tuple[int | None, str]:
        return channel_axis(self.probe[i], self.declared[i] if self.declared else None, self.budget.channel_axis)

    @property
    def labeled_share(self) -> float:
        """The share of the evaluation samples that have a label."""
        return 1.0 if self.labels is None or not len(self.labels) else float(np.mean(self.labels != UNLABELED))

    def classes(self, i: int) -> int:
        return n_classes(self.probe[i]) or int(self.labels.max()) + 1  # -1 (no label) is below every class

    def custom(self, metric) -> Plan:
        budget, confidence = self.budget, self.confidence
        if budget.max_loss is None:
            raise InputError("a metric function needs a budget: max_loss=")
        self.checks.append(lambda: Custom(-1, None, budget, confidence, metric))
        self.explanation.append(f"metric: {getattr(metric, '__name__', 'function')} (mean per-sample loss "
                                f"<= {budget.max_loss:g})")
        return self.plan()

    def named(self, metric: str, chosen: list[int]) -> Plan:
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; choose from auto, {', '.join(METRICS)}")
        spec = METRICS[metric]
        labelled = metric in ("accuracy", "balanced_accuracy") and self.label_output is not None
        reasons = {}
        for i in [self.label_output] if labelled else chosen:
            why = spec.why_not(self.probe[i], self.labels is not None)
            if why is not None:
                reasons[self.names[i]] = why
                continue
            if spec.check is ChannelError:
                self.add(ChannelError, i, self.channel_axis(i)[0])
            elif spec.check is BalancedAccuracy:
                classes = self.classes(i)
                self.add(BalancedAccuracy, i, classes, _imbalanced(self.labels, classes))
            elif spec.check is Accuracy:
                self.add(Accuracy, i, self.labeled_share)
            else:
                self.add(spec.check, i)
            self.explanation.append(f"metric: {metric} on {self.names[i]} {_shape(self.probe[i])}")
        if not self.checks:
            raise InputError(f"metric {metric!r} {next(iter(reasons.values()), 'applies to no output')}")
        return self.plan()

    def auto(self, chosen: list[int]) -> Plan:
        for i in chosen:
            kind = kind_of(self.probe[i])
            if kind in ("classifier", "score", "labels"):
                self._decisions(i, kind)
            elif kind == "values":
                axis, why = self.channel_axis(i)
                self.add(ChannelError, i, axis)
                channels = self.probe[i].shape[axis] if axis is not None else 1
                self.explanation.append(f"metric: per-channel error on {self.names[i]} {_shape(self.probe[i])} "
                                        f"({channels} channel(s) on axis {axis}, {why}; not a classifier)")
        if not self.checks:
            raise InputError("no model output can be compared (neither classifier-like nor floating point)")
        return self.plan()

    def _decisions(self, i: int, kind: str) -> None:
        """A classifier-like output: accuracy with labels (and balanced accuracy when the classes are
        imbalanced), else decision agreement; and for scores, the score change guard."""
        name, shape = self.names[i], _shape(self.probe[i])
        if i == self.label_output:
            self.add(Accuracy, i, self.labeled_share)
            why = "labels"
            if self.labeled_share < 1:
                why += (f" on {self.labeled_share:.0%} of the samples; the others count decision flips, which bound "
                        "the drop too")
            classes = self.classes(i)
            shares = _imbalanced(self.labels, classes)
            if shares is not None:
                self.add(BalancedAccuracy, i, classes, shares)
                why += (f", imbalanced classes: also balanced accuracy, drop <= {self.budget.max_class_drop:g} pp, "
                        "so that a rare class cannot collapse")
            self.explanation.append(f"metric: accuracy on {name} {shape} ({why})")
        else:
            self.add(Agreement, i)
            self.explanation.append(f"metric: decision agreement on {name} {shape} (no labels for it)")
        if kind in ("classifier", "score"):
            self.add(ScoreChange, i)
            self.explanation.append(f"guard: score change on {name} (at most {SCORE_SHARE:g} % of samples may move "
                                    f"a probability by more than {self.budget.max_score_change:g} without their "
                                    "decision changing)")


def labelled_output(names: list[str], probe: list[np.ndarray], outputs: list[str] | None = None) -> int | None:
    """The output labels are compared with: the first classifier-like one (among `outputs`)."""
    return next((i for i, n in enumerate(names) if (not outputs or n in outputs)
                 and kind_of(probe[i]) in ("classifier", "score", "labels")), None)


def check_labels(labels: np.ndarray, output: np.ndarray, name: str) -> None:
    """Labels a classifier output cannot produce make accuracy meaningless (0 % before and after)."""
    from .data import check_labels as check

    check(labels, n_classes(output), f"labels for output {name!r}")


def _shape(array: np.ndarray) -> str:
    return "[" + ", ".join(["N", *map(str, array.shape[1:])]) + "]"


def resolvable(plan: Plan, n: int) -> list[str]:
    """Warnings for checks whose bound cannot reach their budget on n samples even for an identical model."""
    out = []
    for check in plan.start():
        floor = check.floor(n)
        if floor > check.limit():
            need = _samples_needed(check)
            out.append(f"{check.name or 'output'}: {n} samples judging candidates cannot show {check.metric} within "
                       f"{check.limit():g}{' ' + check.unit if check.unit else ''} at {check.confidence:.0%} "
                       f"confidence (an identical model's bound is {floor:.3g}); about "
                       f"{need if need else 'more than 10 million'} samples would be needed")
    return out


def _samples_needed(check: Check, most: int = 10_000_000) -> int | None:
    """The fewest samples on which an identical model's bound fits the check's budget (its floor falls with n)."""
    if check.floor(most) > check.limit():
        return None
    low, high = 1, most
    while low < high:
        mid = (low + high) // 2
        if check.floor(mid) <= check.limit():
            high = mid
        else:
            low = mid + 1
    return low

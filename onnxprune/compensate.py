"""How the consumers of pruned groups make up for removed neurons: none, bias folding or refit.

Every decision here is taken on the calibration data only (statistics, Gram matrices, the
sequential refit's passes), so the held-out data that judges candidates stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .criteria import GroupEvidence, keep_order
from .data import Dataset
from .graph import GraphIndex
from .groups import Consumer, NeuronGroup, consumer_effect, keep_of
from .reading import consumer_readings, plan_grams
from .refit import DEFAULT_RIDGE, ConsumerUpdate, Gram, RidgeSystems, consumer_update
from .runtime import tapped_model
from .sequential import OriginalTaps, refit_sequentially, residual_input
from .session import RuntimeOptions, make_session
from .stats import ActivationStats

COMPENSATIONS = ("none", "fold", "refit")


# The sequential refit replays the calibration samples in this many interleaved parts (every PARTS-th sample,
# each part spread over the whole data), so that it can stop after the parts that hold enough rows (sequential.py).
REPLAY_PARTS = 8


@dataclass
class Replay:
    """The calibration samples, for running them again (the sequential refit): the data, its batches,
    the padding mask and the runtime options."""

    data: Dataset
    batch_size: int = 256
    mask: str | None = None
    options: RuntimeOptions = field(default_factory=RuntimeOptions)

    @property
    def parts(self) -> int:
        """Interleaved parts of at least one batch each (one: the data in its order, for a fixed batch dimension)."""
        if self.data.fixed_batch:
            return 1
        return max(1, min(REPLAY_PARTS, self.data.n_samples // self.data.batch_size(self.batch_size)))

    def batches(self):
        """(batch number, feeds, whether the batch ends its part) over the samples, part by part: part p holds
        samples p, p + parts, p + 2 parts, ..., so the first k parts are k / parts of the data, spread over all
        of it (a data file sorted by class gives every class to every part). Every pass numbers the same
        batches alike."""
        parts, n, b = self.parts, self.data.n_samples, 0
        for p in range(parts):
            data = self.data if parts == 1 else self.data.subset(np.arange(p, n, parts))
            previous = None
            for feeds in data.batches(self.batch_size):
                if previous is not None:
                    yield b, previous, False
                    b += 1
                previous = feeds
            if previous is not None:
                yield b, previous, True
                b += 1


class Compensation:
    """Per consumer of every prunable group: its weight effect, and its update for given keep-masks.

    `mode` is "none" (the seed exactly), "fold" (removed neurons' means into the next bias) or
    "refit" (least squares, kept per consumer only where it beats folding out of sample on the
    calibration folds). Every consumer with a reading (reading.py: a Gemm/MatMul, a Conv over its
    im2col patches per channel block, a Gemm behind a Flatten) is refit from the Gram matrices of what
    it reads, whatever group or groups it reads: the consumers of a residual stream each from their own
    tap, with the one keep-mask. `sequential` re-solves the refit consumers in graph order on the pruned
    model's own activations (sequential.py), one calibration pass per reading (needs `replay`: the
    calibration data).
    """

    def __init__(self, model: onnx.ModelProto, index: GraphIndex, groups: list[NeuronGroup],
                 stats: dict[str, ActivationStats], *, mode: str = "refit",
                 calibration_grams: dict[str, Gram] | None = None, fold_grams: dict[str, Gram] | None = None,
                 tap_stats: dict[str, ActivationStats] | None = None, replay: Replay | None = None,
                 ridge: float = DEFAULT_RIDGE, blocks: list | None = None):
        if mode not in COMPENSATIONS:
            raise ValueError(f"unknown compensation {mode!r}")
        self.model, self.index, self.mode = model, index, mode
        self.all_groups = groups
        self.groups = [g for g in groups if g.prunable and g.id in stats]
        self._by_id = {g.id: g for g in self.groups}
        self.stats = stats
        # Per tap tensor; a caller with group statistics only (plain groups) gets them as the taps'.
        self.tap_stats = dict(tap_stats) if tap_stats else {}
        for g in self.groups:
            if g.single_tap is not None:
                self.tap_stats.setdefault(g.single_tap, stats[g.id])
        self.cal_grams, self.fold_grams = calibration_grams or {}, fold_grams or {}
        # A consumer's refit reads its group's two Gram matrices only: the others wait on disk
        # (an encoder's FFN layers hold 8 x 2 x 34 MB of them, against one consumer's 67 MB).
        for gram in (*self.cal_grams.values(), *self.fold_grams.values()):
            gram.offload()
        self.replay, self.ridge = replay, ridge
        self.blocks = list(blocks or [])  # residual blocks (groups.blocks) a candidate may remove whole
        # Every consumer once: a consumer of a Concat reads several groups, and is updated for all at once.
        self.consumers: dict[int, Consumer] = {}
        for g in self.groups:
            for c in g.consumer_info.values():
                self.consumers.setdefault(c.node, c)
        self.effects = {node: consumer_effect(index, c, c.width) for node, c in self.consumers.items()}
        self.readings = consumer_readings(index, self.groups)
        # why a consumer folds although the refit applies to it (its Gram matrix would be too large)
        too_large = plan_grams(self.readings.values())[1]
        self.notes = {node: f"{index.node_name(node)} is folded, not refit: {too_large[r.key]}"
                      for node, r in self.readings.items() if r.key in too_large}
        self.evidence = {g.id: self._evidence(g) for g in self.groups}
        self._original_taps = None
        self._original_cache: OriginalTaps | None = None
        self._systems: dict[int, RidgeSystems] = {}
        # Scores per group (higher: kept longer), from the selection: the order in which a search's
        # candidates remove each consumer's inputs, so that its refits share one factorisation.
        self.priority: dict[str, np.ndarray] | None = None
        self.searching = False  # set by a search: many kept sets per consumer, worth one factorisation each

    def _evidence(self, g: NeuronGroup) -> GroupEvidence:
        """Each consumer's weights and its tap's variance, on the group's neurons (zero where it reads none)."""
        weights, sq_norms, variances = [], [], []
        for node in g.consumer_nodes:
            c = g.consumer_info[node]
            w, sq = self.effects[node]
            var = self.tap_stats[c.tap].std ** 2 if c.tap in self.tap_stats else None
            if c.pieces(g.id) == [(0, g.size, 0, g.size)] and c.width == g.size:
                weights.append(w)
                sq_norms.append(sq)
                variances.append(var if var is not None else self.stats[g.id].std ** 2)
                continue
            gw, gsq, gvar = np.zeros((g.size, w.shape[1])), np.zeros(g.size), np.zeros(g.size)
            for t_lo, t_hi, g_lo, g_hi in c.pieces(g.id):
                gw[g_lo:g_hi] += w[t_lo:t_hi]
                gsq[g_lo:g_hi] += sq[t_lo:t_hi]
                gvar[g_lo:g_hi] = var[t_lo:t_hi] if var is not None else self.stats[g.id].std[g_lo:g_hi] ** 2
            weights.append(gw)
            sq_norms.append(gsq)
            variances.append(gvar)
        return GroupEvidence(g, self.stats[g.id], weights, sq_norms, variances)

    def note_lines(self, most: int = 3) -> list[str]:
        """What to tell a user about consumers that fold although the refit applies to them (at most
        `most` lines, then a count)."""
        if self.mode != "refit":
            return []
        notes = list(self.notes.values())
        more = [f"... and {len(notes) - most} more consumers folded, not refit, for the memory caps of "
                "onnxprune.reading"] if len(notes) > most else []
        return notes[:most] + more

    def _grams(self, node: int) -> tuple[list, list] | None:
        """The consumer's Gram matrices (calibration, fold) per channel block; None when it has none."""
        r = self.readings.get(node)
        if r is None or not all(k in self.cal_grams for k in r.block_keys()):
            return None
        return [self.cal_grams[k] for k in r.block_keys()], [self.fold_grams.get(k) for k in r.block_keys()]

    @property
    def can_refit_sequentially(self) -> bool:
        return self.mode == "refit" and self.replay is not None and any(
            self._grams(node) is not None for node in self.consumers)

    def updates(self, masks: dict[str, np.ndarray], sequential: bool = False) -> dict[int, ConsumerUpdate]:
        """Each consumer's update for these keep-masks (independently, or sequentially refit)."""
        out = {}
        for node, c in self.consumers.items():
            keep = keep_of(c.layout, masks)
            grams = self._grams(node) if self.mode == "refit" else None
            if grams is None:  # no reading (ConvTranspose, ...), no Gram (too large), or not refitting
                mode = "fold" if self.mode == "refit" else self.mode
                if not c.spec.foldable:  # a quantised op without a bias to fold into (QLinearMatMul)
                    mode = "none"
                out[node] = consumer_update(self.effects[node][0], keep, self.tap_stats[c.tap].mean, mode=mode)
                out[node].note = self.notes.get(node) if out[node].method == "fold" else None
            else:
                out[node] = self._refit(node, keep, *grams)
        if sequential and self.can_refit_sequentially:
            refit_sequentially(self, masks, out)
        return out

    def _refit(self, node: int, keep: np.ndarray, calibration: list[Gram], folds: list) -> ConsumerUpdate:
        """One consumer's refit, block by block (a grouped Conv's channel blocks; one block otherwise), each
        kept only where it beats folding out of sample. A channel is `repeat` rows of the problem."""
        c, r = self.consumers[node], self.readings[node]
        matrix = self.matrix(node)
        per_in, per_out = r.channels // r.blocks, matrix.shape[1] // r.blocks
        mean = self.tap_stats[c.tap].mean
        order = None if self.priority is None else keep_order(keep_of(c.layout, self.priority))
        parts = []
        for b in range(r.blocks):
            chans, cols = slice(b * per_in, (b + 1) * per_in), slice(b * per_out, (b + 1) * per_out)
            if (node, b) not in self._systems:  # kept across kept sets: a search solves the same block often
                local = None if order is None else order[(order >= chans.start) & (order < chans.stop)] - chans.start
                self._systems[(node, b)] = RidgeSystems(matrix[:, cols], self.ridge, _rows_order(local, r.repeat),
                                                        factorise=self.searching)
            parts.append(consumer_update(matrix[:, cols], np.repeat(keep[chans], r.repeat),
                                         np.repeat(mean[chans], r.repeat), mode="refit", calibration=calibration[b],
                                         fold=folds[b], ridge=self.ridge, systems=self._systems[(node, b)]))
        if len(parts) == 1:
            return parts[0]
        return _joined(parts, matrix, np.repeat(keep, r.repeat).reshape(r.blocks, -1))

    def matrix(self, node: int) -> np.ndarray:
        """The consumer's weight as the matrix its reading's rows multiply ([channels x repeat, outputs])."""
        c = self.consumers[node]
        if c.repeat == 1 and not c.spec.channels_first:
            return self.effects[node][0]  # a Gemm/MatMul's effect is its matrix
        w = c.view.effective(self.index.constant_value(c.view.name)).astype(np.float64)
        return c.spec.matrix(self.index.nodes[node], w)

    def original_taps(self):
        """A session of the original tapped at every reading's tap, and their values over the calibration
        batches on disk (None when too large): made once, for every reading and candidate."""
        if self._original_taps is None:
            readers: dict[str, list] = {}  # per tap: the readings whose passes read it (and their rows' tap)
            for node, r in self.readings.items():
                for tap in {r.tap, residual_input(self.index, node)} - {None}:
                    readers.setdefault(tap, []).append((r.tap, r))
            taps = sorted(readers)
            self._original_taps = make_session(tapped_model(self.model, taps, self.index), self.replay.options)
            self._original_cache = OriginalTaps.record(self._original_taps, taps, self.replay, readers)
        return self._original_taps, self._original_cache


def _rows_order(channels: np.ndarray | None, repeat: int) -> np.ndarray | None:
    """A channel order as an order of the rows of the problem: each channel's `repeat` rows together."""
    if channels is None or repeat == 1:
        return channels
    return (np.asarray(channels)[:, None] * repeat + np.arange(repeat)).reshape(-1)


def _joined(parts: list[ConsumerUpdate], matrix: np.ndarray, keep: np.ndarray) -> ConsumerUpdate:
    """The blocks' updates as one ([kept rows per block, outputs]: block b's outputs read only its rows):
    a refit when some block refits, the folded blocks keeping their weight rows."""
    per_out = matrix.shape[1] // len(parts)
    if all(p.method == "none" for p in parts):
        return parts[0]
    bias = np.concatenate([np.zeros(per_out) if p.bias_delta is None else p.bias_delta for p in parts])
    errors = [sum(getattr(p, e) or 0.0 for p in parts) for e in ("error_fold", "error_refit")]
    if all(p.weight is None for p in parts):
        return ConsumerUpdate(None, bias, "fold", *errors)
    weight = np.zeros((int(keep[0].sum()), matrix.shape[1]))
    for b, p in enumerate(parts):
        cols = slice(b * per_out, (b + 1) * per_out)
        weight[:, cols] = p.weight if p.weight is not None else matrix[keep[b], cols]
    return ConsumerUpdate(weight, bias, "refit", *errors)

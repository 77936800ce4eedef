"""How the consumers of pruned groups make up for removed neurons: none, bias folding or refit.

Every decision here is taken on the calibration data only (statistics, Gram matrices, the
sequential refit's passes), so the held-out data that judges candidates stays untouched.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx

from .blockselect import removals
from .criteria import GroupEvidence, keep_order
from .data import Dataset
from .graph import GraphIndex
from .groups import Consumer, NeuronGroup, consumer_effect, keep_of
from .refit import DEFAULT_RIDGE, ConsumerUpdate, Gram, RidgeSystems, SequentialGram, consumer_update
from .rewrite import apply_masks
from .runtime import tapped_model
from .session import RuntimeOptions, make_session, run
from .stats import ActivationStats

COMPENSATIONS = ("none", "fold", "refit")


@dataclass
class Replay:
    """The calibration samples, for running them again (the sequential refit): the data, its batches,
    the padding mask and the runtime options."""

    data: Dataset
    batch_size: int = 256
    mask: str | None = None
    options: RuntimeOptions = field(default_factory=RuntimeOptions)


class Compensation:
    """Per consumer of every prunable group: its weight effect, and its update for given keep-masks.

    `mode` is "none" (the seed exactly), "fold" (removed neurons' means into the next bias) or
    "refit" (least squares, kept per consumer only where it beats folding out of sample on the
    calibration folds). `sequential` refits consumers in graph order on the pruned model's own
    activations, one calibration pass per refit layer (needs `replay`: the calibration data).
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

    def _gram_group(self, c: Consumer) -> str | None:
        """The group whose Gram matrices a consumer's refit may use: it reads that group's one tap, whole."""
        gid = c.single_group
        group = self._by_id.get(gid)
        if group is None or group.single_tap != c.tap:
            return None
        return gid

    @property
    def can_refit_sequentially(self) -> bool:
        return self.mode == "refit" and self.replay is not None and any(
            c.refittable and self._gram_group(c) is not None for c in self.consumers.values())

    def updates(self, masks: dict[str, np.ndarray], sequential: bool = False) -> dict[int, ConsumerUpdate]:
        """Each consumer's update for these keep-masks (independently, or sequentially refit)."""
        out = {}
        for node, c in self.consumers.items():
            keep = keep_of(c.layout, masks)
            gid = self._gram_group(c)
            # Conv consumers, Flatten-ed channels and consumers of several groups (or of a Concat or a
            # Split) are folded: the refit is closed-form for a Gemm/MatMul reading one group's tap.
            mode = self.mode
            if mode == "refit" and not (c.refittable and gid is not None):
                mode = "fold"
            weight = self.effects[node][0]
            systems = None
            if mode == "refit":  # kept across kept sets: a search solves the same consumer again and again
                if node not in self._systems:
                    order = None if self.priority is None else keep_order(keep_of(c.layout, self.priority))
                    self._systems[node] = RidgeSystems(weight, self.ridge, order, factorise=self.searching)
                systems = self._systems[node]
            out[node] = consumer_update(weight, keep, self.tap_stats[c.tap].mean, mode=mode,
                                        calibration=self.cal_grams.get(gid) if gid else None,
                                        fold=self.fold_grams.get(gid) if gid else None, ridge=self.ridge,
                                        systems=systems)
        if sequential and self.can_refit_sequentially:
            self._refit_sequentially(masks, out)
        return out

    def _refit_sequentially(self, masks: dict[str, np.ndarray], updates: dict[int, ConsumerUpdate]) -> None:
        """Refit layer by layer on the pruned model's own activations, in graph order.

        The independent refit maps the *original* activations of the kept neurons to the original
        outputs; once earlier layers are pruned the consumers see other activations. Here each
        consumer that chose the refit is solved, in turn, from the activations the model pruned so
        far gives it to the original model's outputs, with both models run on the same calibration
        batches: one pass per refit layer.
        """
        single = [g for g in self.groups if g.single_tap is not None]
        replay = self.replay
        if self._original_taps is None:
            taps = sorted({g.single_tap for g in single})
            self._original_taps = make_session(tapped_model(self.model, taps, self.index), replay.options)
            # one pass of the original for every layer and candidate, kept in files, when they are not too big
            self._original_cache = OriginalTaps.record(self._original_taps, {g.single_tap: g.size for g in single},
                                                       replay)
        original, cache = self._original_taps, self._original_cache
        for g in sorted(single, key=lambda g: g.producer_node):
            keep = masks[g.id]
            tap = g.single_tap
            refit = [c for c in g.consumer_nodes if updates[c].method == "refit"]
            if keep.all() or not refit:
                continue
            current = apply_masks(self.model, self.all_groups, masks, updates=updates, index=self.index,
                                  check_shapes=False, blocks=removals(self.blocks, masks, self.tap_stats))
            if not any(tap in n.output for n in current.graph.node):
                continue  # read inside a residual branch that went: its consumers went too
            # pruning changes the tap's width, not its dtype: the original index can type it
            pruned = make_session(tapped_model(current, [tap], self.index), replay.options)
            k = int(keep.sum())
            normal = SequentialGram(k, g.size)
            for b, feeds in enumerate(replay.data.batches(replay.batch_size)):
                x_tilde = np.asarray(run(pruned, feeds, replay.options, [tap], purpose="refit")[0])
                if cache is not None:
                    x = cache.read(tap, b)
                else:
                    x = _rows(np.asarray(run(original, feeds, replay.options, [tap], purpose="refit")[0]),
                              g.size, feeds, replay.mask)
                normal.update(_rows(x_tilde, k, feeds, replay.mask), x)
            for node in g.consumer_nodes:
                if node in refit:
                    theta = normal.solve(self.effects[node][0], self.ridge)
                    updates[node] = ConsumerUpdate(theta[:-1], theta[-1], "refit")


def _rows(x: np.ndarray, width: int, feeds: dict, mask: str | None) -> np.ndarray:
    """A tap's activations as rows of `width` features, without the padding positions `mask` marks."""
    positions = None if mask is None else np.asarray(feeds[mask]) != 0
    rows = positions.reshape(-1) if positions is not None and positions.shape == x.shape[:-1] else None
    x = x.reshape(-1, width)
    return x if rows is None else x[rows]


class OriginalTaps:
    """The original model's activations at the refit taps over the calibration batches, written to a
    file per tap in one pass and read back batch by batch: the sequential refit needs them for every
    layer of every candidate, and recomputing them ran the original's prefix once per layer and
    candidate. On disk, not in memory (samples x tap widths x 4 bytes); not kept above LIMIT bytes."""

    LIMIT = 1 << 30

    def __init__(self, directory: tempfile.TemporaryDirectory, paths: dict[str, str], counts: dict[str, list[int]],
                 widths: dict[str, int], dtypes: dict[str, np.dtype]):
        self._directory, self.paths, self.counts, self.widths, self.dtypes = directory, paths, counts, widths, dtypes
        self._starts = {t: np.concatenate([[0], np.cumsum(c)]) for t, c in counts.items()}

    @classmethod
    def record(cls, session, widths: dict[str, int], replay: Replay) -> "OriginalTaps | None":
        """One pass of `session` over the calibration data; None (nothing kept) when the files would pass LIMIT."""
        data, batch_size, options, mask = replay.data, replay.batch_size, replay.options, replay.mask
        taps = sorted(widths)
        directory = tempfile.TemporaryDirectory(prefix="onnxprune-taps-")
        counts: dict[str, list[int]] = {t: [] for t in taps}
        dtypes: dict[str, np.dtype] = {}
        paths = {t: os.path.join(directory.name, f"{k}.bin") for k, t in enumerate(taps)}
        files = {t: open(paths[t], "wb") for t in taps}
        written, batches = 0, -(-data.n_samples // max(1, data.batch_size(batch_size)))
        try:
            for b, feeds in enumerate(data.batches(batch_size)):
                values = run(session, feeds, options, taps, purpose="refit")
                for tap, value in zip(taps, values):
                    x = np.ascontiguousarray(_rows(np.asarray(value), widths[tap], feeds, mask))
                    dtypes[tap] = x.dtype
                    x.tofile(files[tap])
                    counts[tap].append(len(x))
                    written += x.nbytes
                if b == 0 and written * batches > cls.LIMIT:
                    return None
        finally:
            for f in files.values():
                f.close()
        if written > cls.LIMIT:
            return None
        return cls(directory, paths, counts, widths, dtypes)  # the directory goes with the cache

    def read(self, tap: str, batch: int) -> np.ndarray:
        width, dtype = self.widths[tap], self.dtypes[tap]
        start, count = int(self._starts[tap][batch]), self.counts[tap][batch]
        return np.fromfile(self.paths[tap], dtype=dtype, count=count * width,
                           offset=start * width * dtype.itemsize).reshape(count, width)

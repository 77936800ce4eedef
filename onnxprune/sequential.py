"""The sequential refit: consumers solved in graph order on the pruned model's own activations.

The independent refit (compensate.py) maps the *original* activations of the kept channels to the
original outputs; once earlier layers are pruned, a consumer sees other activations. Here each consumer
that chose the refit is solved, in turn, from what the model pruned so far feeds it (read as the
consumer reads it: positions, im2col patches per channel block, flattened channels; reading.py) to the
original model's outputs, with both models run on the same calibration batches: one pass of the
pruned model per reading (consumers that read the same rows share it), which stops at the end of the
first replay parts that give it ROWS_PER_UNKNOWN rows per unknown (a Conv's patches: often one part
of eight). The original's taps are recorded once, on disk, for every reading and candidate (OriginalTaps).

Residual blocks the masks remove (blockselect) are removed in the pruned model the refit reads, as in
the candidate itself: the consumers downstream are solved on the stream without the branch (and one
feeding a residual Add makes up for it too, RESIDUAL_TARGETS), and the consumers inside a removed
branch, which go with it, are not solved at all. A consumer that removes nothing is solved as well when
the other side of the residual Add it feeds lies downstream of a change (DOWNSTREAM): it makes up for the
stream's error there.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import numpy as np

from .blockselect import outermost_removed, removals
from . import scratch
from .groups import keep_of
from .reading import Reading
from .refit import ConsumerUpdate, SequentialGram
from .rewrite import apply_masks
from .runtime import tapped_model
from .session import make_session, run


# Rows of a reading's normal equations per unknown (its kept columns and the bias) after which its pass stops
# at the end of a replay part (compensate.Replay): a k x k Conv reads hundreds of rows per sample, so a part of
# the calibration samples determines its solution, and replaying all of them for every reading and candidate
# was most of the default search's time on convolutional models. A Gemm reads one row per sample: it takes all.
ROWS_PER_UNKNOWN = 256
RESIDUAL_TARGETS = True  # a consumer feeding a residual Add also makes up for the error of the Add's other input
DOWNSTREAM = True  # also re-solve the consumers that keep every input and feed a residual Add that lost something
# Such a consumer whose rows and residual side moved by less than this (sum of squared changes over sum of
# squares) keeps its weights: nothing upstream changed them (exactly-dead neurons removed, say).
UNCHANGED = 1e-12


def refit_sequentially(comp, masks: dict[str, np.ndarray], updates: dict[int, ConsumerUpdate]) -> None:
    """Re-solve, in graph order, every consumer of `comp` (a Compensation) whose update is a refit, and those
    that keep every input but feed a residual Add downstream of a change (DOWNSTREAM, _downstream)."""
    gone = {n for b in outermost_removed(comp.blocks, masks) for n in b.nodes}  # go with their branch
    downstream = _downstream(comp, masks, updates, gone) if DOWNSTREAM else set()
    todo = _in_order(comp, updates, gone, downstream)
    if not todo:
        return
    replay = comp.replay
    original = comp.original_taps()
    blocks = removals(comp.blocks, masks, comp.tap_stats)
    for reading, nodes in todo:
        current = apply_masks(comp.model, comp.all_groups, masks, updates=updates, index=comp.index,
                              check_shapes=False, blocks=blocks)
        track = set(nodes) <= downstream  # solved only if what it reads or feeds moved: measure how far
        targets = Targets(comp, nodes, masks, track)
        # pruning changes the tap's width, not its dtype: the original index can type it
        pruned = make_session(tapped_model(current, [reading.tap, *targets.tensors], comp.index), replay.options)
        keep = keep_of(comp.consumers[nodes[0]].layout, masks)
        normals, moved = _normal_equations(reading, keep, targets, pruned, original, replay, track)
        if track and max(moved, targets.moved()) <= UNCHANGED:
            continue  # reads what the original reads, and the stream it feeds lost nothing: its weights stay
        for node, update in zip(nodes, _solved(normals, targets.matrices, keep, reading, comp.ridge)):
            updates[node] = replace(update, error_fold=updates[node].error_fold,
                                    error_refit=updates[node].error_refit)


def residual_input(index, node: int) -> str | None:
    """The other input of the residual Add the consumer's output goes into (through a constant bias Add at
    most), when that is all that reads it: the block output the consumer can also make up for."""
    out = index.nodes[node].output[0]
    for _ in range(2):
        readers = index.readers.get(out, [])
        if len(readers) != 1 or out in index.graph_outputs:
            return None
        add, position = readers[0]
        n = index.nodes[add]
        if n.op_type != "Add" or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
            return None
        other = n.input[1 - position]
        if not index.is_constant(other):
            same = index.shape(other) is not None and index.shape(other) == index.shape(out)
            return other if same and other != out else None
        out = n.output[0]
    return None


class Targets:
    """What the consumers of one reading are solved to reproduce: the original's outputs Z W, and for a
    consumer feeding a residual Add (RESIDUAL_TARGETS), those plus the error of the Add's other input
    (original minus pruned, on the channels the Add keeps), so the block output after the Add is what
    the consumer reproduces: the skip path's damage is made up where it lands."""

    def __init__(self, comp, nodes: list[int], masks: dict[str, np.ndarray], track: bool = False):
        self.matrices = [comp.matrix(node) for node in nodes]
        reading = comp.readings[nodes[0]]
        self.residual = {k: residual_input(comp.index, node) for k, node in enumerate(nodes)} \
            if RESIDUAL_TARGETS and reading.blocks == 1 else {}
        self.residual = {k: t for k, t in self.residual.items() if t is not None}
        self.tensors = sorted(set(self.residual.values()))
        self.kept = {k: _output_keep(comp, nodes[k], masks, m.shape[1])
                     for k, m in enumerate(self.matrices) if k in self.residual}
        self.axis = 1 - len(comp.consumers[nodes[0]].view.shape) if comp.consumers[nodes[0]].spec.channels_first \
            else -1
        self.track = track  # sum up how much the residual sides lost (for moved())
        self._lost, self._size = 0.0, 0.0  # squared sums of what the residual sides lost, and of their values

    def moved(self) -> float:
        """How much the residual sides lost, relative to their size (0 without residual targets)."""
        return self._lost / self._size if self._size > 0 else (0.0 if self._lost == 0 else np.inf)

    def weight(self, block: int, blocks: int) -> np.ndarray:
        return np.hstack([m[:, block * (m.shape[1] // blocks):(block + 1) * (m.shape[1] // blocks)]
                          for m in self.matrices])

    def corrections(self, pruned: dict, original: dict, positions) -> np.ndarray | None:
        """[rows, outputs of every consumer side by side]: what the residual Adds' other inputs lost."""
        if not self.residual:
            return None
        columns = [np.zeros(0)] * len(self.matrices)
        rows = None
        for k, tensor in self.residual.items():
            kept = original[tensor].take(np.flatnonzero(self.kept[k]), axis=self.axis)
            lost = kept - pruned[tensor]
            if self.track:
                self._lost += float(np.square(lost, dtype=np.float64).sum())
                self._size += float(np.square(kept, dtype=np.float64).sum())
            lost = _rows(Reading(tensor, int(self.kept[k].sum()), self.axis), lost, positions)
            full = np.zeros((len(lost), len(self.kept[k])), lost.dtype)
            full[:, self.kept[k]] = lost
            columns[k], rows = full, len(lost)
        return np.hstack([c if c.size else np.zeros((rows, m.shape[1]), np.float32)
                          for c, m in zip(columns, self.matrices)])


def _output_keep(comp, node: int, masks: dict[str, np.ndarray], width: int) -> np.ndarray:
    """The consumer's output channels the pruned model keeps (it produces a pruned group, or keeps all)."""
    for g in comp.all_groups:
        for producer, offset, size in g.producers:
            if producer == node and g.id in masks:
                return np.asarray(masks[g.id][offset:offset + size], bool)
    return np.ones(width, bool)


def _downstream(comp, masks: dict[str, np.ndarray], updates: dict[int, ConsumerUpdate], gone: set[int]) -> set[int]:
    """The consumers that keep every input (no update of their own) and feed a residual Add whose other side
    lies downstream of something the masks change (a pruned group's producer, a compensated consumer, a
    removed branch): solved too (DOWNSTREAM), each makes up for the stream's error where it lands, as the
    pruned blocks' consumers do (RESIDUAL_TARGETS), where its Gram matrices fit. A consumer without a residual
    Add is left alone: refit to its own output from changed inputs, it gains little (only what the
    activation between the layers makes of the upstream error) and, on a detector's head, it cost
    detections (docs/method.md)."""
    if not RESIDUAL_TARGETS:
        return set()
    index = comp.index
    changed = set(gone) | {n for n, u in updates.items() if u.method != "none"}
    for g in comp.all_groups:
        if g.id in masks and not np.asarray(masks[g.id]).all():
            changed.update(node for node, _, _ in g.producers)
    stack = [t for n in changed for t in index.nodes[n].output]
    seen = set(stack)  # every tensor computed from a change
    while stack:
        for reader, _ in index.readers.get(stack.pop(), ()):
            for t in index.nodes[reader].output:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
    return {n for n, r in comp.readings.items() if n not in gone and r.blocks == 1
            and residual_input(index, n) in seen and updates.get(n) is not None and updates[n].method == "none"
            and comp._grams(n) is not None and keep_of(comp.consumers[n].layout, masks).all()}


def _in_order(comp, updates: dict[int, ConsumerUpdate], gone: set[int],
              downstream: set[int] = frozenset()) -> list[tuple[Reading, list[int]]]:
    """The readings of the refit consumers (and of the `downstream` ones), each with its consumers, by the
    first of them in graph order (nodes are topologically sorted: every consumer upstream of a tap comes
    before it); the consumers in `gone` (inside a removed residual branch) are left out."""
    by_key: dict[str, list[int]] = {}
    for node in sorted(updates):
        if (updates[node].method == "refit" or node in downstream) and node in comp.readings and node not in gone:
            by_key.setdefault(comp.readings[node].key, []).append(node)
    return [(comp.readings[nodes[0]], nodes) for nodes in sorted(by_key.values())]


def _normal_equations(reading: Reading, keep: np.ndarray, targets: Targets, pruned, original,
                      replay, track: bool = False) -> tuple[list[SequentialGram], float]:
    """Per channel block, [Z~ 1]'[Z~ 1] and [Z~ 1]'(Z W + corrections) over the calibration batches: Z~ what
    the pruned model feeds the consumers, Z what the original fed them, W their weights side by side; and,
    with `track` (every column kept), how far Z~ moved from Z (squared change over squared size; else 0).
    `original`: the original tapped (a session) and its recorded taps (None: run it again)."""
    kept = replace(reading, channels=int(keep.sum()))
    normals = [SequentialGram(kept.block_features, targets.weight(b, reading.blocks)) for b in range(reading.blocks)]
    options, mask, tap = replay.options, replay.mask, reading.tap
    session, cache = original
    names = [tap, *targets.tensors]
    need = ROWS_PER_UNKNOWN * (kept.block_features + 1)
    moved, total = 0.0, 0.0  # the rows' squared change and squared size, with `track`
    for b, feeds, part_done in replay.batches():
        tilde = dict(zip(names, (np.asarray(v) for v in run(pruned, feeds, options, names, purpose="refit"))))
        cached = cache is not None and all(cache.has(t, b) for t in names)
        first = dict(zip(names, (cache.read(t, b) for t in names) if cached else
                         (np.asarray(v) for v in run(session, feeds, options, names, purpose="refit"))))
        positions = None if mask is None else np.asarray(feeds[mask]) != 0
        step = reading.step(first[tap])
        for start in range(0, len(first[tap]), step):
            piece = slice(start, start + step)
            where = None if positions is None else positions[piece]
            z_tilde, z = _rows(kept, tilde[tap][piece], where), _rows(reading, first[tap][piece], where)
            if track:
                moved += float(np.square(z_tilde - z, dtype=np.float64).sum())
                total += float(np.square(z, dtype=np.float64).sum())
            extra = targets.corrections({t: v[piece] for t, v in tilde.items()},
                                        {t: v[piece] for t, v in first.items()}, where)
            for normal, a, c in zip(normals, _blocks(z_tilde, kept), _blocks(z, reading)):
                normal.update(a, c, extra)
        if part_done and all(normal.count >= need for normal in normals):
            break  # enough rows: the rest of the passes would refine an already determined solution
    return normals, (moved / total if total > 0 else (0.0 if moved == 0 else np.inf))


def _rows(reading: Reading, value: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """The reading's rows of a piece of the tap as a matrix, without the padding positions."""
    z = reading.rows(value)
    if positions is not None and positions.shape == z.shape[:-1]:
        return z[positions]
    return z.reshape(-1, z.shape[-1])


def _blocks(z: np.ndarray, reading: Reading) -> np.ndarray:
    """The rows of each channel block, each contiguous: [blocks, rows, block columns]."""
    if reading.blocks == 1:
        return z[None]
    return np.ascontiguousarray(z.reshape(len(z), reading.blocks, -1).transpose(1, 0, 2))


def _solved(normals: list[SequentialGram], matrices: list[np.ndarray], keep: np.ndarray, reading: Reading,
            ridge: float) -> list[ConsumerUpdate]:
    """Each consumer's weight and bias change from the normal equations, block by block (one solve per
    block for all of them; the ridge pulls the kept weights towards their own values)."""
    per_in = reading.channels // reading.blocks
    kept = int(keep.sum()) // reading.blocks * reading.repeat
    weights = [np.zeros((kept, m.shape[1])) for m in matrices]
    biases = [np.zeros(m.shape[1]) for m in matrices]
    for b, normal in enumerate(normals):
        rows = np.repeat(keep[b * per_in:(b + 1) * per_in], reading.repeat)
        theta = normal.solve(ridge, normal.weight[rows])  # columns: each consumer's block b, side by side
        at = 0
        for m, w, bias in zip(matrices, weights, biases):
            per_out = m.shape[1] // reading.blocks
            w[:, b * per_out:(b + 1) * per_out] = theta[:-1, at:at + per_out]
            bias[b * per_out:(b + 1) * per_out] = theta[-1, at:at + per_out]
            at += per_out
    return [ConsumerUpdate(w, bias, "refit") for w, bias in zip(weights, biases)]


class OriginalTaps:
    """The original model's activations at the refit taps over the calibration batches, written to a
    file per tap in one pass and read back batch by batch (as fetched: samples first): the sequential
    refit needs them for every reading of every candidate, and recomputing them ran the original's
    prefix once per reading and candidate. On disk, not in memory; not kept above LIMIT bytes."""

    LIMIT = 1 << 30

    def __init__(self, directory: tempfile.TemporaryDirectory, paths: dict[str, str], shapes: dict[str, list[tuple]],
                 dtypes: dict[str, np.dtype]):
        self._directory, self.paths, self.shapes, self.dtypes = directory, paths, shapes, dtypes
        self._starts = {t: np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shape])])
                        for t, shape in shapes.items()}

    @classmethod
    def record(cls, session, taps: list[str], replay, readers: dict[str, list[tuple[str, Reading]]] | None = None
               ) -> "OriginalTaps | None":
        """One pass of `session` over the calibration data; None (nothing kept) when the files would pass LIMIT.

        `readers` (per tap: the readings whose passes read it, each with the tap its rows come from) limits each
        tap to the replay parts those passes can need: as many as give the reading ROWS_PER_UNKNOWN rows per
        unknown with every channel kept (a pass that needs more, its rows thinned by a padding mask, runs the
        original for the batches not kept). A k x k Conv's tap is then kept for a part of the samples, and the
        pass stops once no tap needs more."""
        data, batch_size, options = replay.data, replay.batch_size, replay.options
        directory = tempfile.TemporaryDirectory(prefix="onnxprune-taps-", dir=scratch.directory())
        shapes: dict[str, list[tuple]] = {t: [] for t in taps}
        dtypes: dict[str, np.dtype] = {}
        paths = {t: os.path.join(directory.name, f"{k}.bin") for k, t in enumerate(taps)}
        files = {t: open(paths[t], "wb") for t in taps}
        parts = replay.parts
        batches = -(-data.n_samples // max(1, data.batch_size(batch_size))) + parts - 1
        wanted = {t: parts for t in taps}
        written, part = 0, 0
        try:
            for b, feeds, part_done in replay.batches():
                values = dict(zip(taps, (np.asarray(v) for v in run(session, feeds, options, taps, purpose="refit"))))
                if b == 0 and readers:
                    wanted = _parts_wanted(values, readers, parts, data.n_samples)
                for tap, value in values.items():
                    if part < wanted[tap]:
                        x = np.ascontiguousarray(value)
                        dtypes[tap] = x.dtype
                        x.tofile(files[tap])
                        shapes[tap].append(x.shape)
                        written += x.nbytes
                if b == 0 and sum(v.nbytes * batches * wanted[t] / parts for t, v in values.items()) > cls.LIMIT:
                    return None
                part += part_done
                if part >= max(wanted.values()):
                    break
        finally:
            for f in files.values():
                f.close()
        if written > cls.LIMIT:
            return None
        return cls(directory, paths, shapes, dtypes)  # the directory goes with the cache

    def has(self, tap: str, batch: int) -> bool:
        return batch < len(self.shapes[tap])

    def read(self, tap: str, batch: int) -> np.ndarray:
        dtype, shape = self.dtypes[tap], self.shapes[tap][batch]
        start = int(self._starts[tap][batch])
        return np.fromfile(self.paths[tap], dtype=dtype, count=int(np.prod(shape)),
                           offset=start * dtype.itemsize).reshape(shape)


def _parts_wanted(first: dict[str, np.ndarray], readers: dict[str, list[tuple[str, Reading]]], parts: int,
                  n_samples: int) -> dict[str, int]:
    """Per tap, the replay parts its readers' passes can read (see OriginalTaps.record), from the first batch."""
    per_part = max(1, n_samples // parts)
    wanted = {}
    for tap in first:
        most = 1
        for source, reading in readers.get(tap, ()):
            z = reading.rows(first[source][:1])
            rows = max(1, z.size // max(1, z.shape[-1]))  # rows of one sample
            samples = -(-ROWS_PER_UNKNOWN * (reading.block_features + 1) // rows)
            most = max(most, -(-samples // per_part))
        wanted[tap] = min(parts, most) if tap in readers else parts
    return wanted

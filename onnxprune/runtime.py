"""The tapped model and the one statistics pass over the data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from .data import Dataset, batch_dim_name, model_inputs
from .errors import InputError
from .graph import GraphIndex
from .groups import NeuronGroup
from .reference import Reference, as_array
from .reading import MAX_GRAM_FEATURES, ReadingGrams, consumer_readings, plan_grams  # noqa: F401
from .refit import Gram
from .session import RuntimeOptions, make_session, run, runtime_message
from .stats import ActivationStats


def tapped_model(model: onnx.ModelProto, taps: list[str], index: GraphIndex) -> onnx.ModelProto:
    """The model with every tap tensor added as an extra graph output (after the original ones)."""
    # A copy of the proto with outputs appended: a twentieth of the time of a graphsurgeon
    # round trip on a 100 MB encoder, and the original outputs keep their own types (sequences
    # of maps from scikit-learn's ZipMap, for instance).
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    outputs = {o.name for o in tapped.graph.output}
    for name in taps:
        if name not in outputs:
            elem = index.elem_type(name) or onnx.TensorProto.FLOAT
            tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            outputs.add(name)
    return tapped


def output_batch_axes(model: onnx.ModelProto) -> list[int]:
    """Per graph output, the axis its samples lie along: where the inputs' symbolic batch
    dimension appears (axis 0 when it does not)."""
    name = batch_dim_name(model_inputs(model))
    axes = []
    for value in model.graph.output:
        dims = [d.dim_param or None for d in value.type.tensor_type.shape.dim] if value.type.HasField(
            "tensor_type") else []
        axes.append(dims.index(name) if name and name in dims and dims[:1] != [name] else 0)
    return axes


THREAD_ABOVE = 1 << 20  # activations per batch above which reductions overlap the next run
# Bytes of tapped activations fetched per onnxruntime run. A batch of a wide model taps far more
# than it computes at once (8 FFN taps of a 512-wide encoder: 4 MiB per 64-token sentence, so
# 1 GiB at batch 256, held by onnxruntime and again by numpy), so the statistics pass runs a
# batch in pieces of about this size: the moments do not depend on how the rows are grouped.
RUN_BYTES = 64 << 20


@dataclass
class StatisticsPass:
    """What one pass over the data gives.

    Per group (keyed by group id): activation statistics, pooled over the group's taps; optionally,
    per consumer reading (reading.Reading.block_keys: a tap read as positions, im2col patches or
    flattened channels, per channel block), the Gram matrix on the calibration rows and on one fold of
    them (every second calibration sample, for cross-fitting the refit decision); per tap tensor: its
    statistics; and the original model's outputs on the held-out rows, so candidates are compared
    without running the original again.
    """

    stats: dict[str, ActivationStats]
    calibration_grams: dict[str, Gram]  # by reading block key
    fold_grams: dict[str, Gram]
    reference: Reference | None
    output_names: list[str]
    batches: int
    tap_stats: dict[str, ActivationStats] = field(default_factory=dict)  # per tap tensor (a group may have several)
    tap_bytes: int = 0  # bytes of tapped activations per sample, the most seen (0: not measured)
    held_max: dict[str, np.ndarray] = field(default_factory=dict)  # per tap, max |a| over the held-out rows

    def dead_everywhere(self, groups) -> dict[str, ActivationStats]:
        """The group statistics with max |a| taken over the held-out rows too: a neuron counts as dead
        only where it is zero on every sample the pass saw, calibration and held-out."""
        if not self.held_max:
            return self.stats
        held = {t: ActivationStats(1, np.zeros(len(m)), np.zeros(len(m)), np.zeros(len(m)), m)
                for t, m in self.held_max.items()}
        out = dict(self.stats)
        for g in groups:
            if g.id in out and all(t in held for t in g.taps):
                s = out[g.id]
                other = g.statistics(held).max_abs
                out[g.id] = ActivationStats(s.count, s.mean, s.m2, s.zeros, np.maximum(s.max_abs, other))
        return out

    def samples_per_run(self, batch_size: int) -> int:
        """Samples per onnxruntime run for later passes of this model (candidates, validation): as many
        as the statistics pass fetched at a time. Results do not depend on it, and onnxruntime's memory
        then stays that of a piece, whatever the batch size."""
        return max(1, min(batch_size, RUN_BYTES // self.tap_bytes)) if self.tap_bytes else batch_size

    def merge(self, other: "StatisticsPass") -> "StatisticsPass":
        """The pass over this pass's samples followed by `other`'s (the next shard of the data).

        Moments merge with Chan's formula, Gram matrices add, and reference outputs are joined
        in order (`other`'s files are appended to this one's), so merging the shards of a split
        gives the single pass's result up to float rounding.
        """
        if set(self.stats) != set(other.stats) or set(self.calibration_grams) != set(other.calibration_grams):
            raise ValueError("statistics passes over different groups cannot be merged")
        if (self.reference is None) != (other.reference is None):
            raise ValueError("one pass kept reference outputs and the other did not (route both or neither)")
        stats = {g: self.stats[g].merge(s) for g, s in other.stats.items()}
        cal = {g: self.calibration_grams[g].merge(m) for g, m in other.calibration_grams.items()}
        fold = {g: self.fold_grams[g].merge(m) for g, m in other.fold_grams.items()}
        taps = {t: self.tap_stats[t].merge(s) for t, s in other.tap_stats.items()}
        reference = None if self.reference is None else Reference.concatenate([self.reference, other.reference])
        held = {t: np.maximum(m, other.held_max[t]) if t in other.held_max else m for t, m in self.held_max.items()}
        held.update({t: m for t, m in other.held_max.items() if t not in held})
        return StatisticsPass(stats, cal, fold, reference, self.output_names, self.batches + other.batches, taps,
                              max(self.tap_bytes, other.tap_bytes), held)


@dataclass
class Shard:
    """Where one shard's pass sits in a split pass (the defaults: the whole data, in one pass)."""

    offset: int = 0  # the first sample's position in the whole data, on which the cross-fitting folds alternate
    # keep held-out outputs (default: when some sample is held out; with no routing mask, every sample's
    # outputs: cross-fitting judges each fold on the samples that fed its own statistics); shards must agree
    routed: bool | None = None
    scratch: str | None = None  # the directory of the reference files (one the caller can read)


def collect_statistics(model: onnx.ModelProto, groups: list[NeuronGroup], data: Dataset, *,
                       batch_size: int = 256, options: RuntimeOptions | None = None,
                       index: GraphIndex | None = None, calibration: np.ndarray | None = None,
                       grams: bool = False, mask: str | None = None,
                       on_batch: Callable[[int, int], None] | None = None,
                       shard: Shard | None = None, taps: dict[str, tuple[int, int]] | None = None) -> StatisticsPass:
    """Run the data once through the tapped model and accumulate what every prunable group needs.

    `calibration` (bool per sample, default all True) routes each sample either to the
    statistics (True) or to the held-out side (False: Gram matrices and reference outputs).
    `mask` names a model input (e.g. attention_mask, [batch, sequence]) whose zero positions
    are left out of statistics and Gram matrices of taps shaped [batch, sequence, features].
    `shard` places the pass in a split one: where its samples start, whether it keeps reference
    outputs, and where their files go. `taps` adds tensors measured beside the groups' ({tensor: (features,
    axis)}: a residual block's branch output and stream), their statistics in `tap_stats`.
    """
    inputs = [spec.name for spec in model_inputs(model)]
    if mask is not None and mask not in inputs:
        raise InputError(f"--mask {mask!r} is not a model input (inputs: {', '.join(inputs)})")
    options = options or RuntimeOptions()
    index = index or GraphIndex(model)
    shard = shard or Shard()
    prunable = [g for g in groups if g.prunable]
    output_names = [o.name for o in model.graph.output]
    routed = shard.routed if shard.routed is not None else calibration is not None and not calibration.all()
    extra = taps
    taps = _Taps(prunable, grams, output_batch_axes(model), index, extra)
    stream = _Stream(make_session(tapped_model(model, taps.names, index), options), options, taps,
                     output_names if routed else [])
    if routed:
        taps.reference = Reference(output_names, shard.scratch, taps.output_axes)
    n_batches = stream.run(data, batch_size, calibration, mask, shard.offset, on_batch)
    tap_bytes = stream.per_sample
    # onnxruntime's copy of the weights, its arena and the last piece go before the Gram matrices unfold
    del stream
    cal_grams, fold_grams = taps.grams(shard.scratch)
    return StatisticsPass({g.id: g.statistics(taps.stats) for g in prunable}, cal_grams, fold_grams,
                          taps.reference, output_names, n_batches, taps.stats, tap_bytes, taps.held_max)


class _Taps:
    """Per tap tensor (every tensor a consumer reads, over all its features): the moments of the
    calibration rows and the Gram matrices of the rows each of its refittable consumers multiplies
    (reading.py; within the memory caps); max |a| of the held-out rows, and the original's outputs on
    them (`reference`, when routed)."""

    def __init__(self, prunable: list[NeuronGroup], grams: bool, output_axes: list[int], index: GraphIndex,
                 extra: dict | None = None):
        self.size = {c.tap: c.width for g in prunable for c in g.consumer_info.values()}
        self.axis = {c.tap: g.axis for g in prunable for c in g.consumer_info.values()}
        for tap, (size, axis) in (extra or {}).items():  # a group's tap keeps its own reading
            if tap not in self.size:
                self.size[tap], self.axis[tap] = size, axis
        self.names = sorted(self.size)
        self.stats = {t: ActivationStats.empty(self.size[t]) for t in self.names}
        readings = plan_grams(consumer_readings(index, prunable).values())[0] if grams else {}
        self.readers: dict[str, list[ReadingGrams]] = {}  # per tap
        for key in sorted(readings):
            self.readers.setdefault(readings[key].tap, []).append(ReadingGrams(readings[key]))
        self.output_axes = output_axes
        self.reference: Reference | None = None
        self.held_max: dict[str, np.ndarray] = {}

    def features_last(self, tap: str, value) -> np.ndarray:
        value = np.asarray(value)
        return value if self.axis[tap] == -1 else np.moveaxis(value, self.axis[tap], -1)

    def add(self, values, rows, positions, n, fold) -> None:
        """One piece's fetched values: the taps (then the outputs, when routed) of its n samples;
        `rows` True for calibration samples, `positions` False for padding, `fold` per calibration row."""
        for tap, value in zip(self.names, values):
            value = np.asarray(value)
            if value.ndim < -self.axis[tap] or value.shape[self.axis[tap]] != self.size[tap]:
                raise InputError(f"tensor {tap!r} has shape {value.shape} at run time, not {self.size[tap]} "
                                 f"features on axis {self.axis[tap]}")
            raw, value = value, self.features_last(tap, value)  # statistics reduce batch and spatial axes
            if rows is not None and (value.ndim == 0 or len(value) != n):
                # Without routing, statistics reduce every axis but the features' wherever the batch is.
                raise InputError(f"tensor {tap!r} does not keep the batch axis first; cannot route samples "
                                 "(use --holdout 0, --fraction, thresholds or --criterion dead)")
            keep = positions if positions is not None and positions.shape == value.shape[:-1] else None
            cal = value if rows is None else value[rows]
            cal_keep = keep if keep is None or rows is None else keep[rows]
            self.stats[tap].update(cal, cal_keep)
            for reader in self.readers.get(tap, ()):
                reader.update(raw if rows is None else raw[rows], fold, cal_keep)
        if self.reference is not None:
            self._add_held_out(values, rows)

    def _add_held_out(self, values, rows) -> None:
        outputs = values[len(self.names):]
        if rows is None:  # no routing: every row is kept (a cross-fitting fold)
            self.reference.append(outputs)
            return
        self.reference.append([_take(value, ~rows, self.output_axes[k]) for k, value in enumerate(outputs)])
        for tap, value in zip(self.names, values):  # max |a| on the held-out rows: dead-only must hold there too
            held = self.features_last(tap, value)[~rows]
            if held.size:
                peak = np.abs(held.reshape(-1, self.size[tap])).max(axis=0).astype(np.float64)
                self.held_max[tap] = peak if tap not in self.held_max else np.maximum(self.held_max[tap], peak)

    def grams(self, scratch: str | None) -> tuple[dict[str, Gram], dict[str, Gram]]:
        """Per reading block key, the Gram matrices of the calibration rows and of one fold of them."""
        cal_grams, fold_grams = {}, {}
        for tap in list(self.readers):  # one at a time: the full matrices go to disk as they are made
            for reader in self.readers.pop(tap):
                for key, (cal, fold) in reader.grams(scratch).items():
                    cal_grams[key], fold_grams[key] = cal, fold
        return cal_grams, fold_grams


class _Stream:
    """The batches of the data through the tapped model, in pieces of about RUN_BYTES of taps.

    onnxruntime runs the next piece while a worker thread reduces the previous one (both release
    the GIL); at most two pieces of activations are alive at any time. Not with Gram matrices:
    their products run on every core through BLAS, and overlapping them with onnxruntime's threads
    made the pass slower (19.5 vs 16.3-17.6 s on the 29 M encoder)."""

    def __init__(self, session, options: RuntimeOptions, taps: _Taps, outputs: list[str]):
        self.session, self.options, self.taps = session, options, taps
        self.fetch = taps.names + outputs
        self.per_sample = 0  # bytes fetched per sample, the most seen so far
        self.pending = None
        self.worker: ThreadPoolExecutor | None = None

    def run(self, data: Dataset, batch_size: int, calibration, mask, offset: int, on_batch) -> int:
        """Every batch once; returns the number of batches."""
        done = n_batches = 0
        with ThreadPoolExecutor(max_workers=1) as self.worker:
            for feeds in data.batches(batch_size):
                n = data.samples_in(feeds)
                rows = None if calibration is None else calibration[done:done + n]
                # the cross-fitting fold: every second sample by position, among the calibration rows
                fold = (offset + np.arange(done, done + n)) % 2 == 1
                positions = None if mask is None else np.asarray(feeds[mask]) != 0
                self._batch(data, feeds, n, rows, fold, positions)
                done += n
                n_batches += 1
                if on_batch:
                    on_batch(done, data.n_samples)
            self._wait()
        return n_batches

    def _wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def _batch(self, data: Dataset, feeds: dict, n: int, rows, fold, positions) -> None:
        start = 0
        while start < n:
            purpose = "statistics"
            if data.fixed_batch or n == 1:  # the model takes whole batches only
                stop = n
            elif not self.per_sample:
                stop, purpose = 1, "probe"  # one sample tells how many fit in RUN_BYTES
            else:
                stop = min(n, start + max(1, RUN_BYTES // max(self.per_sample, 1)))
            piece = feeds if (start, stop) == (0, n) else data.slice_batch(feeds, start, stop)
            try:
                values = run(self.session, piece, self.options, self.fetch, purpose=purpose)
            except Exception as e:  # onnxruntime raises its own exception types
                raise InputError(f"{data.source}: onnxruntime failed on the data: {runtime_message(e)}",
                                 path=None if data.source.startswith("<") else data.source) from None
            fetched = [np.asarray(v) for v in values[:len(self.taps.names)]]
            self.per_sample = max(self.per_sample, sum(v.nbytes for v in fetched) // (stop - start))
            piece_rows = None if rows is None else rows[start:stop]
            piece_fold = fold[start:stop] if piece_rows is None else fold[start:stop][piece_rows]
            piece_positions = None if positions is None else positions[start:stop]
            self._wait()
            args = (values, piece_rows, piece_positions, stop - start, piece_fold)
            if sum(v.size for v in fetched) >= THREAD_ABOVE and not self.taps.readers:
                self.pending = self.worker.submit(self.taps.add, *args)
            else:  # small pieces: handing over to a thread costs more than it saves
                self.taps.add(*args)
            start = stop


def reference_pass(model, data: Dataset, *, batch_size: int = 256, options: RuntimeOptions | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> Reference:
    """The original model's outputs on `data` (for held-out data given separately)."""
    options = options or RuntimeOptions()
    session = make_session(model, options)
    names = [o.name for o in session.get_outputs()]
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    reference = Reference(names, axes=output_batch_axes(proto))
    done = 0
    for feeds in data.batches(batch_size):
        try:
            values = run(session, feeds, options, purpose="original")
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{data.source}: onnxruntime failed on the data: {runtime_message(e)}",
                             path=None if data.source.startswith("<") else data.source) from None
        reference.append(values)
        done += data.samples_in(feeds)
        if on_batch:
            on_batch(done, data.n_samples)
    return reference


def _take(value, rows: np.ndarray, axis: int = 0) -> np.ndarray:
    array = as_array(value)
    if array.ndim <= axis or array.shape[axis] != len(rows):
        raise InputError("a model output does not keep its samples along the batch axis, so held-out samples "
                         "cannot be split off in one pass: give --holdout 0, or name the batch dimension of "
                         "the outputs like the inputs'")
    return np.compress(rows, array, axis=axis)


"""The tapped model and the one statistics pass over the data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .data import Dataset, model_inputs
from .errors import InputError
from .graph import GraphIndex
from .groups import NeuronGroup
from .refit import Gram
from .session import RuntimeOptions, make_session, run
from .reference import Reference
from .stats import ActivationStats
from .validate import as_array


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


THREAD_ABOVE = 1 << 20  # activations per batch above which reductions overlap the next run
# Bytes of tapped activations fetched per onnxruntime run. A batch of a wide model taps far more
# than it computes at once (8 FFN taps of a 512-wide encoder: 4 MiB per 64-token sentence, so
# 1 GiB at batch 256, held by onnxruntime and again by numpy), so the statistics pass runs a
# batch in pieces of about this size: the moments do not depend on how the rows are grouped.
RUN_BYTES = 64 << 20


@dataclass
class StatisticsPass:
    """What one pass over the data gives.

    Per group: activation statistics and (optionally) the Gram matrix on the calibration
    rows, the Gram matrix on the held-out rows; and the original model's outputs on the
    held-out rows, so candidates are compared without running the original again.
    """

    stats: dict[str, ActivationStats]
    calibration_grams: dict[str, Gram]
    heldout_grams: dict[str, Gram]
    reference: Reference | None
    output_names: list[str]
    batches: int

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
        held = {g: self.heldout_grams[g].merge(m) for g, m in other.heldout_grams.items()}
        reference = None if self.reference is None else Reference.concatenate([self.reference, other.reference])
        return StatisticsPass(stats, cal, held, reference, self.output_names, self.batches + other.batches)


def collect_statistics(model: onnx.ModelProto, groups: list[NeuronGroup], data: Dataset, *,
                       batch_size: int = 256, options: RuntimeOptions | None = None,
                       index: GraphIndex | None = None, calibration: np.ndarray | None = None,
                       grams: bool = False, max_gram_features: int = 8192, mask: str | None = None,
                       on_batch: Callable[[int, int], None] | None = None, routed: bool | None = None,
                       scratch: str | None = None) -> StatisticsPass:
    """Run the data once through the tapped model and accumulate what every prunable group needs.

    `calibration` (bool per sample, default all True) routes each sample either to the
    statistics (True) or to the held-out side (False: Gram matrices and reference outputs).
    `mask` names a model input (e.g. attention_mask, [batch, sequence]) whose zero positions
    are left out of statistics and Gram matrices of taps shaped [batch, sequence, features].
    `routed` forces held-out Gram matrices and reference outputs to be kept (True) or not
    (default: when some sample is held out); the shards of a split need the same answer to
    be merged. Reference outputs go to files in a temporary directory under `scratch`.
    """
    inputs = [spec.name for spec in model_inputs(model)]
    if mask is not None and mask not in inputs:
        raise InputError(f"--mask {mask!r} is not a model input (inputs: {', '.join(inputs)})")
    options = options or RuntimeOptions()
    index = index or GraphIndex(model)
    prunable = [g for g in groups if g.prunable]
    taps = sorted({g.tap for g in prunable})
    size_of = {g.tap: g.size for g in prunable}
    axis_of = {g.tap: g.axis for g in prunable}
    refittable = {g.tap for g in prunable if all(c.refittable for c in g.consumer_info.values())}
    output_names = [o.name for o in model.graph.output]
    if routed is None:
        routed = calibration is not None and not calibration.all()
    if routed and calibration is None:
        raise ValueError("routing samples needs a calibration mask")
    session = make_session(tapped_model(model, taps, index), options)
    fetch = taps + (output_names if routed else [])
    stats = {t: ActivationStats.empty(size_of[t]) for t in taps}
    with_gram = [t for t in taps if grams and t in refittable and size_of[t] <= max_gram_features]
    cal_grams = {t: Gram(size_of[t]) for t in with_gram}
    held_grams = {t: Gram(size_of[t]) for t in with_gram} if routed else {}
    reference = Reference(output_names, scratch) if routed else None
    done = n_batches = 0

    def accumulate(values, rows, positions, n):
        for tap, value in zip(taps, values):
            value = np.asarray(value)
            if value.ndim < -axis_of[tap] or value.shape[axis_of[tap]] != size_of[tap]:
                raise InputError(f"tensor {tap!r} has shape {value.shape} at run time, not {size_of[tap]} "
                                 f"features on axis {axis_of[tap]}")
            if axis_of[tap] != -1:  # channels first: statistics reduce batch and spatial axes
                value = np.moveaxis(value, axis_of[tap], -1)
            if value.ndim == 0 or len(value) != n:
                raise InputError(f"tensor {tap!r} does not keep the batch axis first; cannot route samples")
            keep = positions if positions is not None and positions.shape == value.shape[:-1] else None
            cal = value if rows is None else value[rows]
            cal_keep = keep if keep is None or rows is None else keep[rows]
            stats[tap].update(cal, cal_keep)
            if tap in cal_grams:
                cal_grams[tap].update(cal, cal_keep)
                if routed:
                    held_grams[tap].update(value[~rows], None if keep is None else keep[~rows])
        if routed:
            reference.append([_take(value, ~rows) for value in values[len(taps):]])

    # onnxruntime runs the next piece while a worker thread reduces the previous one (both
    # release the GIL); at most two pieces of activations are alive at any time.
    per_sample = 0  # bytes fetched per sample, the most seen so far
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        for feeds in data.batches(batch_size):
            n = len(next(iter(feeds.values())))
            batch_rows = None if calibration is None else calibration[done:done + n]
            batch_positions = None if mask is None else np.asarray(feeds[mask]) != 0
            start = 0
            while start < n:
                purpose = "statistics"
                if data.fixed_batch:  # the model takes whole batches only
                    stop = n
                elif not per_sample and n > 1:
                    stop, purpose = 1, "probe"  # one sample tells how many fit in RUN_BYTES
                else:
                    stop = min(n, start + max(1, RUN_BYTES // max(per_sample, 1)))
                piece = feeds if (start, stop) == (0, n) else {k: v[start:stop] for k, v in feeds.items()}
                try:
                    values = run(session, piece, options, fetch, purpose=purpose)
                except Exception as e:  # onnxruntime raises its own exception types
                    raise InputError(f"onnxruntime failed on the data: {str(e).splitlines()[0]}") from None
                fetched = [np.asarray(v) for v in values[:len(taps)]]
                per_sample = max(per_sample, sum(v.nbytes for v in fetched) // (stop - start))
                rows = None if batch_rows is None else batch_rows[start:stop]
                positions = None if batch_positions is None else batch_positions[start:stop]
                if pending is not None:
                    pending.result()
                    pending = None
                if sum(v.size for v in fetched) >= THREAD_ABOVE:
                    pending = worker.submit(accumulate, values, rows, positions, stop - start)
                else:  # small pieces: handing over to a thread costs more than it saves
                    accumulate(values, rows, positions, stop - start)
                start = stop
            done += n
            n_batches += 1
            if on_batch:
                on_batch(done, data.n_samples)
        if pending is not None:
            pending.result()
    by_group = {g.name: g.tap for g in prunable}
    return StatisticsPass(
        {g: stats[t] for g, t in by_group.items()},
        {g: cal_grams[t] for g, t in by_group.items() if t in cal_grams},
        {g: held_grams[t] for g, t in by_group.items() if t in held_grams},
        reference, output_names, n_batches)


def reference_pass(model, data: Dataset, *, batch_size: int = 256, options: RuntimeOptions | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> Reference:
    """The original model's outputs on `data` (for held-out data given separately)."""
    options = options or RuntimeOptions()
    session = make_session(model, options)
    reference = Reference([o.name for o in session.get_outputs()])
    done = 0
    for feeds in data.batches(batch_size):
        reference.append(run(session, feeds, options, purpose="original"))
        done += len(next(iter(feeds.values())))
        if on_batch:
            on_batch(done, data.n_samples)
    return reference


def _take(value, rows: np.ndarray) -> np.ndarray:
    array = as_array(value)
    if array.ndim == 0 or len(array) != len(rows):
        raise InputError("a model output does not keep the batch axis first, so held-out samples cannot be "
                         "split off in one pass: give --eval-data, or --holdout 0")
    return array[rows]


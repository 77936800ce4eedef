"""The tapped model and the one statistics pass over the data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .data import Dataset, batch_dim_name, model_inputs
from .errors import InputError
from .graph import GraphIndex
from .groups import NeuronGroup
from .refit import Gram
from .session import RuntimeOptions, make_session, run, runtime_message
from .stats import ActivationStats
from .validate import Reference, as_array


def tapped_model(model: onnx.ModelProto, taps: list[str], index: GraphIndex) -> onnx.ModelProto:
    """The model with every tap tensor added as an extra graph output (after the original ones)."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    for name in taps:
        tensor = tensors[name]
        if tensor.dtype is None:
            elem = index.elem_type(name) or onnx.TensorProto.FLOAT
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if tensor not in graph.outputs:
            graph.outputs.append(tensor)
    tapped = gs.export_onnx(graph, do_type_check=False)
    tapped.ir_version = model.ir_version
    # graphsurgeon knows tensor types only: restore the original outputs' own types
    # (sequences of maps from scikit-learn's ZipMap, for instance).
    original = {o.name: o for o in model.graph.output}
    for out in tapped.graph.output:
        if out.name in original:
            out.CopyFrom(original[out.name])
    return tapped


@dataclass
class AxisReference(Reference):
    """Reference outputs some of which hold their samples along another axis than the first
    (a recurrent state [2, N, 128]); batches are cut along each output's own axis."""

    axes: list[int] = field(default_factory=list)

    def batches(self, batch_size: int, n_samples: int):
        for start in range(0, n_samples, batch_size):
            yield [o[(slice(None),) * a + (slice(start, start + batch_size),)] for o, a in zip(self.outputs, self.axes)]


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


def _reference(names: list[str], outputs: list[np.ndarray], axes: list[int]) -> Reference:
    if any(axes):
        return AxisReference(names, outputs, axes)
    return Reference(names, outputs)


THREAD_ABOVE = 1 << 20  # activations per batch above which reductions overlap the next run


@dataclass
class StatisticsPass:
    """What one pass over the data gives.

    Per group (keyed by group id): activation statistics, pooled over the group's taps, and
    (optionally, for a group read at one tap) the Gram matrix on the calibration rows and on
    one fold of them (every second calibration sample, for cross-fitting the refit decision);
    per tap tensor: its statistics; and the original model's outputs on the held-out rows, so
    candidates are compared without running the original again.
    """

    stats: dict[str, ActivationStats]
    calibration_grams: dict[str, Gram]
    fold_grams: dict[str, Gram]
    reference: Reference | None
    output_names: list[str]
    batches: int
    tap_stats: dict[str, ActivationStats] = field(default_factory=dict)  # per tap tensor (a group may have several)


def collect_statistics(model: onnx.ModelProto, groups: list[NeuronGroup], data: Dataset, *,
                       batch_size: int = 256, options: RuntimeOptions | None = None,
                       index: GraphIndex | None = None, calibration: np.ndarray | None = None,
                       grams: bool = False, max_gram_features: int = 8192, mask: str | None = None,
                       on_batch: Callable[[int, int], None] | None = None) -> StatisticsPass:
    """Run the data once through the tapped model and accumulate what every prunable group needs.

    `calibration` (bool per sample, default all True) routes each sample either to the
    statistics (True) or to the held-out side (False: Gram matrices and reference outputs).
    `mask` names a model input (e.g. attention_mask, [batch, sequence]) whose zero positions
    are left out of statistics and Gram matrices of taps shaped [batch, sequence, features].
    """
    inputs = [spec.name for spec in model_inputs(model)]
    if mask is not None and mask not in inputs:
        raise InputError(f"--mask {mask!r} is not a model input (inputs: {', '.join(inputs)})")
    options = options or RuntimeOptions()
    index = index or GraphIndex(model)
    prunable = [g for g in groups if g.prunable]
    # Statistics are taken per tap (every tensor a consumer reads, over all its features), then
    # mapped onto each group's neurons; Gram matrices only where one tap holds exactly one group.
    size_of = {c.tap: c.width for g in prunable for c in g.consumer_info.values()}
    axis_of = {c.tap: g.axis for g in prunable for c in g.consumer_info.values()}
    taps = sorted(size_of)
    refittable = {g.single_tap for g in prunable
                  if g.single_tap and all(c.refittable for c in g.consumer_info.values())}
    output_names = [o.name for o in model.graph.output]
    output_axes = output_batch_axes(model)
    routed = calibration is not None and not calibration.all()
    session = make_session(tapped_model(model, taps, index), options)
    fetch = taps + (output_names if routed else [])
    stats = {t: ActivationStats.empty(size_of[t]) for t in taps}
    with_gram = [t for t in taps if grams and t in refittable and size_of[t] <= max_gram_features]
    cal_grams = {t: Gram(size_of[t]) for t in with_gram}
    fold_grams = {t: Gram(size_of[t]) for t in with_gram}
    held_outputs: list[list[np.ndarray]] = [[] for _ in output_names]
    done = n_batches = 0

    def accumulate(values, rows, positions, n, fold):
        for tap, value in zip(taps, values):
            value = np.asarray(value)
            if value.ndim < -axis_of[tap] or value.shape[axis_of[tap]] != size_of[tap]:
                raise InputError(f"tensor {tap!r} has shape {value.shape} at run time, not {size_of[tap]} "
                                 f"features on axis {axis_of[tap]}")
            if axis_of[tap] != -1:  # channels first: statistics reduce batch and spatial axes
                value = np.moveaxis(value, axis_of[tap], -1)
            if rows is not None and (value.ndim == 0 or len(value) != n):
                # Without routing, statistics reduce every axis but the features' wherever the batch is.
                raise InputError(f"tensor {tap!r} does not keep the batch axis first; cannot route samples "
                                 "(use --holdout 0, --fraction, thresholds or --criterion dead)")
            keep = positions if positions is not None and positions.shape == value.shape[:-1] else None
            cal = value if rows is None else value[rows]
            cal_keep = keep if keep is None or rows is None else keep[rows]
            stats[tap].update(cal, cal_keep)
            if tap in cal_grams:
                cal_grams[tap].update(cal, cal_keep)
                fold_grams[tap].update(cal[fold], None if cal_keep is None else cal_keep[fold])
        if routed:
            for k, value in enumerate(values[len(taps):]):
                held_outputs[k].append(_take(value, ~rows, output_axes[k]))

    # onnxruntime runs the next batch while a worker thread reduces the previous one (both
    # release the GIL); at most two batches of activations are alive at any time.
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        for feeds in data.batches(batch_size):
            n = data.samples_in(feeds)
            try:
                values = run(session, feeds, options, fetch, purpose="statistics")
            except Exception as e:  # onnxruntime raises its own exception types
                raise InputError(f"{data.source}: onnxruntime failed on the data: {runtime_message(e)}",
                                 path=None if data.source.startswith("<") else data.source) from None
            rows = None if calibration is None else calibration[done:done + n]
            # the cross-fitting fold: every second sample by position, among the calibration rows
            fold = np.arange(done, done + n) % 2 == 1
            fold = fold if rows is None else fold[rows]
            positions = None if mask is None else np.asarray(feeds[mask]) != 0
            if pending is not None:
                pending.result()
                pending = None
            if sum(np.asarray(v).size for v in values[:len(taps)]) >= THREAD_ABOVE:
                pending = worker.submit(accumulate, values, rows, positions, n, fold)
            else:  # small batches: handing over to a thread costs more than it saves
                accumulate(values, rows, positions, n, fold)
            done += n
            n_batches += 1
            if on_batch:
                on_batch(done, data.n_samples)
        if pending is not None:
            pending.result()
    reference = None
    if routed:
        reference = _reference(output_names, [_concat(parts, a) for parts, a in zip(held_outputs, output_axes)],
                               output_axes)
    by_group = {g.id: g.single_tap for g in prunable}
    return StatisticsPass(
        {g.id: g.statistics(stats) for g in prunable},
        {g: cal_grams[t] for g, t in by_group.items() if t in cal_grams},
        {g: fold_grams[t] for g, t in by_group.items() if t in fold_grams},
        reference, output_names, n_batches, stats)


def reference_pass(model, data: Dataset, *, batch_size: int = 256, options: RuntimeOptions | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> Reference:
    """The original model's outputs on `data` (for held-out data given separately)."""
    options = options or RuntimeOptions()
    session = make_session(model, options)
    names = [o.name for o in session.get_outputs()]
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    axes = output_batch_axes(proto)
    parts: list[list] = [[] for _ in names]
    done = 0
    for feeds in data.batches(batch_size):
        try:
            values = run(session, feeds, options, purpose="original")
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{data.source}: onnxruntime failed on the data: {runtime_message(e)}",
                             path=None if data.source.startswith("<") else data.source) from None
        for k, value in enumerate(values):
            parts[k].append(as_array(value))
        done += data.samples_in(feeds)
        if on_batch:
            on_batch(done, data.n_samples)
    return _reference(names, [_concat(p, a) for p, a in zip(parts, axes)], axes)


def _take(value, rows: np.ndarray, axis: int = 0) -> np.ndarray:
    array = as_array(value)
    if array.ndim <= axis or array.shape[axis] != len(rows):
        raise InputError("a model output does not keep its samples along the batch axis, so held-out samples "
                         "cannot be split off in one pass: give --holdout 0, or name the batch dimension of "
                         "the outputs like the inputs'")
    return np.compress(rows, array, axis=axis)


def _concat(parts: list[np.ndarray], axis: int = 0) -> np.ndarray:
    if not parts:
        return np.zeros(0)
    try:
        return np.concatenate(parts, axis=axis)
    except ValueError:
        raise InputError("the model's outputs change shape from batch to batch along other axes than the "
                         "batch axis, so they cannot be kept for comparison: give --holdout 0") from None

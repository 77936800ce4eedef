"""Inference speed and size of models side by side: latency percentiles, throughput, FLOPs.

Each model gets its own onnxruntime session; warm-up runs are excluded; each setting
runs at least `min_runs` times and until its timed runs add up to at least `min_seconds`.
Every speed figure comes from the median (p50) run: throughput is samples per second at the
median, and speed-ups are the first model's median over this one's, measured in the same run,
so a speed-up is always the ratio of the throughputs beside it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .data import Dataset, InputSpec, input_layout, load_data, model_inputs
from .errors import InputError
from .modelio import EXTERNAL_DATA_ABOVE, check_opsets, load_model, model_file_size, shape_only, with_unique_node_names
from .ops import linear_spec
from .rewrite import parameter_count
from .session import RuntimeOptions, make_session, run, runtime_message

DEFAULT_BATCH_SIZES = (1, 64)
UNKNOWN_DIM = 16  # the size given to symbolic non-batch dimensions when no data says otherwise


@dataclass
class BenchRow:
    model: str
    batch_size: int
    p50_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median run: batch size / p50
    speedup: float     # p50 of the first model / p50 of this one, same batch size
    parameters: int
    macs_per_sample: int | None  # None: shapes unknown
    file_size: int | None         # None: unknown
    runs: int
    seconds: float = 0.0  # the timed runs' total, at least min_seconds

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_feeds(specs: list[InputSpec], batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the right dtypes and shapes (integers in [0, 2): safe as ids and masks)."""
    rng = np.random.default_rng(seed)
    layout = input_layout(specs)
    feeds = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else UNKNOWN_DIM for d in (spec.shape if spec.shape is not None
                                                                      else (batch_size,))]
        axis = layout[spec.name]
        if axis is not None and axis < len(shape) and not isinstance(spec.shape and spec.shape[axis], int):
            shape[axis] = batch_size
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return feeds


def data_feeds(data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """The first `batch_size` samples of the data (repeated if there are fewer); constant inputs as they are."""
    first = next(data.batches(max(batch_size, 1)))
    n = data.samples_in(first)
    axes = data.batch_axes
    out = {}
    for k, v in first.items():
        axis = axes.get(k, 0)
        if axis is None:
            out[k] = v
            continue
        if n < batch_size:
            v = np.concatenate([v] * -(-batch_size // n), axis=axis)
        out[k] = np.ascontiguousarray(np.take(v, np.arange(batch_size), axis=axis))
    return out


def macs_per_sample(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                    batch_axes: dict[str, int | None] | None = None) -> int | None:
    """Multiply-adds of every Gemm, MatMul and Conv for one sample, from shapes inferred at batch 1
    (None when a shape cannot be known: the figure only informs)."""
    per_node = node_macs(model, feeds, batch_axes)
    return None if per_node is None else sum(per_node.values())


def node_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
              batch_axes: dict[str, int | None] | None = None) -> dict[int, int] | None:
    """Multiply-adds for one sample of each linear node (Gemm, MatMul, Conv, ConvTranspose), by node index;
    None if a shape is unknown.

    `batch_axes` gives each input's sample axis (None: fed as is); by default, what the
    model's symbolic dims say (`onnxprune.data.input_layout`). Never raises: MACs only inform.
    """
    try:
        return _node_macs(model, feeds, batch_axes)
    except Exception:  # a malformed or unusual graph leaves the figure unknown, not the run failed
        return None


def _node_macs(model, feeds, batch_axes) -> dict[int, int] | None:
    if batch_axes is None:
        batch_axes = input_layout(model_inputs(model))
    probe = shape_only(model)
    del probe.graph.value_info[:]
    for value in probe.graph.input:
        if value.name in feeds:
            dims = value.type.tensor_type.shape.dim
            shape = list(np.shape(feeds[value.name]))
            axis = batch_axes.get(value.name, 0)
            if axis is not None and axis < len(shape):
                shape[axis] = 1
            if len(dims) != len(shape):
                return None
            for d, size in zip(dims, shape):
                d.Clear()
                d.dim_value = size
    shapes: dict[str, list[int]] = {}
    for _ in range(4):  # a Reshape with -1 leaves a dimension unknown: resolve it, infer again
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
        except Exception:
            return None
        shapes, partial = {}, {}
        for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            (shapes if None not in dims else partial)[v.name] = dims
        for t in inferred.graph.initializer:
            shapes[t.name] = list(t.dims)
        resolved = False
        for node in inferred.graph.node:
            out = node.output[0] if node.output else None
            if node.op_type == "Reshape" and out in partial and node.input[0] in shapes:
                dims = partial[out]
                if dims.count(None) == 1:
                    known = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
                    total_in = int(np.prod(shapes[node.input[0]], dtype=np.int64))
                    if known and total_in % known == 0:
                        dims = [total_in // known if d is None else d for d in dims]
                        vi = onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, dims)
                        elem = next((v.type.tensor_type.elem_type for v in inferred.graph.value_info
                                     if v.name == out), onnx.TensorProto.FLOAT)
                        vi.type.tensor_type.elem_type = elem
                        probe.graph.value_info.append(vi)
                        resolved = True
        if not resolved:
            break
    macs = {}
    for i, node in enumerate(inferred.graph.node):
        spec = linear_spec(node)
        if spec is None:
            continue
        value = spec.macs(node, shapes)
        if value is None:
            return None
        macs[i] = value
    return macs


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size the model's inputs fix along their sample axes, if any."""
    layout = input_layout(specs)
    for spec in specs:
        axis = layout[spec.name]
        if axis is not None and spec.shape and axis < len(spec.shape) and isinstance(spec.shape[axis], int):
            return spec.shape[axis]
    return None


def _time_session(session, feeds, options, warmup: int, min_runs: int, min_seconds: float) -> list[float]:
    for _ in range(warmup):
        run(session, feeds, options, purpose="warmup")
    times, total = [], 0.0
    while len(times) < min_runs or total < min_seconds:  # however fast the model: min_seconds are measured
        t0 = time.perf_counter()
        run(session, feeds, options, purpose="bench")
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return times


def bench(models, *, data=None, batch_sizes=DEFAULT_BATCH_SIZES, options: RuntimeOptions | None = None,
          warmup: int = 5, min_runs: int = 20, min_seconds: float = 1.0, labels: str | None = None,
          batch_axes=None, constant_inputs=()) -> list[BenchRow]:
    """Latency (p50, p90), throughput, parameters, MACs and file size of each model at each batch size.

    `batch_axes` and `constant_inputs` say how `data` holds its samples (see `onnxprune.data.load_data`)."""
    options = options or RuntimeOptions()
    if not models:
        raise InputError("no model to benchmark")
    if any(b < 1 for b in batch_sizes):
        raise InputError("batch sizes must be at least 1")
    loaded = []
    for m in models:
        proto = m if isinstance(m, onnx.ModelProto) else load_model(m)
        if isinstance(m, onnx.ModelProto):
            check_opsets(proto)
            proto = with_unique_node_names(proto)
        name = "<model>" if isinstance(m, onnx.ModelProto) else str(m)
        size = proto.ByteSize() if isinstance(m, onnx.ModelProto) else model_file_size(m)
        loaded.append((name, proto, size))
    first_specs = model_inputs(loaded[0][1])
    def signature(specs):
        return [(s.name, s.dtype, None if s.shape is None else
                 tuple(d if isinstance(d, int) else None for d in s.shape[1:])) for s in specs]

    for name, proto, _ in loaded[1:]:
        if signature(model_inputs(proto)) != signature(first_specs):
            raise InputError(f"{name} does not take the same inputs (names, dtypes, shapes) as {loaded[0][0]}")
    dataset = (load_data(data, loaded[0][1], labels_key=labels, batch_axes=batch_axes,
                         constant_inputs=constant_inputs) if data is not None else None)
    rows = []
    for batch_size in batch_sizes:
        fixed = dataset.fixed_batch if dataset else _fixed_batch(first_specs)
        b = fixed or batch_size
        feeds = data_feeds(dataset, b) if dataset else synthetic_feeds(first_specs, b)
        axes = dataset.batch_axes if dataset else None
        first_p50 = None
        for name, proto, size in loaded:
            # The loaded proto (node names made unique); the file only above protobuf's size limit.
            source = proto if name == "<model>" or proto.ByteSize() < EXTERNAL_DATA_ABOVE else Path(name)
            try:
                session = make_session(source, options)
            except Exception as e:  # onnxruntime's own exception types
                raise InputError(f"{name}: onnxruntime cannot load the model: {runtime_message(e)}",
                                 path=None if name == "<model>" else name) from None
            try:
                times = np.array(_time_session(session, feeds, options, warmup, min_runs, min_seconds))
            except Exception as e:  # onnxruntime's own exception types
                raise InputError(f"onnxruntime cannot run {name}: {runtime_message(e)}",
                                 path=None if name == "<model>" else name) from None
            p50, p90 = float(np.percentile(times, 50)), float(np.percentile(times, 90))
            first_p50 = first_p50 or p50
            rows.append(BenchRow(name, b, 1000 * p50, 1000 * p90, b / p50, first_p50 / p50, parameter_count(proto),
                                 macs_per_sample(proto, feeds, axes), size, len(times), float(times.sum())))
    return rows

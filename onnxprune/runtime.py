"""onnxruntime sessions, the tapped model and the one statistics pass over the data."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .data import Dataset
from .errors import InputError
from .graph import GraphIndex
from .groups import NeuronGroup
from .modelio import EXTERNAL_DATA_ABOVE
from .stats import ActivationStats


@dataclass
class RuntimeOptions:
    threads: int = 0  # 0: onnxruntime's default
    providers: tuple = ("CPUExecutionProvider",)
    runs: int = field(default=0, compare=False)  # session.run calls made with these options


def make_session(model, options: RuntimeOptions | None = None) -> ort.InferenceSession:
    """A session from a ModelProto or a path; big protos go through a temporary file."""
    options = options or RuntimeOptions()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if options.threads:
        so.intra_op_num_threads = options.threads
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(str(model), so, providers=list(options.providers))
    if model.ByteSize() < EXTERNAL_DATA_ABOVE:
        return ort.InferenceSession(model.SerializeToString(), so, providers=list(options.providers))
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(path), so, providers=list(options.providers))


def run(session: ort.InferenceSession, feeds: dict, options: RuntimeOptions, names=None) -> list:
    options.runs += 1
    return session.run(names, feeds)


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
    return tapped


@dataclass
class StatisticsPass:
    """What one pass over the data gives: per-group statistics and the original outputs' names."""

    stats: dict[str, ActivationStats]
    output_names: list[str]
    batches: int


def collect_statistics(model: onnx.ModelProto, groups: list[NeuronGroup], data: Dataset, *,
                       batch_size: int = 256, options: RuntimeOptions | None = None,
                       index: GraphIndex | None = None,
                       on_batch: Callable[[int, int], None] | None = None) -> StatisticsPass:
    """Run the data once through the tapped model and accumulate statistics for every prunable group."""
    options = options or RuntimeOptions()
    index = index or GraphIndex(model)
    prunable = [g for g in groups if g.prunable]
    taps = sorted({g.tap for g in prunable})
    session = make_session(tapped_model(model, taps, index), options)
    stats = {t: ActivationStats.empty(next(g.size for g in prunable if g.tap == t)) for t in taps}
    done = 0
    n_batches = 0
    for feeds in data.batches(batch_size):
        try:
            values = run(session, feeds, options, taps)
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"onnxruntime failed on the data: {str(e).splitlines()[0]}") from None
        for tap, value in zip(taps, values):
            value = np.asarray(value)
            if value.shape[-1] != stats[tap].n_features:
                raise InputError(f"tensor {tap!r} has {value.shape[-1]} features at run time, "
                                 f"not {stats[tap].n_features}")
            stats[tap].update(value)
        done += len(next(iter(feeds.values())))
        n_batches += 1
        if on_batch:
            on_batch(done, data.n_samples)
    output_names = [o.name for o in model.graph.output]
    return StatisticsPass({g.name: stats[g.tap] for g in prunable}, output_names, n_batches)

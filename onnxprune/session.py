"""onnxruntime sessions with onnxprune's settings, and a count of the runs made."""

from __future__ import annotations

import os
from collections import Counter
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .modelio import EXTERNAL_DATA_ABOVE

# onnxruntime's GraphOptimizationLevel members by name: onnxruntime itself is imported when a
# session is made, not when the CLI starts.
GRAPH_OPTIMIZATION = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


@dataclass
class RuntimeOptions:
    threads: int = 0  # 0: onnxruntime's default
    providers: tuple = ("CPUExecutionProvider",)
    graph_optimization: str = "all"  # all, extended, basic or disable
    runs: Counter = field(default_factory=Counter, compare=False)  # session.run calls, by purpose


def make_session(model, options: RuntimeOptions | None = None):
    """A session (onnxruntime.InferenceSession) from a ModelProto or a path; big protos go through a
    temporary file."""
    import onnxruntime as ort

    options = options or RuntimeOptions()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if options.threads:
        so.intra_op_num_threads = options.threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[options.graph_optimization])
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(str(model), so, providers=list(options.providers))
    if model.ByteSize() < EXTERNAL_DATA_ABOVE:
        return ort.InferenceSession(model.SerializeToString(), so, providers=list(options.providers))
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(path), so, providers=list(options.providers))


def run(session, feeds: dict, options: RuntimeOptions, names=None,
        purpose: str = "inference") -> list:
    """session.run, counted by purpose (statistics, original, candidate, ...)."""
    options.runs[purpose] += 1
    return session.run(names, feeds)



"""onnxruntime sessions with onnxprune's settings, and a count of the runs made."""

from __future__ import annotations

import os
import re
from collections import Counter
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import InputError
from . import scratch
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
    """How models run: onnxruntime's settings for every session, and where the statistics pass runs
    (`workers` processes, or the shards of a Dask `cluster`: a Client or a scheduler address)."""

    threads: int = 0  # 0: onnxruntime's default
    providers: tuple = ("CPUExecutionProvider",)
    graph_optimization: str = "all"  # all, extended, basic or disable
    workers: int = 1
    cluster: object = None
    runs: Counter = field(default_factory=Counter, compare=False)  # session.run calls, by purpose

    @property
    def sharded(self) -> bool:
        """Whether the statistics pass is split over processes or a cluster."""
        if not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"workers must be a positive integer, got {self.workers!r}")
        return self.workers > 1 or self.cluster is not None

    def to_dict(self) -> dict:
        return {"threads": self.threads, "providers": list(self.providers),
                "graph_optimization": self.graph_optimization, "workers": self.workers,
                "cluster": None if self.cluster is None else str(self.cluster)}


def serialized(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None when it is too big for one protobuf message."""
    try:
        blob = model.SerializeToString()
    except Exception:  # protobuf refuses messages above 2 GiB (the error type depends on the backend)
        return None
    # one serialisation rather than ByteSize() first: each walks the whole proto (0.2 s for 100 MB)
    return blob if len(blob) < EXTERNAL_DATA_ABOVE else None


def make_session(model, options: RuntimeOptions | None = None):
    """A session (onnxruntime.InferenceSession) from a ModelProto, its serialized bytes or a path;
    big protos go through a temporary file."""
    import onnxruntime as ort

    options = options or RuntimeOptions()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors reach the caller as exceptions; nothing on stderr
    if options.threads:
        so.intra_op_num_threads = options.threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[options.graph_optimization])
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(str(model), so, providers=list(options.providers))
    if isinstance(model, bytes):
        return ort.InferenceSession(model, so, providers=list(options.providers))
    blob = serialized(model)
    if blob is not None:
        return ort.InferenceSession(blob, so, providers=list(options.providers))
    with tempfile.TemporaryDirectory(prefix="onnxprune-", dir=scratch.directory()) as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(path), so, providers=list(options.providers))


def run(session, feeds: dict, options: RuntimeOptions, names=None,
        purpose: str = "inference") -> list:
    """session.run, counted by purpose (statistics, original, candidate, ...)."""
    options.runs[purpose] += 1
    return session.run(names, feeds)




def runtime_message(error: BaseException) -> str:
    """The useful first line of an onnxruntime exception, without its error-code and source-file prefixes."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    # "/onnxruntime_src/.../file.cc:46 void onnxruntime::f(args) message": keep the message
    match = re.match(r"^\S+\.(?:cc|h|cpp):\d+\s+.*?\)\s+(?=[A-Z])", text)
    if match:
        text = text[match.end():]
    return text.strip() or type(error).__name__


def check_loads(model: onnx.ModelProto, options: RuntimeOptions | None = None, path=None) -> None:
    """Refuse an input model onnxruntime cannot load, as bad input, before any work is done.

    Whatever onnxruntime objects to in a model it was given (an operator it lacks, a type
    it cannot run, an invalid graph) is a property of that model, not an onnxprune bug.
    The proto is what runs (its node names may have been made unique); above protobuf's
    size limit, the file at `path`.
    """
    try:
        make_session(path if path is not None and model.ByteSize() >= EXTERNAL_DATA_ABOVE else model, options)
    except Exception as e:  # onnxruntime raises its own exception types
        import onnxruntime as ort

        name = str(path) if path is not None else "the model"
        raise InputError(f"{name}: onnxruntime {ort.__version__} cannot load the model: {runtime_message(e)}",
                         path=path) from None


def run_problem(model, feeds: dict, options: RuntimeOptions | None = None) -> str | None:
    """Why onnxruntime cannot run `model` on `feeds` (one line), or None when it can."""
    options = options or RuntimeOptions()
    try:
        run(make_session(model, options), feeds, options, purpose="check")
    except Exception as e:  # onnxruntime raises its own exception types
        return runtime_message(e)
    return None

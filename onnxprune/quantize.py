"""Prune, then quantize, judged together: onnxruntime's own quantizer applied to every candidate.

With `quantize` "static" or "dynamic" (SelectionConfig.quantize, `--quantize`), each candidate a search
builds is quantized before it is judged, so the budget's bounds are those of the model that ships:
quantization's own loss is inside them, and pruning only gets what is left. The first candidate of the
fixed sequence is the original quantized alone; when even it breaks the budget the run says so and
stops (`QuantizationOverBudget`), before any pruning is tried.

- static: QDQ format, int8 weights per output channel (symmetric), uint8 activations calibrated
  (min-max) on the samples that fed the candidate's statistics: with cross-fitting, each fold's candidate
  on the other folds' samples; the written model on all the calibration data;
- dynamic: int8 weights per output channel, activations quantized at run time (MatMul and Gemm only: the
  integer kernels onnxruntime has for them pay off on MatMul-heavy models; its ConvInteger is slow).

A `Quantizer` is the quantizer with one set of calibration samples; `Variants` are the four models the
report and `bench` compare: original, quantized only, pruned only, pruned + quantized.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .data import Dataset
from .errors import InputError, QuantizationOverBudget
from .modelio import EXTERNAL_DATA_ABOVE
from .scratch import directory as scratch_directory

QUANTIZE_MODES = ("none", "dynamic", "static")
CALIBRATION_SAMPLES = 512   # at most this many calibration samples (evenly spaced) calibrate a candidate
CALIBRATION_BATCH = 64
QUANTIZED_OPS = {"dynamic": ["MatMul", "Gemm"], "static": None}  # None: every op the quantizer supports
# Static quantization leaves in float the convolutions with at most this many input channels (an image
# model's stem): onnxruntime's int8 convolution is no faster there, mostly 2-3x slower (measured by
# benchmarks/quantize_stem.py, docs/quantize.md).
FLOAT_STEM_CHANNELS = 4


@dataclass
class Quantizer:
    """onnxruntime.quantization with this run's mode, calibrated (static) on `data`."""

    mode: str
    data: Dataset | None = None
    samples: int = CALIBRATION_SAMPLES
    batch_size: int = CALIBRATION_BATCH
    quantize_stem: bool = False  # static: quantize the convolutions of few input channels too

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        keep = [] if self.mode != "static" or self.quantize_stem else stem_convs(model)
        return quantize_model(model, self.mode, self.calibration(), keep_float=keep)

    def calibration(self) -> Dataset | None:
        """The calibration samples: all of `data`, or `samples` of them evenly spaced."""
        if self.mode != "static" or self.data is None:
            return None
        n = self.data.n_samples
        if n <= self.samples:
            return self.data
        return self.data.subset(np.unique(np.linspace(0, n - 1, self.samples).round().astype(np.int64)))

    def describe(self) -> str:
        if self.mode == "dynamic":
            return "onnxruntime dynamic quantization: int8 weights per channel, activations quantized at run time"
        used = self.calibration()
        count = used.n_samples if used is not None else 0
        stem = ("every convolution quantized" if self.quantize_stem else
                f"convolutions of at most {FLOAT_STEM_CHANNELS} input channels left in float")
        return (f"onnxruntime static quantization (QDQ): int8 weights per channel, uint8 activations calibrated "
                f"(min-max) on {count} samples the statistics came from; {stem}")


def stem_convs(model: onnx.ModelProto) -> list[int]:
    """Indices of the Conv nodes with at most FLOAT_STEM_CHANNELS input channels (a constant weight
    [out, in / group, ...])."""
    from .graph.index import GraphIndex

    index = GraphIndex(model)
    out = []
    for i, node in enumerate(index.nodes):
        dims = index.constant_shape(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dims and len(dims) >= 3 and dims[1] * index.attr(i, "group", 1) <= FLOAT_STEM_CHANNELS:
            out.append(i)
    return out


@contextmanager
def _named(model: onnx.ModelProto, nodes: list[int]):
    """The names of `nodes` (indices), each unnamed one given a unique name for as long as the context
    lasts (the quantizer excludes nodes by name; the model is left as it was)."""
    taken = {n.name for n in model.graph.node if n.name}
    given = []
    for i in nodes:
        node = model.graph.node[i]
        if not node.name:
            name, k = f"onnxprune_float_{i}", 0
            while name in taken:
                k += 1
                name = f"onnxprune_float_{i}_{k}"
            node.name = name
            taken.add(name)
            given.append(node)
    try:
        yield [model.graph.node[i].name for i in nodes]
    finally:
        for node in given:
            node.name = ""


class _Reader:
    """A CalibrationDataReader over a Dataset's batches."""

    def __init__(self, data: Dataset, batch_size: int):
        self.batches = data.batches(batch_size)

    def get_next(self):
        feeds = next(self.batches, None)
        return None if feeds is None else {k: np.ascontiguousarray(v) for k, v in feeds.items()}

    def rewind(self):  # the reader protocol's; a run calibrates once
        pass


@contextmanager
def _quiet():
    """The quantizer advises pre-processing through the root logger at every call: not ours to print."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_model(model: onnx.ModelProto, mode: str, calibration: Dataset | None = None,
                   batch_size: int = CALIBRATION_BATCH,
                   keep_float: list[int] | tuple = ()) -> onnx.ModelProto:
    """`model` quantized by onnxruntime's quantizer (`mode` static or dynamic; static needs `calibration`).
    The model is written to a scratch directory first: the quantizer changes a proto it is given. Its
    min-max calibration keeps two values per tensor and batch, so memory does not grow with the model's
    activations (its CalibMaxIntermediateOutputs would bound it, but in onnxruntime 1.32 it drops the
    ranges collected so far: not used). The nodes at the indices `keep_float` stay float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in ("static", "dynamic"):
        raise ValueError(f"unknown quantization {mode!r}")
    if mode == "static" and calibration is None:
        raise ValueError("static quantization needs calibration data")
    big = model.ByteSize() >= EXTERNAL_DATA_ABOVE
    with tempfile.TemporaryDirectory(prefix="onnxprune-quantize-", dir=scratch_directory()) as scratch:
        source, target = Path(scratch) / "float.onnx", Path(scratch) / "quantized.onnx"
        with _named(model, list(keep_float)) as excluded:
            onnx.save_model(model, str(source), save_as_external_data=big, location="float.onnx.data")
        try:
            with _quiet():
                if mode == "dynamic":
                    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
                                     op_types_to_quantize=QUANTIZED_OPS["dynamic"], use_external_data_format=big)
                else:
                    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calibration, batch_size)
                    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                                    per_channel=True, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, use_external_data_format=big,
                                    nodes_to_exclude=excluded)
        except Exception as e:  # the quantizer's own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"onnxruntime's quantizer cannot quantize the model ({mode}): {first}") from None
        quantized = onnx.load(str(target))
    _keep_identity(model, quantized)
    return quantized


def _keep_identity(source: onnx.ModelProto, quantized: onnx.ModelProto) -> None:
    """The quantized model keeps the input's metadata, producer and documentation."""
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    quantized.producer_name, quantized.producer_version = source.producer_name, source.producer_version
    quantized.doc_string = source.doc_string


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the model already holds quantization ops (onnxruntime's quantizer is for float models)."""
    ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
           "QLinearConv", "QLinearMatMul", "QGemm", "MatMulNBits"}
    return any(n.op_type in ops for n in model.graph.node)


def require_quantized_original(candidate) -> None:
    """Stop before searching when the original quantized alone breaks the budget: no pruned model of it
    can be certified within it."""
    if candidate.within_budget:
        return
    failing = [f for f in candidate.figures if not f.passed] or candidate.figures
    raise QuantizationOverBudget("quantizing the original model alone breaks the budget: " + "; ".join(
        f.text() for f in failing) + ". Nothing was pruned or written: loosen the budget, or try another "
        "--quantize (or none)", candidate.figures)


@dataclass
class Variant:
    """One of the four models the report compares: its name, model, parameters, size and figures."""

    name: str
    model: onnx.ModelProto | None
    parameters: int
    file_size: int | None
    figures: list = field(default_factory=list)  # metrics.Figure, judged as the candidates were
    note: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "parameters": self.parameters, "file_size": self.file_size,
                "figures": [f.to_dict() for f in self.figures], "note": self.note}


def judged_like_candidates(selector, fraction: float, quantized: bool) -> list:
    """The figures of the model pruned at `fraction` (quantized or not) judged as the search judged its
    candidates (by cross-fitting, or on the held-out data)."""
    judges = [selector, *(f.builder for f in selector.folds)]
    saved = [j.quantizer for j in judges]
    try:
        if not quantized:
            for j in judges:
                j.quantizer = None
        return selector.at_fraction(fraction).figures
    finally:
        for j, q in zip(judges, saved):
            j.quantizer = q


# Kept neurons per quantized layer are a multiple of this by default (1: any number), by the kind of layer:
# measured by benchmarks/quantize_align.py (docs/quantize.md).
QUANTIZED_ALIGN = {"conv": 4, "matmul": 1}
INTEGER_OPS = {"QLinearConv": "conv", "QLinearMatMul": "matmul", "MatMulInteger": "matmul"}


def default_align(group, mode: str) -> int:
    """The multiple of neurons a group keeps by default when its layers run quantized (0: not quantized, the
    float default holds)."""
    kind = INTEGER_OPS.get(group.producer_op)
    if kind is None and mode == "none":
        return 0
    if kind is None:
        kind = "conv" if group.producer_op in ("Conv", "ConvTranspose") else "matmul"
    return QUANTIZED_ALIGN[kind]


def modes_check(mode: str | None, quantize_stem: bool = False) -> None:
    if mode is not None and mode not in QUANTIZE_MODES:
        raise InputError(f"unknown quantization {mode!r}; choose from {', '.join(QUANTIZE_MODES)}",
                         field="--quantize")
    if quantize_stem and mode != "static":
        raise InputError("--quantize-stem applies to --quantize static only (dynamic quantization leaves every "
                         "convolution in float)", field="--quantize-stem")


def finish(run, selected, pruned: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Variant]]:
    """The model to write (`pruned` quantized, calibrated on every calibration sample) and the four variants
    side by side: original, quantized only, pruned only, pruned + quantized, each with its parameters,
    size and, after a budget search, its figures judged as the candidates were."""
    from .rewrite import parameter_count

    quantizer = run.quantizer(run.measured.calibration_data)
    run.console.log(f"quantizing the pruned model ({quantizer.describe()})")
    final = quantizer(pruned)
    original = run.prepared.input_model
    models = {"original": original, "quantized only": quantizer(original), "pruned only": pruned,
              "pruned + quantized": final}
    figures = _variant_figures(run, selected)
    variants = [Variant(name, model, parameter_count(model), _size(model), figures.get(name, []))
                for name, model in models.items()]
    variants[0].note = "the reference"
    if run.prepared.model_path is not None:
        from .modelio import model_file_size

        variants[0].file_size = model_file_size(run.prepared.model_path)
    return final, variants


def _size(model: onnx.ModelProto) -> int:
    """Bytes of the model as one file (what `save_model` writes below the protobuf limit)."""
    return model.ByteSize()


def _variant_figures(run, selected) -> dict[str, list]:
    """Each variant's figures when a budget search judged candidates (else none: nothing held out)."""
    chosen, selector = selected.chosen, run.judge
    if selected.mode != "budget" or chosen is None or selector is None:
        return {}
    first = next((c for c in selected.candidates if c.fraction == 0), None)
    out = {"original": judged_like_candidates(selector, 0.0, quantized=False),
           "quantized only": first.figures if first is not None else judged_like_candidates(selector, 0.0, True),
           "pruned + quantized": chosen.figures}
    out["pruned only"] = (out["original"] if not chosen.fraction else
                          judged_like_candidates(selector, chosen.fraction, quantized=False))
    return out


def save_model_file(model: onnx.ModelProto, path) -> None:
    """Write a model (with external data beside it above protobuf's limit)."""
    big = model.ByteSize() >= EXTERNAL_DATA_ABOVE
    onnx.save_model(model, str(path), save_as_external_data=big, location=Path(path).name + ".data")


@contextmanager
def quantized_copies(models: list, mode: str | None, data, quantize_stem: bool = False):
    """`models` (paths), each followed by its copy quantized in `mode` (none: the models alone), written to a
    scratch directory that lives as long as the context. Static quantization calibrates on `data` (a
    DataSpec with data) or, without it, on random inputs of the right shapes (enough to time it)."""
    if not mode:
        yield list(models)
        return
    from .bench import synthetic_feeds
    from .data import load_data, model_inputs
    from .modelio import load_model

    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-", dir=scratch_directory()) as scratch:
        out = []
        for k, path in enumerate(models):
            model = load_model(path)
            if is_quantized(model):
                raise InputError(f"{path}: the model is already quantized", path=path, field="--quantize")
            calibration = None
            if mode == "static" and data is not None and data.data is not None:
                calibration = load_data(data.data, model, labels_key=data.labels, batch_axes=data.batch_axes,
                                        constant_inputs=data.constant_inputs)
            elif mode == "static":
                calibration = Dataset(synthetic_feeds(model_inputs(model), CALIBRATION_BATCH), None,
                                      source="<random inputs>")
            target = Path(scratch) / f"{k}" / f"{Path(path).stem}.{mode}-int8.onnx"
            target.parent.mkdir()
            save_model_file(Quantizer(mode, calibration, quantize_stem=quantize_stem)(model), target)
            out += [str(path), str(target)]
        yield out


def provenance(run) -> str:
    """Which samples calibrated the quantization of the candidates and of the written model."""
    m = run.measured
    quantizer = run.quantizer(m.calibration_data)
    text = quantizer.describe()
    if run.selection.quantize == "static" and m.folds:
        text += (f"; with {len(m.folds)}-fold cross-fitting each fold's candidates were calibrated on the other "
                 "folds' samples, the written model on all of them")
    if not run.selection.align:
        text += "; " + align_note()
    return text


def align_note() -> str:
    """What the default alignment of quantized layers is, and where it comes from."""
    kinds = [f"{'a multiple of ' + str(m) if m > 1 else 'any number of'} {what}"
             for what, m in (("Conv channels", QUANTIZED_ALIGN["conv"]), ("MatMul/Gemm features",
                                                                          QUANTIZED_ALIGN["matmul"]))]
    return f"kept {' and '.join(kinds)} (the widths int8 kernels run fastest at, measured: docs/quantize.md)"

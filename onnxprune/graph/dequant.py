"""Constants that reach an op dequantised: stored integers, and the scales and zero points that make them real.

A quantised model stores a weight as integers and turns them into real values on the way to its
Gemm/MatMul/Conv: through DequantizeLinear (QDQ models, per tensor or per channel), or through
weight-only arithmetic (Cast to float, an optional Sub of a zero point, a Mul by a scale: the
int8 exports of sentence-transformers). `GraphIndex.view(..., dequantized=True)` sees through
these forms as it sees through Identity and Transpose: the view names the stored integers and
lists every scale and zero point as a `Companion`, with the axis of it that runs along each axis
of the stored tensor. Pruning cuts a companion together with the stored tensor where it runs along
the cut axis (a per-channel scale when output channels go) and leaves it whole where it does not
(a per-tensor scale; a per-output-channel scale when input rows go).

Each form is one handler in `DEQUANTIZERS`, keyed by op type: called for the node producing the
tensor being followed, it returns the `Step` (which input the stored integers come through, and
the constants it applies) or None when the node is not a form it knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                 onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass(frozen=True)
class Companion:
    """A constant that dequantises a view's stored integers: read at input `input` of `node`, stored as
    `name`; `role` "scale" multiplies, "zero_point" subtracts; `axes` pairs (stored axis, its axis)
    for each of its axes longer than 1 (none: one value for the whole tensor)."""

    node: int
    input: int
    name: str
    role: str
    axes: tuple = ()

    def along(self, stored_axis: int) -> int | None:
        """Its axis that runs along `stored_axis` of the stored tensor, or None (it is shared along it)."""
        return next((mine for axis, mine in self.axes if axis == stored_axis), None)


@dataclass(frozen=True)
class Step:
    """One dequantising node: the input the stored integers come through, and the constants it applies
    (in the order the node applies them: zero point, then scale). `per_axis` is the stored axis a
    1-D companion runs along (DequantizeLinear's `axis`), None to broadcast from the right (Mul, Sub);
    `integers` says the node reads integers (a Cast or a DequantizeLinear: the form is complete)."""

    source: int
    constants: tuple = ()   # of (input position, role)
    per_axis: int | None = None
    integers: bool = False


# Where ops read stored integer weights (and QLinearConv its int32 bias): constants counted as parameters.
WEIGHT_INPUTS = {"DequantizeLinear": (0,), "Cast": (0,), "MatMulInteger": (1,), "ConvInteger": (1,),
                 "QLinearMatMul": (3,), "QLinearConv": (3, 8)}

Handler = Callable[["object", int], "Step | None"]
DEQUANTIZERS: dict[str, Handler] = {}


def dequantizer(*op_types: str):
    """Register how a node dequantises what flows through it; registering an op twice is an error."""

    def wrap(fn: Handler) -> Handler:
        for op in op_types:
            if op in DEQUANTIZERS:
                raise ValueError(f"a dequantizer for {op} is already registered")
            DEQUANTIZERS[op] = fn
        return fn

    return wrap


def _attr(index, node: int, name: str, default=None):
    return index.attr(node, name, default)


@dequantizer("DequantizeLinear")
def _dequantize_linear(index, node: int) -> Step | None:
    n = index.nodes[node]
    if _attr(index, node, "block_size", 0):
        return None  # blocked quantisation: a scale per block of an axis, not followed
    constants = [(1, "scale")]
    if len(n.input) > 2 and n.input[2]:
        constants.insert(0, (2, "zero_point"))
    if not all(index.is_constant(n.input[p]) for p, _ in constants):
        return None
    return Step(0, tuple(constants), per_axis=_attr(index, node, "axis", 1), integers=True)


@dequantizer("Cast")
def _cast(index, node: int) -> Step | None:
    source = index.nodes[node].input[0]
    dtype = index.elem_type(source)
    if dtype is None and index.is_constant(source):
        dtype = onnx.helper.np_dtype_to_tensor_dtype(index.constant_dtype(source))
    if dtype not in INTEGER_TYPES or _attr(index, node, "to") not in (onnx.TensorProto.FLOAT,
                                                                     onnx.TensorProto.FLOAT16,
                                                                     onnx.TensorProto.DOUBLE,
                                                                     onnx.TensorProto.BFLOAT16):
        return None
    return Step(0, integers=True)


@dequantizer("Mul", "Sub")
def _scale_or_zero_point(index, node: int) -> Step | None:
    """x * scale (either side) or x - zero_point, with a constant scale or zero point."""
    n = index.nodes[node]
    if len(n.input) != 2:
        return None
    role = "scale" if n.op_type == "Mul" else "zero_point"
    sides = [0, 1] if n.op_type == "Mul" else [0]
    for source in sides:
        other = 1 - source
        if index.is_constant(n.input[other]) and not index.is_constant(n.input[source]):
            return Step(source, ((other, role),))
    return None


def resolve(index, steps: list[tuple[int, Step]], shape: tuple) -> tuple | None:
    """The companions of a chain of dequantising steps ((node, step), from the reader down to the stored
    integers of `shape`), in the order they are applied; None when one does not line up with the stored
    axes or nothing in the chain reads integers."""
    if not any(step.integers for _, step in steps):
        return None
    out = []
    for node, step in reversed(steps):  # applied from the stored integers up
        for position, role in step.constants:
            name = index.nodes[node].input[position]
            axes = _axes(index.constant_shape(name), shape, step.per_axis)
            if axes is None:
                return None
            out.append(Companion(node, position, name, role, axes))
    return tuple(out)


def _axes(mine: tuple | None, stored: tuple, per_axis: int | None) -> tuple | None:
    """(stored axis, own axis) for each of a companion's axes longer than 1; None if it does not line up."""
    if mine is None:
        return None
    if all(d == 1 for d in mine):
        return ()
    if per_axis is not None:  # DequantizeLinear: a 1-D scale along `axis`
        axis = per_axis + len(stored) if per_axis < 0 else per_axis
        if len(mine) != 1 or not 0 <= axis < len(stored) or mine[0] != stored[axis]:
            return None
        return ((axis, 0),)
    if len(mine) > len(stored):
        return None  # broadcasting would add axes to the weight
    offset = len(stored) - len(mine)
    pairs = []
    for k, d in enumerate(mine):
        if d != 1 and d != stored[k + offset]:
            return None
        if d != 1:
            pairs.append((k + offset, k))
    return tuple(pairs)


def dequantize(index, view, stored: np.ndarray | None = None) -> np.ndarray:
    """A view's stored constant as real values (float64, stored layout): the companions applied in order."""
    value = np.asarray(index.constant_value(view.name) if stored is None else stored).astype(np.float64)
    for c in view.dequant:
        factor = broadcast(index.constant_value(c.name).astype(np.float64), c, value.ndim)
        value = value * factor if c.role == "scale" else value - factor
    return value


def broadcast(value: np.ndarray, companion: Companion, rank: int) -> np.ndarray:
    """A companion's values shaped to broadcast against the stored tensor (rank `rank`)."""
    target = [1] * rank
    for axis, mine in companion.axes:
        target[axis] = value.shape[mine]
    return value.reshape(target)


def quantize_like(index, view, real: np.ndarray) -> np.ndarray:
    """Real values (stored layout) back to the view's stored integers with its own scales and zero points,
    rounded and clipped to the stored type (the inverse of `dequantize`, up to rounding)."""
    value = np.asarray(real, np.float64)
    for c in reversed(view.dequant):
        factor = broadcast(index.constant_value(c.name).astype(np.float64), c, value.ndim)
        value = value / np.where(factor == 0, 1.0, factor) if c.role == "scale" else value + factor
    dtype = index.constant_dtype(view.name)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    value = np.rint(value)
    return (np.clip(value, info.min, info.max) if info is not None else value).astype(dtype)


def real_dtype(index, view) -> np.dtype:
    """The dtype of a view's real values: its scale's, or the stored constant's when it is not quantised."""
    scale = next((c for c in view.dequant if c.role == "scale"), None)
    return index.constant_dtype(scale.name if scale is not None else view.name)

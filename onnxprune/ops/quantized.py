"""Quantised ops: how a group's features pass through quantisation, and the integer linear ops.

A weight that reaches a Gemm/MatMul/Conv through DequantizeLinear or a weight-only Cast + Mul is
followed by the constant views (graph/dequant.py): its integers, scales and zero points are cut
together. This module adds what the walk needs besides:

- activations quantised and dequantised on the way (QDQ models): QuantizeLinear and
  DequantizeLinear act on each feature on their own; a per-tensor scale is left alone, a
  per-channel one along the features is cut with them;
- the integer linear ops of onnxruntime's QOperator and dynamic forms, each a LinearSpec:
  MatMulInteger (weight at input 1, its zero point at 3), QLinearMatMul and QLinearConv (weight
  at input 3, its scale and zero point at 4 and 5, QLinearConv's int32 bias at 8). Their weights'
  real values, in the units of the data they read, are what rank and fold the features.

What is not followed says why: blocked quantisation, grouped QLinearConvs, scales computed at run
time per channel. QLinearMatMul and QLinearConv consumers are not compensated (their bias, if any,
is in the units of integers whose zero point the statistics do not remove): a removed feature
simply goes, which is exact for the features that never leave the zero point.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import GraphIndex
from .base import Features, NotPrunable, constant_slice
from .linear import ConvSpec, MatMulSpec, fold_after, linear
from .passthrough import register


def _scalar(index: GraphIndex, node: int, position: int) -> np.ndarray | None:
    """The constant at `position` of `node` when it holds one value (else None)."""
    n = index.nodes[node]
    if len(n.input) <= position or not n.input[position]:
        return None
    view = index.view(node, position)
    if view is None or int(np.prod(view.shape, dtype=np.int64)) != 1:
        return None
    return index.constant_value(view.name).reshape(())


def _per_output(index: GraphIndex, node: int, position: int, size: int) -> list:
    """The slice of a 1-D constant of one value per output feature at `position` (none for one value)."""
    n = index.nodes[node]
    if len(n.input) <= position or not n.input[position]:
        return []
    view = index.view(node, position)
    label = index.node_name(node)
    if view is None:
        raise NotPrunable(f"{label}: its input {n.input[position]!r} is computed at run time", "quantised", label,
                          n.input[position])
    if int(np.prod(view.shape, dtype=np.int64)) == 1:
        return []
    if view.shape != (size,):
        raise NotPrunable(f"{label}: {n.input[position]!r} has shape {list(view.shape)}, not one value per output "
                          f"feature ({size})", "quantised", label, n.input[position])
    return [constant_slice(view, 0)]


def _column(value: np.ndarray | None, rank: int, axis: int) -> np.ndarray | float:
    """A scale or zero point (one value, or one per output feature) shaped to broadcast along `axis`."""
    if value is None:
        return 0.0
    value = np.asarray(value, np.float64)
    if value.size == 1:
        return float(value.reshape(()))
    shape = [1] * rank
    shape[axis] = value.size
    return value.reshape(shape)


def _constant(index: GraphIndex, node: int, position: int) -> np.ndarray | None:
    n = index.nodes[node]
    if len(n.input) <= position or not n.input[position]:
        return None
    view = index.view(node, position)
    return None if view is None else index.constant_value(view.name)


# ---- activations quantised on the way --------------------------------------------------------------

@register("QuantizeLinear", "DequantizeLinear")
def quantize_linear(index: GraphIndex, node: int, region: set, features: Features) -> list:
    """(De)quantising the group's features: per tensor, nothing to cut; per channel along the features,
    the scale and zero point are cut with them."""
    n = index.nodes[node]
    label = index.node_name(node)
    if n.input[0] not in region or any(x in region for x in n.input[1:]):
        raise NotPrunable(f"{label} ({n.op_type}) reads the group as its scale or zero point", "quantised", label)
    if index.attr(node, "block_size", 0):
        raise NotPrunable(f"{label} ({n.op_type}) quantises in blocks, which onnxprune does not cut", "quantised",
                          label)
    views = [index.view(node, p) for p in (1, 2) if len(n.input) > p and n.input[p]]
    if any(v is None for v in views):
        raise NotPrunable(f"{label} ({n.op_type}) has a scale or zero point computed at run time", "quantised", label)
    if all(int(np.prod(v.shape, dtype=np.int64)) == 1 for v in views):
        return []
    axis = index.attr(node, "axis", 1)
    rank = features.rank
    if rank is None or (axis - rank if axis >= 0 else axis) != features.axis:
        raise NotPrunable(f"{label} ({n.op_type}) quantises per channel along another axis than the features",
                          "quantised", label)
    if any(v.shape != (features.n,) for v in views):
        raise NotPrunable(f"{label} ({n.op_type}): its scale is not one value per feature", "quantised", label)
    return [constant_slice(v, 0) for v in views]


# ---- integer linear ops ---------------------------------------------------------------------------

@linear("MatMulInteger")
class MatMulIntegerSpec(MatMulSpec):
    """MatMulInteger(A, B, a_zero_point, b_zero_point) -> int32, as onnxruntime's dynamic quantisation
    writes it: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(a_scale x b_scale) [-> Add(bias)]."""

    refittable = False

    def check_consumer(self, index, i, position, tensor, label):
        super().check_consumer(index, i, position, tensor, label)
        if _to_real(index, i) is None:
            raise NotPrunable(f"{label} (MatMulInteger) is not followed by the Cast and Mul by its scales that "
                              "make its output real, where a bias change would go", "quantised", label, tensor)

    def producer_slices(self, index, i, size):
        return _per_output(index, i, 3, size)

    def weight_value(self, index, i, view):
        w = np.asarray(index.view_value(view), np.float64)
        zero = _column(_constant(index, i, 3), w.ndim, w.ndim - 1)
        chain = _to_real(index, i)
        return (w - zero) * (_weight_scale(index, chain[-1]) if chain else 1.0)

    def fold_bias(self, model, i, delta, dtype, taken, touched):
        # the change goes where the output is real: after the Cast and the Mul by the scales
        node = model.graph.node[i]
        dtype = dtype if np.issubdtype(np.dtype(dtype), np.floating) else np.float32  # the weight's is integer
        cast = _only_reader(model, node.output[0], "Cast")
        mul = _only_reader(model, cast.output[0], "Mul") if cast is not None else None
        if mul is None:
            raise ValueError(f"{node.name or 'MatMulInteger'}: no Cast and Mul make its output real")
        at = next(k for k, n in enumerate(model.graph.node) if n is mul or n.output[:1] == mul.output[:1])
        return fold_after(model, at, delta, dtype, taken, touched)


def _only_reader(model: onnx.ModelProto, tensor: str, op: str) -> onnx.NodeProto | None:
    users = [n for n in model.graph.node if tensor in n.input]
    outputs = {o.name for o in model.graph.output}
    return users[0] if len(users) == 1 and users[0].op_type == op and tensor not in outputs else None


def _to_real(index: GraphIndex, i: int) -> tuple[int, int] | None:
    """(Cast, Mul) node indices that alone read an integer op's output and make it real, or None."""
    out = index.nodes[i].output[0]
    users = index.users(out)
    if len(users) != 1 or index.nodes[users[0][0]].op_type != "Cast" or out in index.graph_outputs:
        return None
    cast = users[0][0]
    after = index.users(index.nodes[cast].output[0])
    if len(after) != 1 or index.nodes[after[0][0]].op_type != "Mul":
        return None
    return cast, after[0][0]


def _weight_scale(index: GraphIndex, mul: int) -> float | np.ndarray:
    """The constant factor of a dynamic quantisation's Mul by (a_scale x b_scale): b_scale; 1 when there is
    none to read (then only the ranking within the layer is in real units)."""
    n = index.nodes[mul]
    for name in n.input:
        if index.is_constant(name):
            return index.constant_value(name).astype(np.float64)
        p = index.producer.get(name)
        if p is not None and index.nodes[p].op_type == "Mul":
            for x in index.nodes[p].input:
                if index.is_constant(x):
                    return index.constant_value(x).astype(np.float64)
    return 1.0


class _QLinear:
    """What QLinearMatMul and QLinearConv share: the weight at input 3, its scale and zero point at 4 and 5,
    the data's at 1 and 2 (one value each); real weights in the units of the integers read."""

    weight_input = 3
    refittable = False
    foldable = False

    def _check_data_scale(self, index, i, label, tensor=None):
        if _scalar(index, i, 1) is None or (len(index.nodes[i].input) > 2 and index.nodes[i].input[2]
                                            and _scalar(index, i, 2) is None):
            raise NotPrunable(f"{label} ({self.op_type}) reads its input with a scale that is not one constant",
                              "quantised", label, tensor)

    def producer_slices(self, index, i, size):
        return _per_output(index, i, 4, size) + _per_output(index, i, 5, size)

    def weight_value(self, index, i, view):
        w = np.asarray(index.view_value(view), np.float64)
        axis = self.out_axis(index.nodes[i])  # the output features' axis, which the scales run along
        scale, zero = _constant(index, i, 4), _constant(index, i, 5)
        a_scale = _scalar(index, i, 1)
        return (w - _column(zero, w.ndim, axis)) * _column(scale, w.ndim, axis) * float(a_scale)


@linear("QLinearMatMul")
class QLinearMatMulSpec(_QLinear, MatMulSpec):
    """QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point)."""

    def check_consumer(self, index, i, position, tensor, label):
        super().check_consumer(index, i, position, tensor, label)
        self._check_data_scale(index, i, label, tensor)

    def check_producer(self, index, i, label):
        self._check_data_scale(index, i, label)


@linear("QLinearConv")
class QLinearConvSpec(_QLinear, ConvSpec):
    """QLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B): its int32
    bias (scale x_scale x w_scale) is cut with the output channels."""

    bias_input = 8

    def check_producer(self, index, i, label):
        self._refuse_groups(index, i, label)
        self._check_data_scale(index, i, label)

    def check_consumer(self, index, i, position, tensor, label):
        super().check_consumer(index, i, position, tensor, label)
        self._refuse_groups(index, i, label, tensor)
        self._check_data_scale(index, i, label, tensor)

    def _refuse_groups(self, index, i, label, tensor=None):
        group = index.attr(i, "group", 1)
        if group != 1:
            raise NotPrunable(f"{label} is a grouped QLinearConv (group={group}), which is not pruned",
                              "grouped-conv", label, tensor)

    def fold_bias(self, model, i, delta, dtype, taken, touched):
        raise ValueError("QLinearConv consumers take no bias change")


__all__ = ["MatMulIntegerSpec", "QLinearConvSpec", "QLinearMatMulSpec", "quantize_linear"]

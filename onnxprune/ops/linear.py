"""Linear ops (Gemm, MatMul, Conv, ConvTranspose): one registered spec per op_type.

A spec owns everything onnxprune needs to know about a layer with a constant weight:
which weight axis holds its output features (producer side) and which its input
features (consumer side), where its features are in the data tensor, its bias and how a
bias change is folded in, its multiply-adds per sample, and whether the closed-form refit
applies. Groups, rewriting, compensation and MACs all ask the spec instead of testing
op types.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import GraphIndex
from .base import NotPrunable, domain_of
from .window import Window
from ..graph.edits import (add_initializer, constant_in, fold_into_dequantized, fresh, readers, real_value,
                           set_input)

LINEAR: dict[str, "LinearSpec"] = {}


def linear(op_type: str):
    """Register a spec class for `op_type` (default domain); registering an op twice is an error."""

    def wrap(cls):
        if op_type in LINEAR:
            raise ValueError(f"a linear spec for {op_type} is already registered")
        spec = cls()
        spec.op_type = op_type
        LINEAR[op_type] = spec
        return cls

    return wrap


def linear_spec(node) -> "LinearSpec | None":
    return LINEAR.get(node.op_type) if domain_of(node) == "" else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class LinearSpec:
    op_type = ""
    channels_first = False   # features on axis 1 ([N, C, ...]) rather than the last axis
    weight_input = 1         # the input holding the constant weight
    bias_input: int | None = None
    refittable = False       # the closed-form least-squares refit applies to it as a consumer
    foldable = True          # a bias change can be folded into it as a consumer (else: no compensation)

    def weight_rank_ok(self, shape: tuple) -> bool:
        return len(shape) == 2

    def weight_kind(self) -> str:
        return "2-D matrix"

    def out_axis(self, node: onnx.NodeProto) -> int:
        """The weight axis of the output features (the neurons it produces)."""
        raise NotImplementedError

    def in_axis(self, node: onnx.NodeProto) -> int:
        """The weight axis the input features are contracted over."""
        raise NotImplementedError

    def check_producer(self, index: GraphIndex, i: int, label: str) -> None:
        """Raise NotPrunable if the node's output features cannot be cut."""

    def producer_slices(self, index: GraphIndex, i: int, size: int) -> list:
        """Slices of the node's own per-output-feature inputs besides weight and bias (a quantised op's
        scales and zero points)."""
        return []

    def weight_value(self, index: GraphIndex, i: int, view) -> np.ndarray:
        """The weight as real values in the effective layout (dequantised when it is stored quantised), in
        the units of the data input: what `matrix` and `effect` read."""
        return np.asarray(index.view_value(view), np.float64)

    def check_consumer(self, index: GraphIndex, i: int, position: int, tensor: str, label: str) -> None:
        """Raise NotPrunable if the node does not contract over the features it reads at `position`."""
        if position != 0:
            raise NotPrunable(f"tensor {tensor!r} is the weight input of {label}, not its data input",
                              "consumer", label, tensor)

    def matrix(self, node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
        """The effective weight as [features in, features out], scale included: out = x @ W."""
        raise NotImplementedError(f"{self.op_type} has no matrix form")

    def from_matrix(self, node: onnx.NodeProto, matrix: np.ndarray, shape: tuple | None = None) -> np.ndarray:
        """Inverse of `matrix`: a [in, out] weight back in the effective layout (`shape`: the original
        weight's, for the kernel dimensions a matrix does not show)."""
        raise NotImplementedError(f"{self.op_type} has no matrix form")

    def window(self, node: onnx.NodeProto, shape: tuple):
        """The windows it cuts from its input as a consumer (ops.window.Window), None when each position's
        features are one row of what it multiplies (Gemm, MatMul)."""
        return None

    def effect(self, node: onnx.NodeProto, weight: np.ndarray, n: int, repeat: int = 1):
        """Per input feature: what a constant unit of it adds to each output ([n, out]), and its squared
        weight norm ([n]). `repeat` > 1: each feature is a block of rows (a flattened channel)."""
        w = self.matrix(node, weight)
        if repeat > 1:
            blocks = w.reshape(n, repeat, -1)
            return blocks.sum(axis=1), (blocks**2).sum(axis=(1, 2))
        return w, (w**2).sum(axis=1)

    def macs(self, node: onnx.NodeProto, shapes: dict) -> int | None:
        """Multiply-adds for the shapes given (batch 1 gives per sample); None when a shape is unknown."""
        raise NotImplementedError

    def fold_bias(self, model: onnx.ModelProto, i: int, delta: np.ndarray, dtype, taken: set, touched: set) -> set:
        """Add `delta` to the node's output bias; return the constants it no longer reads."""
        node = model.graph.node[i]
        old = node.input[self.bias_input] if len(node.input) > self.bias_input and node.input[self.bias_input] else None
        current = constant_in(model, old) if old else None
        if old and current is None:  # a dequantised bias, which could not keep its integers
            current = real_value(model, old)
            if current is None:
                raise ValueError(f"{node.name or self.op_type}: its bias {old!r} is computed at run time and "
                                 "cannot take a bias change")
        bias = delta if current is None else self._bias_scale(node) * current.astype(np.float64) + delta
        name = fresh(f"{node.name or self.op_type.lower()}_bias_folded", taken)
        add_initializer(model, numpy_helper.from_array(np.asarray(bias, dtype=dtype), name))
        set_input(node, self.bias_input, name)
        return {old} if old else set()

    def _bias_scale(self, node) -> float:
        return 1.0


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


@linear("Gemm")
class GemmSpec(LinearSpec):
    bias_input = 2
    refittable = True

    def out_axis(self, node):
        return 0 if _attr(node, "transB", 0) else 1

    def in_axis(self, node):
        return 1 if _attr(node, "transB", 0) else 0

    def check_consumer(self, index, i, position, tensor, label):
        super().check_consumer(index, i, position, tensor, label)
        if index.attr(i, "transA", 0):
            raise NotPrunable(f"{label} has transA=1, so it does not contract over the feature axis",
                              "consumer", label, tensor)

    def matrix(self, node, weight):
        w = weight.T if _attr(node, "transB", 0) else weight
        return w * _attr(node, "alpha", 1.0)

    def from_matrix(self, node, matrix, shape=None):
        w = matrix / _attr(node, "alpha", 1.0)
        return w.T if _attr(node, "transB", 0) else w

    def macs(self, node, shapes):
        a = shapes.get(node.input[0]) if node.input else None
        out = shapes.get(node.output[0]) if node.output else None
        if not (_known(a) and _known(out)) or len(a) != 2:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return int(np.prod(out, dtype=np.int64)) * int(k)

    def _bias_scale(self, node):
        return _attr(node, "beta", 1.0)

    def fold_bias(self, model, i, delta, dtype, taken, touched):
        node = model.graph.node[i]
        old = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if old and constant_in(model, old) is None:  # dequantised: its integers move, beta stays
            moved = fold_into_dequantized(model, old, delta / self._bias_scale(node), taken)
            if moved is not None:
                return {moved}
        dropped = super().fold_bias(model, i, delta, dtype, taken, touched)
        kept = [a for a in node.attribute if a.name != "beta"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("beta", 1.0))  # beta is now inside the new bias
        return dropped


@linear("MatMul")
class MatMulSpec(LinearSpec):
    refittable = True

    def out_axis(self, node):
        return 1

    def in_axis(self, node):
        return 0

    def matrix(self, node, weight):
        return weight

    def from_matrix(self, node, matrix, shape=None):
        return matrix

    def macs(self, node, shapes):
        a = shapes.get(node.input[0]) if node.input else None
        out = shapes.get(node.output[0]) if node.output else None
        if not (_known(a) and _known(out)) or not a:  # a scalar has no contraction axis to count
            return None
        return int(np.prod(out, dtype=np.int64)) * int(a[-1])

    def fold_bias(self, model, i, delta, dtype, taken, touched):
        """MatMul has no bias input: fold into the per-feature Add that follows it, or insert one."""
        return fold_after(model, i, delta, dtype, taken, touched)


def _per_feature(value: np.ndarray, n: int) -> bool:
    return value.ndim == 0 or (value.shape[-1] in (1, n) and all(d == 1 for d in value.shape[:-1]))


def fold_after(model: onnx.ModelProto, i: int, delta: np.ndarray, dtype, taken: set, touched: set) -> set:
    """Add `delta` (per feature of the last axis) to the output of node `i`: into the per-feature Add that
    follows it (directly, or behind a QuantizeLinear -> DequantizeLinear pair; a dequantised bias keeps its
    integers where the change fits them), or by a new Add after the node. Returns the constants it
    no longer reads."""
    node = model.graph.node[i]
    out = node.output[0]
    add, data = _bias_add(model, out)
    if add is not None:
        other = 1 if add.input[0] == data else 0
        old = add.input[other]
        current = constant_in(model, old)
        moved = fold_into_dequantized(model, old, delta, taken) if current is None else None
        if moved is not None:
            touched.add(add.output[0])
            return {moved}
        current = real_value(model, old) if current is None else current
        if current is not None and _per_feature(current, len(delta)):
            name = fresh(f"{old}_folded", taken)
            add_initializer(model, numpy_helper.from_array((current.astype(np.float64) + delta).astype(dtype),
                                                           name))
            add.input[other] = name
            touched.add(add.output[0])
            return {old}
    unbiased = fresh(f"{out}_unbiased", taken)
    bias_name = fresh(f"{node.name or 'matmul'}_bias_folded", taken)
    add_initializer(model, numpy_helper.from_array(delta.astype(dtype), bias_name))
    node.output[0] = unbiased
    add = onnx.helper.make_node("Add", [unbiased, bias_name], [out],
                                name=fresh(f"{node.name or 'matmul'}_bias", taken))
    model.graph.node.insert(i + 1, add)
    return set()


def _bias_add(model: onnx.ModelProto, tensor: str) -> tuple[onnx.NodeProto | None, str]:
    """The Add that alone reads `tensor` (or reads it behind a QuantizeLinear -> DequantizeLinear pair of
    one reader each), when none of these tensors is a graph output; and the tensor it reads."""
    outputs = {o.name for o in model.graph.output}
    for _ in range(3):
        users = readers(model, tensor)
        if tensor in outputs or len(users) != 1:
            return None, tensor
        user = users[0]
        if user.op_type == "Add" and user.input[0] != user.input[1]:
            return user, tensor
        if user.op_type not in ("QuantizeLinear", "DequantizeLinear") or user.input[0] != tensor:
            return None, tensor
        tensor = user.output[0]
    return None, tensor


class _ConvLike(LinearSpec):
    channels_first = True
    bias_input = 2

    def weight_rank_ok(self, shape):
        return len(shape) >= 3

    def weight_kind(self):
        return f"{self.op_type} kernel"

    def blocks(self, node: onnx.NodeProto) -> int:
        """The number of channel blocks (groups) the node reads and writes."""
        return int(_attr(node, "group", 1))


@linear("Conv")
class ConvSpec(_ConvLike):
    """Weight [C_out, C_in / group, k...].

    A grouped Conv (1 < group) reads its input channels and writes its output channels in
    `group` contiguous blocks, output block b from input block b only: both sides prune with
    equal kept counts per block (NeuronGroup.balanced), the input side by a per-block gather
    of the weight's axis 1 (BlockSlice). A depthwise Conv (group = channels) is pass-through.
    """

    refittable = True  # as a MatMul over im2col patches (reading.py), per channel block

    def out_axis(self, node):
        return 0

    def in_axis(self, node):
        return 1

    def matrix(self, node, weight):
        """[C_in / group x prod(kernel), C_out]: column o holds output o's kernel over its own block's
        channels, channel-major (the rows of an im2col patch of that block)."""
        return weight.reshape(len(weight), -1).T

    def from_matrix(self, node, matrix, shape=None):
        return matrix.T.reshape(matrix.shape[1], -1, *shape[2:])

    def window(self, node, shape):
        r = len(shape) - 2
        auto_pad = _attr(node, "auto_pad", "NOTSET")
        return Window(tuple(_attr(node, "kernel_shape", None) or shape[2:]),
                      tuple(_attr(node, "strides", None) or [1] * r), tuple(_attr(node, "pads", None) or [0] * (2 * r)),
                      tuple(_attr(node, "dilations", None) or [1] * r),
                      auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad))

    def effect(self, node, weight, n, repeat=1):
        # A constant input channel adds value x (sum of its kernel) to every output position
        # away from zero-padded borders; with groups, only to the outputs of its own block.
        spatial = tuple(range(2, weight.ndim))
        kernel, sq = weight.sum(axis=spatial), (weight**2).sum(axis=spatial)  # [C_out, C_in / group]
        g = self.blocks(node)
        if g == 1:
            return kernel.T, sq.sum(axis=0)
        c_out, per_in = kernel.shape
        per_out = c_out // g
        effect = np.zeros((g, per_in, g, per_out))
        blocks = np.arange(g)
        effect[blocks, :, blocks, :] = kernel.reshape(g, per_out, per_in).transpose(0, 2, 1)
        return effect.reshape(g * per_in, c_out), sq.reshape(g, per_out, per_in).sum(axis=1).reshape(-1)

    def macs(self, node, shapes):
        w = shapes.get(node.input[self.weight_input]) if len(node.input) > self.weight_input else None
        out = shapes.get(node.output[0]) if node.output else None
        if not (_known(w) and _known(out)) or len(w) < 3:
            return None
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))


@linear("ConvTranspose")
class ConvTransposeSpec(_ConvLike):
    """Weight [C_in, C_out / group, k...]. Grouped ConvTransposes are not pruned."""

    def check_producer(self, index, i, label):
        group = index.attr(i, "group", 1)
        if group != 1:
            raise NotPrunable(f"{label} is a grouped ConvTranspose (group={group}): its output channels are "
                              "columns of a per-block weight, which is not pruned", "grouped-conv", label)

    def check_consumer(self, index, i, position, tensor, label):
        super().check_consumer(index, i, position, tensor, label)
        group = index.attr(i, "group", 1)
        if group != 1:
            raise NotPrunable(f"tensor {tensor!r} reaches {label}, a grouped ConvTranspose (group={group}), "
                              "which is not pruned", "grouped-conv", label, tensor)

    def out_axis(self, node):
        return 1

    def in_axis(self, node):
        return 0

    def effect(self, node, weight, n, repeat=1):
        # With stride s, an output position receives on average prod(k)/prod(s) kernel taps of a
        # constant input: the mean added value, exact in the interior only for stride 1.
        spatial = tuple(range(2, weight.ndim))
        strides = _attr(node, "strides", None) or [1] * len(spatial)
        per_position = weight.sum(axis=spatial) / float(np.prod(strides))
        return per_position, (weight**2).sum(axis=(1, *spatial))

    def macs(self, node, shapes):
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        x = shapes.get(node.input[0]) if node.input else None
        if not (_known(w) and _known(x)) or len(w) < 3:
            return None
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))

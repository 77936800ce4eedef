"""Producers and consumers: the checks and slices of a linear node with a constant weight.

The linear specs (ops/linear.py) say where an op's weight keeps its features; this module asks them
whether a node's weight can be cut (a constant of its own, not quantised, of the expected shape) and
returns the slices the rewrite makes.
"""

from __future__ import annotations

import numpy as np

from ..graph import ConstantView, GraphIndex
from ..ops import BlockSlice, ConstSlice, Features, NotPrunable, constant_slice, linear_spec, per_feature_slice
from .model import Consumer


def producer_slices(index: GraphIndex, i: int, group) -> list[ConstSlice]:
    """Set the group's size and layout; return the producer's weight and bias slices, or raise NotPrunable."""
    node = index.nodes[i]
    spec = linear_spec(node)
    label = index.node_name(i)
    if index.view(i, 0) is not None:
        raise NotPrunable(f"{label}: its data input is a constant", "weight", label, node.input[0])
    w = spec.weight_input
    raw = index.view(i, w, dequantized=True) if len(node.input) > w else None
    if raw is not None and spec.weight_rank_ok(raw.shape):
        group.size = raw.shape[spec.out_axis(node)]
    view = weight_view(index, i, label)
    spec.check_producer(index, i, label)
    if spec.channels_first:
        group.features = Features(group.size, 1 - len(view.shape), len(view.shape))
        group.blocks = spec.blocks(node)
        if group.size % group.blocks:
            raise NotPrunable(f"{label}: {group.size} output channels do not split into {group.blocks} blocks",
                              "grouped-conv", label)
    else:
        group.features = Features(group.size)
    weight_slice = constant_slice(view, spec.out_axis(node))
    bias_slices = []
    b = spec.bias_input
    if b is not None and len(node.input) > b and node.input[b]:
        if spec.channels_first:
            bias = index.view(i, b, dequantized=True)
            if bias is None or bias.shape != (group.size,):
                raise NotPrunable(f"{label}: bias {node.input[b]!r} is not a constant of {group.size} values",
                                  "bias", label, node.input[b])
            bias_slices = [constant_slice(bias, 0)]
        else:
            # A shared bias is copied by the rewriter, not refused: it is small.
            bias_slices = per_feature_slice(index, i, b, group.features)
    return [weight_slice, *bias_slices, *spec.producer_slices(index, i, group.size)]


QUANTISED = ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul")


def weight_view(index: GraphIndex, i: int, label: str) -> ConstantView:
    """A Gemm/MatMul/Conv's constant weight (input 1), or NotPrunable saying why it is not one."""
    node = index.nodes[i]
    spec = linear_spec(node)
    w = spec.weight_input
    if len(node.input) <= w:
        raise NotPrunable(f"{label}: it has no weight input", "weight", label)
    view = index.view(i, w, dequantized=True)
    if view is None:
        source = index.producer.get(node.input[w])
        op = index.nodes[source].op_type if source is not None else None
        if op in QUANTISED or (op in ("Mul", "Cast", "Sub") and _from_cast(index, source)):
            raise NotPrunable(f"{label}: its weight is dequantised at run time ({op}) in a form onnxprune does not "
                              "follow (scales computed at run time, blocked quantisation, or scales that do not "
                              "line up with the weight's axes)", "quantised", label, node.input[w])
        raise NotPrunable(f"{label}: its weight input is not a constant", "weight", label, node.input[w])
    if not spec.weight_rank_ok(view.shape):
        raise NotPrunable(f"{label}: weight {view.name!r} has shape {list(view.shape)}, not a {spec.weight_kind()}",
                          "weight", label, view.name)
    if index.view_shared(view):
        raise NotPrunable(f"{label}: weight {view.name!r} is shared with another node; pruning would untie it",
                          "shared-weight", label, view.name)
    return view


def _from_cast(index: GraphIndex, node: int, depth: int = 3) -> bool:
    """Whether a weight is computed from a Cast of a constant (weight-only quantisation)."""
    if depth == 0:
        return False
    n = index.nodes[node]
    if n.op_type == "Cast":
        return True
    return any(index.producer.get(x) is not None and _from_cast(index, index.producer[x], depth - 1)
               for x in n.input if x)


def consumer_read(index: GraphIndex, i: int, position: int, tensor: str, features: Features, repeat: int,
              via: str | None):
    node = index.nodes[i]
    spec = linear_spec(node)
    label = index.node_name(i)
    spec.check_consumer(index, i, position, tensor, label)
    try:
        view = weight_view(index, i, label)
    except NotPrunable as e:
        if "not a constant" in str(e):
            raise NotPrunable(f"{label} multiplies the group by a non-constant tensor", "consumer", label,
                              tensor) from None
        raise
    axis = spec.in_axis(node)
    rows = features.n * repeat
    blocks = spec.blocks(node) if spec.channels_first else 1
    if view.shape[axis] * blocks != rows or view.shape[spec.out_axis(node)] % blocks:
        raise NotPrunable(f"{label}: weight {view.name!r} has {view.shape[axis]} input rows for "
                          f"{features.n} features" + (f" x {repeat} positions" if repeat > 1 else "")
                          + (f" in {blocks} groups" if blocks > 1 else ""), "consumer", label, tensor)
    s = constant_slice(view, axis)
    info = Consumer(i, view, node.op_type, repeat, via, blocks=blocks)
    if blocks > 1:
        if s.companions:
            raise NotPrunable(f"{label}: a grouped Conv whose weight is quantised per input channel is not pruned",
                              "quantised", label, tensor)
        # output row o reads the input block o // (C_out / group): a per-block gather of axis 1
        return info, BlockSlice(s.node, s.input, s.axis, view.axes[spec.out_axis(node)], blocks, s.chain, consumer=i)
    return info, ConstSlice(s.node, s.input, s.axis, s.chain, consumer=i, repeat=repeat, companions=s.companions)


def consumer_weight(index: GraphIndex, node: int, view: ConstantView | None = None) -> np.ndarray:
    """A Gemm/MatMul consumer's weight as [features in, features out], alpha included: out = tap @ W."""
    spec = linear_spec(index.nodes[node])
    view = view or index.view(node, spec.weight_input, dequantized=True)
    return spec.matrix(index.nodes[node], spec.weight_value(index, node, view))


def consumer_effect(index: GraphIndex, info: Consumer, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: what a constant value of it adds to each output ([n, outputs]), and its squared weight norm.

    For a Conv consumer a constant input channel adds mean x (sum of its kernel) to every
    output position away from zero-padded borders; behind a Flatten, mean x (sum of the
    channel's block of rows).
    """
    w = info.spec.weight_value(index, info.node, info.view)
    return info.spec.effect(index.nodes[info.node], w, n_features, info.repeat)


def is_depthwise(index: GraphIndex, i: int) -> bool:
    view = index.view(i, 1, dequantized=True) if len(index.nodes[i].input) > 1 else None
    group = index.attr(i, "group", 1)
    return view is not None and group > 1 and len(view.shape) >= 3 and view.shape[1] == 1 and view.shape[0] == group

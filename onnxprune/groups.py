"""Neuron groups: every place one set of neurons lives in the graph.

A group starts at a *producer* (Gemm or MatMul with a constant weight) whose output
features are the neurons, runs through a *pass-through region* of ops that act on
each feature on its own, and ends at *consumers* (Gemm or MatMul with constant
weights) that contract over the features. Pruning a group applies one keep-mask
to every member: producer columns and bias, per-feature constants of the region,
consumer rows.

Example: ``x -> Gemm(W1, b1, transB=1) -> h -> Relu -> r -> MatMul(W2) -> y`` gives
one group of ``W1.shape[0]`` neurons, tapped at ``r``; removing neuron j drops row
j of W1, entry j of b1 and row j of W2. If ``r`` were also a graph output, or fed a
Reshape, the group would be listed as not prunable, with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import GraphIndex
from .ops import MIXING_REASONS, PASS_THROUGH, ConstSlice, NotPrunable, per_feature_slice

DEFAULT_DOMAINS = ("", "ai.onnx")
LINEAR_OPS = ("Gemm", "MatMul")


@dataclass
class NeuronGroup:
    name: str                    # the producer node's name
    producer_op: str
    size: int | None             # number of neurons (output features of the producer)
    tap: str | None = None       # the tensor the consumers read: statistics are taken here
    region: list[str] = field(default_factory=list)     # pass-through node names
    region_ops: list[str] = field(default_factory=list)  # their op types
    consumers: list[str] = field(default_factory=list)  # consumer node names
    slices: list[ConstSlice] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)    # every tensor carrying the features
    producer_node: int = -1                              # node indices, for the rewriter
    consumer_nodes: list[int] = field(default_factory=list)
    reason: str | None = None    # why the group is not prunable; None if it is

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "producer_op": self.producer_op,
            "neurons": self.size,
            "tap": self.tap,
            "region": self.region,
            "region_ops": self.region_ops,
            "consumers": self.consumers,
            "prunable": self.prunable,
            "reason": self.reason,
        }


def find_groups(model: onnx.ModelProto, index: GraphIndex | None = None) -> list[NeuronGroup]:
    """One NeuronGroup per Gemm/MatMul node, in graph order, prunable or with a reason."""
    index = index or GraphIndex(model)
    groups = []
    for i, node in enumerate(index.nodes):
        if node.op_type in LINEAR_OPS and node.domain in DEFAULT_DOMAINS:
            groups.append(_group_at(index, i))
    return groups


def _group_at(index: GraphIndex, producer: int) -> NeuronGroup:
    node = index.nodes[producer]
    group = NeuronGroup(index.node_name(producer), node.op_type, None, producer_node=producer)
    try:
        group.slices = _producer(index, producer, group)
        _follow(index, producer, group)
    except NotPrunable as e:
        group.reason = str(e)
    return group


def _shared(index: GraphIndex, name: str) -> bool:
    return index.uses(name) > 1


def _producer(index: GraphIndex, i: int, group: NeuronGroup) -> list[ConstSlice]:
    """Set the group's size; return the producer's weight and bias slices, or raise NotPrunable."""
    node = index.nodes[i]
    label = index.node_name(i)
    if len(node.input) < 2 or not index.is_constant(node.input[1]):
        raise NotPrunable(f"{label}: its weight input is not a constant")
    weight = node.input[1]
    shape = index.constant_shape(weight)
    if shape is None or len(shape) != 2:
        raise NotPrunable(f"{label}: weight {weight!r} is not a 2-D matrix")
    if index.is_constant(node.input[0]):
        raise NotPrunable(f"{label}: both inputs are constants")
    trans_b = node.op_type == "Gemm" and index.attr(i, "transB", 0)
    n_features = group.size = shape[0] if trans_b else shape[1]
    if _shared(index, weight):
        raise NotPrunable(f"{label}: weight {weight!r} is shared with another node; pruning would untie it")
    weight_slice = ConstSlice(i, 1, 0 if trans_b else 1)
    bias_slices = []
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        if not index.is_constant(node.input[2]):
            raise NotPrunable(f"{label}: bias {node.input[2]!r} is not a constant")
        # A shared bias is copied by the rewriter, not refused: it is small.
        bias_slices = per_feature_slice(index, i, 2, n_features)
    return [weight_slice, *bias_slices]


def _follow(index: GraphIndex, producer: int, group: NeuronGroup) -> None:
    """Walk from the producer's output through pass-through ops to the consumers."""
    n_features = group.size
    start = index.nodes[producer].output[0]
    region_tensors = {start}
    region_nodes: list[int] = []
    consumer_reads: list[tuple[int, int, str]] = []  # (node, input position, tensor)
    queue = [start]
    while queue:
        tensor = queue.pop(0)
        if tensor in index.graph_outputs:
            raise NotPrunable(f"tensor {tensor!r} is a graph output")
        if tensor in index.subgraph_names:
            raise NotPrunable(f"tensor {tensor!r} is used inside a subgraph")
        for reader, position in index.users(tensor):
            node = index.nodes[reader]
            label = index.node_name(reader)
            if node.domain not in DEFAULT_DOMAINS:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.domain}.{node.op_type}), "
                                  "an op onnxprune does not know")
            if node.op_type in LINEAR_OPS:
                consumer_reads.append((reader, position, tensor))
            elif node.op_type in PASS_THROUGH:
                if reader not in region_nodes:
                    region_nodes.append(reader)
                    for out in index.used_outputs(reader)[:1]:
                        region_tensors.add(out)
                        queue.append(out)
            elif node.op_type in MIXING_REASONS:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.op_type}), which "
                                  f"{MIXING_REASONS[node.op_type]}")
            else:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.op_type}), "
                                  "which is not known to act on each feature on its own")

    region_nodes.sort()
    slices = []
    for r in region_nodes:
        slices += PASS_THROUGH[index.nodes[r].op_type](index, r, region_tensors, n_features)

    if not consumer_reads:
        raise NotPrunable("no Gemm/MatMul consumes the group's features")
    taps = sorted({t for _, _, t in consumer_reads})
    if len(taps) > 1:
        raise NotPrunable(f"consumers read different tensors of the group ({', '.join(taps)})")
    consumers = []
    for reader, position, tensor in consumer_reads:
        slices.append(_consumer_slice(index, reader, position, tensor, n_features))
        consumers.append(reader)

    group.tap = taps[0]
    group.tensors = sorted(region_tensors)
    group.region = [index.node_name(r) for r in region_nodes]
    group.region_ops = [index.nodes[r].op_type for r in region_nodes]
    group.consumers = [index.node_name(c) for c in consumers]
    group.consumer_nodes = consumers
    group.slices += slices


def _consumer_slice(index: GraphIndex, i: int, position: int, tensor: str, n_features: int) -> ConstSlice:
    node = index.nodes[i]
    label = index.node_name(i)
    if position != 0:
        raise NotPrunable(f"tensor {tensor!r} is the weight input of {label}, not its data input")
    if len(node.input) < 2 or not index.is_constant(node.input[1]):
        raise NotPrunable(f"{label} multiplies the group by a non-constant tensor")
    weight = node.input[1]
    shape = index.constant_shape(weight)
    if shape is None or len(shape) != 2:
        raise NotPrunable(f"{label}: weight {weight!r} is not a 2-D matrix")
    if _shared(index, weight):
        raise NotPrunable(f"{label}: weight {weight!r} is shared with another node; pruning would untie it")
    if node.op_type == "Gemm":
        if index.attr(i, "transA", 0):
            raise NotPrunable(f"{label} has transA=1, so it does not contract over the feature axis")
        axis = 1 if index.attr(i, "transB", 0) else 0
    else:
        axis = 0
    if shape[axis] != n_features:
        raise NotPrunable(f"{label}: weight {weight!r} has {shape[axis]} rows for {n_features} features")
    return ConstSlice(i, 1, axis)


def consumer_weight(index: GraphIndex, node: int) -> np.ndarray:
    """A consumer's weight as [features in, features out], Gemm's alpha included: out = tap @ W (+ bias)."""
    w = index.constant_value(index.nodes[node].input[1]).astype(np.float64)
    if index.nodes[node].op_type == "Gemm":
        if index.attr(node, "transB", 0):
            w = w.T
        w = w * index.attr(node, "alpha", 1.0)
    return w

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
from .graph import ConstantView
from .ops import MIXING_REASONS, ConstSlice, NotPrunable, constant_slice, domain_of, handler_for, per_feature_slice

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
    consumer_views: dict[int, ConstantView] = field(default_factory=dict, repr=False)
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


def _weight_view(index: GraphIndex, i: int, label: str) -> ConstantView:
    """A Gemm/MatMul's constant weight (input 1), or NotPrunable saying why it is not one."""
    node = index.nodes[i]
    if len(node.input) < 2:
        raise NotPrunable(f"{label}: it has no weight input")
    view = index.view(i, 1)
    if view is None:
        source = index.producer.get(node.input[1])
        op = index.nodes[source].op_type if source is not None else None
        if op in QUANTISED or (op in ("Mul", "Cast") and _from_cast(index, source)):
            raise NotPrunable(f"{label}: its weight is dequantised at run time ({op}); quantised layers are not pruned")
        raise NotPrunable(f"{label}: its weight input is not a constant")
    if len(view.shape) != 2:
        raise NotPrunable(f"{label}: weight {view.name!r} is not a 2-D matrix")
    if index.view_shared(view):
        raise NotPrunable(f"{label}: weight {view.name!r} is shared with another node; pruning would untie it")
    return view


QUANTISED = ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul")


def _from_cast(index: GraphIndex, node: int, depth: int = 3) -> bool:
    """Whether a weight is computed from a Cast of a constant (weight-only quantisation)."""
    if depth == 0:
        return False
    n = index.nodes[node]
    if n.op_type == "Cast":
        return True
    return any(index.producer.get(x) is not None and _from_cast(index, index.producer[x], depth - 1)
               for x in n.input if x)


def _producer(index: GraphIndex, i: int, group: NeuronGroup) -> list[ConstSlice]:
    """Set the group's size; return the producer's weight and bias slices, or raise NotPrunable."""
    node = index.nodes[i]
    label = index.node_name(i)
    if index.view(i, 0) is not None:
        raise NotPrunable(f"{label}: its data input is a constant")
    if len(node.input) >= 2 and index.view(i, 1) is not None and len(index.view(i, 1).shape) == 2:
        shape = index.view(i, 1).shape
        trans_b = node.op_type == "Gemm" and index.attr(i, "transB", 0)
        group.size = shape[0] if trans_b else shape[1]
    view = _weight_view(index, i, label)
    trans_b = node.op_type == "Gemm" and index.attr(i, "transB", 0)
    n_features = group.size
    weight_slice = constant_slice(view, 0 if trans_b else 1)
    bias_slices = []
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
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
    try:
        _walk(index, start, region_tensors, region_nodes, consumer_reads)
    except NotPrunable as blocked:
        # A residual Add met on the way is the real reason more often than what follows it.
        for r in sorted(region_nodes):
            try:
                handler_for(index.nodes[r])(index, r, region_tensors, n_features)
            except NotPrunable as merge:
                if "outside" in str(merge):
                    raise merge from None
        raise blocked

    region_nodes.sort()
    slices = []
    for r in region_nodes:
        slices += handler_for(index.nodes[r])(index, r, region_tensors, n_features)

    if not consumer_reads:
        raise NotPrunable("no Gemm/MatMul consumes the group's features")
    taps = sorted({t for _, _, t in consumer_reads})
    if len(taps) > 1:
        raise NotPrunable(f"consumers read different tensors of the group ({', '.join(taps)})")
    consumers = []
    for reader, position, tensor in consumer_reads:
        view, consumer_slice = _consumer_slice(index, reader, position, tensor, n_features)
        slices.append(consumer_slice)
        group.consumer_views[reader] = view
        consumers.append(reader)

    group.tap = taps[0]
    group.tensors = sorted(region_tensors)
    group.region = [index.node_name(r) for r in region_nodes]
    group.region_ops = [index.nodes[r].op_type for r in region_nodes]
    group.consumers = [index.node_name(c) for c in consumers]
    group.consumer_nodes = consumers
    group.slices += slices


def _walk(index: GraphIndex, start: str, region_tensors: set, region_nodes: list, consumer_reads: list) -> None:
    """Breadth-first from the producer's output through pass-through ops; consumers end the walk."""
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
            handler = handler_for(node)
            if node.op_type in LINEAR_OPS and domain_of(node) == "":
                consumer_reads.append((reader, position, tensor))
            elif handler is not None:
                if reader not in region_nodes:
                    region_nodes.append(reader)
                    for out in index.used_outputs(reader)[:1]:
                        region_tensors.add(out)
                        queue.append(out)
            elif domain_of(node):
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.domain}.{node.op_type}), "
                                  "an op onnxprune does not know")
            elif node.op_type in MIXING_REASONS:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.op_type}), which "
                                  f"{MIXING_REASONS[node.op_type]}")
            else:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.op_type}), "
                                  "which is not known to act on each feature on its own")


def _consumer_slice(index: GraphIndex, i: int, position: int, tensor: str, n_features: int):
    node = index.nodes[i]
    label = index.node_name(i)
    if position != 0:
        raise NotPrunable(f"tensor {tensor!r} is the weight input of {label}, not its data input")
    if len(node.input) >= 2 and index.view(i, 1) is None and index.producer.get(node.input[1]) is None \
            and node.input[1] not in index.initializers:
        raise NotPrunable(f"{label} multiplies the group by a non-constant tensor")
    try:
        view = _weight_view(index, i, label)
    except NotPrunable as e:
        if "not a constant" in str(e):
            raise NotPrunable(f"{label} multiplies the group by a non-constant tensor") from None
        raise
    if node.op_type == "Gemm":
        if index.attr(i, "transA", 0):
            raise NotPrunable(f"{label} has transA=1, so it does not contract over the feature axis")
        axis = 1 if index.attr(i, "transB", 0) else 0
    else:
        axis = 0
    if view.shape[axis] != n_features:
        raise NotPrunable(f"{label}: weight {view.name!r} has {view.shape[axis]} rows for {n_features} features")
    s = constant_slice(view, axis)
    return view, ConstSlice(s.node, s.input, s.axis, s.chain, consumer=i)


def consumer_weight(index: GraphIndex, node: int, view: ConstantView | None = None) -> np.ndarray:
    """A consumer's weight as [features in, features out], Gemm's alpha included: out = tap @ W (+ bias)."""
    view = view or index.view(node, 1)
    w = view.effective(index.constant_value(view.name)).astype(np.float64)
    if index.nodes[node].op_type == "Gemm":
        if index.attr(node, "transB", 0):
            w = w.T
        w = w * index.attr(node, "alpha", 1.0)
    return w

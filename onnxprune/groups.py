"""Neuron groups: every place one set of neurons lives in the graph.

A group starts at a *producer* (Gemm, MatMul or Conv with a constant weight) whose
output features are the neurons (a Conv's output channels), runs through a
*pass-through region* of ops that act on each feature on its own, and ends at
*consumers* (Gemm/MatMul, or Conv, with constant weights) that contract over the
features. Pruning a group applies one keep-mask to every member: producer columns
and bias, per-feature constants of the region, consumer rows.

Example: ``x -> Gemm(W1, b1, transB=1) -> h -> Relu -> r -> MatMul(W2) -> y`` gives
one group of ``W1.shape[0]`` neurons, tapped at ``r``; removing neuron j drops row
j of W1, entry j of b1 and row j of W2. If ``r`` were also a graph output, or fed a
Reshape, the group would be listed as not prunable, with that reason. A Conv's
channels reaching a Gemm through ``Flatten`` are rows in blocks of H*W per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import ConstantView, GraphIndex
from .ops import (MIXING_REASONS, ConstSlice, Features, NotPrunable, ShapeUpdate, constant_slice, domain_of,
                  handler_for, per_feature_slice)

LINEAR_OPS = ("Gemm", "MatMul")
PRODUCER_OPS = ("Gemm", "MatMul", "Conv")


@dataclass
class Consumer:
    """How one consumer reads a group: its node, its weight, and the rows per feature (Flatten: H*W)."""

    node: int
    view: ConstantView
    op: str
    repeat: int = 1
    via: str | None = None  # the tensor a Flatten/Reshape made from the tap, if any

    @property
    def refittable(self) -> bool:
        """Least-squares refit is closed-form for plain Gemm/MatMul consumers of the tap itself."""
        return self.op in LINEAR_OPS and self.repeat == 1


@dataclass
class NeuronGroup:
    name: str                    # the producer node's name
    producer_op: str
    size: int | None             # number of neurons (output features of the producer)
    tap: str | None = None       # the tensor the consumers read: statistics are taken here
    region: list[str] = field(default_factory=list)     # pass-through node names
    region_ops: list[str] = field(default_factory=list)  # their op types
    consumers: list[str] = field(default_factory=list)  # consumer node names
    slices: list = field(default_factory=list)          # ConstSlice and CountAttribute
    tensors: list[str] = field(default_factory=list)    # every tensor carrying the features
    producer_node: int = -1                              # node indices, for the rewriter
    consumer_nodes: list[int] = field(default_factory=list)
    consumer_info: dict[int, Consumer] = field(default_factory=dict, repr=False)
    features: Features | None = field(default=None, repr=False)
    reason: str | None = None    # why the group is not prunable; None if it is

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def axis(self) -> int:
        """The feature axis of the tap (negative: -1 for Gemm/MatMul, 1 - rank for Conv channels)."""
        return self.features.axis if self.features else -1

    @property
    def consumer_views(self) -> dict[int, ConstantView]:
        return {c: info.view for c, info in self.consumer_info.items()}

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
    """One NeuronGroup per Gemm/MatMul/Conv node (depthwise Convs excepted), prunable or with a reason."""
    index = index or GraphIndex(model)
    groups = []
    for i, node in enumerate(index.nodes):
        if node.op_type in PRODUCER_OPS and domain_of(node) == "":
            if node.op_type == "Conv" and _is_depthwise(index, i):
                continue  # a pass-through op of the group that feeds it
            groups.append(_group_at(index, i))
    return groups


def _is_depthwise(index: GraphIndex, i: int) -> bool:
    view = index.view(i, 1) if len(index.nodes[i].input) > 1 else None
    group = index.attr(i, "group", 1)
    return view is not None and group > 1 and len(view.shape) >= 3 and view.shape[1] == 1 and view.shape[0] == group


def _group_at(index: GraphIndex, producer: int) -> NeuronGroup:
    node = index.nodes[producer]
    group = NeuronGroup(index.node_name(producer), node.op_type, None, producer_node=producer)
    try:
        group.slices = _producer(index, producer, group)
        _follow(index, producer, group)
    except NotPrunable as e:
        group.reason = str(e)
    return group


QUANTISED = ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul")


def _weight_view(index: GraphIndex, i: int, label: str) -> ConstantView:
    """A Gemm/MatMul/Conv's constant weight (input 1), or NotPrunable saying why it is not one."""
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
    rank_ok = len(view.shape) >= 3 if node.op_type == "Conv" else len(view.shape) == 2
    if not rank_ok:
        raise NotPrunable(f"{label}: weight {view.name!r} has shape {list(view.shape)}, not a "
                          + ("Conv kernel" if node.op_type == "Conv" else "2-D matrix"))
    if index.view_shared(view):
        raise NotPrunable(f"{label}: weight {view.name!r} is shared with another node; pruning would untie it")
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


def _producer(index: GraphIndex, i: int, group: NeuronGroup) -> list[ConstSlice]:
    """Set the group's size and layout; return the producer's weight and bias slices, or raise NotPrunable."""
    node = index.nodes[i]
    label = index.node_name(i)
    if index.view(i, 0) is not None:
        raise NotPrunable(f"{label}: its data input is a constant")
    raw = index.view(i, 1) if len(node.input) >= 2 else None
    trans_b = node.op_type == "Gemm" and index.attr(i, "transB", 0)
    if raw is not None and len(raw.shape) >= 2:
        group.size = raw.shape[0] if (trans_b or node.op_type == "Conv") else raw.shape[1]
    view = _weight_view(index, i, label)
    if node.op_type == "Conv":
        if index.attr(i, "group", 1) != 1:
            raise NotPrunable(f"{label} is a grouped Conv (group={index.attr(i, 'group', 1)}): its channels are "
                              "coupled to its input's, which is not pruned yet")
        group.features = Features(group.size, 1 - len(view.shape), len(view.shape))
        weight_slice = constant_slice(view, 0)
    else:
        group.features = Features(group.size)
        weight_slice = constant_slice(view, 0 if trans_b else 1)
    bias_slices = []
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
        bias = index.view(i, 2)
        if bias is None or bias.shape != (group.size,):
            raise NotPrunable(f"{label}: bias {node.input[2]!r} is not a constant of {group.size} values")
        bias_slices = [constant_slice(bias, 0)]
    elif node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        # A shared bias is copied by the rewriter, not refused: it is small.
        bias_slices = per_feature_slice(index, i, 2, group.features)
    return [weight_slice, *bias_slices]


def _follow(index: GraphIndex, producer: int, group: NeuronGroup) -> None:
    """Walk from the producer's output through pass-through ops to the consumers."""
    features = group.features
    start = index.nodes[producer].output[0]
    region_tensors = {start}
    region_nodes: list[int] = []
    reads: list[tuple] = []  # (consumer node, input position, tap tensor, repeat, via tensor)
    try:
        _walk(index, start, features, region_tensors, region_nodes, reads)
    except NotPrunable as blocked:
        # A residual Add met on the way is the real reason more often than what follows it.
        for r in sorted(region_nodes):
            try:
                handler_for(index.nodes[r])(index, r, region_tensors, features)
            except NotPrunable as merge:
                if "outside" in str(merge):
                    raise merge from None
        raise blocked

    region_nodes.sort()
    slices = []
    for r in region_nodes:
        slices += handler_for(index.nodes[r])(index, r, region_tensors, features)

    if not [r for r in reads if r[0] != "shape"]:
        raise NotPrunable("no Gemm/MatMul/Conv consumes the group's features")
    taps = sorted({r[2] for r in reads if r[0] != "shape"})
    if len(taps) > 1:
        raise NotPrunable(f"consumers read different tensors of the group ({', '.join(taps)})")
    shape_updates = [r[1] for r in reads if r[0] == "shape"]
    reads = [r for r in reads if r[0] != "shape"]
    slices += shape_updates
    for reader, position, tensor, repeat, via in reads:
        info, consumer_slice = _consumer(index, reader, position, tensor, features, repeat, via)
        slices.append(consumer_slice)
        group.consumer_info[reader] = info
        if via:
            region_tensors.add(via)

    group.tap = taps[0]
    group.tensors = sorted(region_tensors)
    group.region = [index.node_name(r) for r in region_nodes]
    group.region_ops = [index.nodes[r].op_type for r in region_nodes]
    group.consumer_nodes = [r for r, *_ in reads]
    group.consumers = [index.node_name(c) for c in group.consumer_nodes]
    group.slices += slices


def _walk(index: GraphIndex, start: str, features: Features, region_tensors: set, region_nodes: list,
          reads: list) -> None:
    """Breadth-first from the producer's output through pass-through ops; consumers end the walk."""
    channels = features.channel_first
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
            op = node.op_type if domain_of(node) == "" else None
            if op in LINEAR_OPS:
                if channels:
                    raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which contracts over the last "
                                      "spatial axis, not the channels")
                reads.append((reader, position, tensor, 1, None))
            elif op == "Conv" and index.attr(reader, "group", 1) == 1 and position == 0:
                if not channels:
                    raise NotPrunable(f"tensor {tensor!r} reaches {label} (Conv), which reads channels on axis 1, "
                                      "but the group's features are on the last axis")
                reads.append((reader, position, tensor, 1, None))
            elif channels and op in ("Flatten", "Reshape") and _flattens_channels(index, reader, tensor, features):
                reads.extend(_flatten_reads(index, reader, tensor))
            elif handler_for(node) is not None:
                if reader not in region_nodes:
                    region_nodes.append(reader)
                    for out in index.used_outputs(reader)[:1]:
                        region_tensors.add(out)
                        queue.append(out)
            elif op is None:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.domain}.{node.op_type}), "
                                  "an op onnxprune does not know")
            elif op == "Conv":
                raise NotPrunable(f"tensor {tensor!r} reaches {label}, a grouped Conv "
                                  f"(group={index.attr(reader, 'group', 1)}): coupled channels are not pruned yet")
            elif op in MIXING_REASONS:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which {MIXING_REASONS[op]}")
            else:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), "
                                  "which is not known to act on each feature on its own")


def _flattens_channels(index: GraphIndex, node: int, tensor: str, features: Features) -> bool:
    """Flatten(axis=1), or a Reshape to a constant [batch, -1] or [-1, C*H*W]: [N, C, ...] -> [N, C*...]."""
    n = index.nodes[node]
    if n.op_type == "Flatten":
        return index.attr(node, "axis", 1) == 1
    view = index.view(node, 1) if len(n.input) > 1 else None
    if view is None or view.shape != (2,) or n.input[0] != tensor:
        return False
    target = index.constant_value(view.name).tolist()
    shape = index.shape(tensor)
    per_channel = (int(np.prod(shape[2:])) if shape is not None and len(shape) >= 3
                   and all(isinstance(d, int) and d > 0 for d in shape[2:]) else None)
    return (target[1] == -1 and target[0] != -1) or (
        target[0] in (0, -1) and per_channel is not None and target[1] == features.n * per_channel)


def _flatten_reads(index: GraphIndex, flatten: int, tensor: str) -> list[tuple]:
    """The Gemm/MatMul consumers behind a Flatten of channels; each row block is one channel's H*W."""
    label = index.node_name(flatten)
    shape = index.shape(tensor)
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise NotPrunable(f"{label} flattens channels whose spatial size is not known ({shape})")
    repeat = int(np.prod(shape[2:]))
    out = index.nodes[flatten].output[0]
    if out in index.graph_outputs or out in index.subgraph_names:
        raise NotPrunable(f"tensor {out!r} (after {label}) is a graph output or used in a subgraph")
    reads = []
    n = index.nodes[flatten]
    if n.op_type == "Reshape":
        target = index.constant_value(index.view(flatten, 1).name).tolist()
        if target[1] != -1:  # the explicit C*H*W must follow the kept channels
            reads.append(("shape", ShapeUpdate(flatten, 1, 1, repeat)))
    for reader, position in index.users(out):
        node = index.nodes[reader]
        if node.op_type not in LINEAR_OPS or domain_of(node) != "":
            raise NotPrunable(f"{label}'s output reaches {index.node_name(reader)} ({node.op_type}), not a Gemm/MatMul")
        reads.append((reader, position, tensor, repeat, out))
    if not reads:
        raise NotPrunable(f"nothing reads {label}'s output")
    return reads


def _consumer(index: GraphIndex, i: int, position: int, tensor: str, features: Features, repeat: int,
              via: str | None):
    node = index.nodes[i]
    label = index.node_name(i)
    if position != 0:
        raise NotPrunable(f"tensor {tensor!r} is the weight input of {label}, not its data input")
    try:
        view = _weight_view(index, i, label)
    except NotPrunable as e:
        if "not a constant" in str(e):
            raise NotPrunable(f"{label} multiplies the group by a non-constant tensor") from None
        raise
    if node.op_type == "Conv":
        axis = 1
    elif node.op_type == "Gemm":
        if index.attr(i, "transA", 0):
            raise NotPrunable(f"{label} has transA=1, so it does not contract over the feature axis")
        axis = 1 if index.attr(i, "transB", 0) else 0
    else:
        axis = 0
    rows = features.n * repeat
    if view.shape[axis] != rows:
        raise NotPrunable(f"{label}: weight {view.name!r} has {view.shape[axis]} input rows for "
                          f"{features.n} features" + (f" x {repeat} positions" if repeat > 1 else ""))
    s = constant_slice(view, axis)
    info = Consumer(i, view, node.op_type, repeat, via)
    return info, ConstSlice(s.node, s.input, s.axis, s.chain, consumer=i, repeat=repeat)


def consumer_weight(index: GraphIndex, node: int, view: ConstantView | None = None) -> np.ndarray:
    """A Gemm/MatMul consumer's weight as [features in, features out], alpha included: out = tap @ W."""
    view = view or index.view(node, 1)
    w = view.effective(index.constant_value(view.name)).astype(np.float64)
    if index.nodes[node].op_type == "Gemm":
        if index.attr(node, "transB", 0):
            w = w.T
        w = w * index.attr(node, "alpha", 1.0)
    return w


def consumer_effect(index: GraphIndex, info: Consumer, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: what a constant value of it adds to each output ([n, outputs]), and its squared weight norm.

    For a Conv consumer a constant input channel adds mean x (sum of its kernel) to every
    output position away from zero-padded borders; behind a Flatten, mean x (sum of the
    channel's block of rows).
    """
    if info.op == "Conv":
        w = info.view.effective(index.constant_value(info.view.name)).astype(np.float64)  # [out, in, k...]
        spatial = tuple(range(2, w.ndim))
        return w.sum(axis=spatial).T, (w**2).sum(axis=(0, *spatial))
    w = consumer_weight(index, info.node, info.view)  # [n * repeat, out]
    if info.repeat > 1:
        blocks = w.reshape(n_features, info.repeat, -1)
        return blocks.sum(axis=1), (blocks**2).sum(axis=(1, 2))
    return w, (w**2).sum(axis=1)

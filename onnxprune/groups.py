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
from .ops import (LINEAR, MIXING_REASONS, ConstSlice, Features, LinearSpec, NotPrunable, ShapeUpdate, Skip,
                  constant_slice, domain_of, handler_for, linear_spec, per_feature_slice)


@dataclass
class Consumer:
    """How one consumer reads a group: its node, its weight, and the rows per feature (Flatten: H*W)."""

    node: int
    view: ConstantView
    op: str
    repeat: int = 1
    via: str | None = None  # the tensor a Flatten/Reshape made from the tap, if any

    @property
    def spec(self) -> LinearSpec:
        return LINEAR[self.op]

    @property
    def refittable(self) -> bool:
        """Least-squares refit is closed-form for plain Gemm/MatMul consumers of the tap itself."""
        return self.spec.refittable and self.repeat == 1


@dataclass
class NeuronGroup:
    name: str                    # the producer node's name (not unique in every model: see `id`)
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
    reason: Skip | None = None   # why the group is not prunable; None if it is
    id: str = ""                 # unique in the model and stable across runs: statistics and masks are keyed by it

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
            "id": self.id,
            "name": self.name,
            "producer_op": self.producer_op,
            "neurons": self.size,
            "tap": self.tap,
            "region": self.region,
            "region_ops": self.region_ops,
            "consumers": self.consumers,
            "prunable": self.prunable,
            "reason": None if self.reason is None else str(self.reason),
            "skip": None if self.reason is None else self.reason.to_dict(),
        }


def find_groups(model: onnx.ModelProto, index: GraphIndex | None = None) -> list[NeuronGroup]:
    """One NeuronGroup per linear node (depthwise Convs excepted), prunable or with a reason."""
    index = index or GraphIndex(model)
    groups = []
    for i, node in enumerate(index.nodes):
        if linear_spec(node) is not None:
            if node.op_type == "Conv" and _is_depthwise(index, i):
                continue  # a pass-through op of the group that feeds it
            group = _group_at(index, i)
            group.id = node_id(index, i, {g.id for g in groups})
            groups.append(group)
    return groups


def node_id(index: GraphIndex, i: int, taken: set = frozenset()) -> str:
    """A node's name where it names only this node; else its name (or op type) and its node index."""
    name = index.nodes[i].name
    if name and index.name_count(name) == 1:
        return name
    candidate = f"{name or index.nodes[i].op_type}#{i}"
    while candidate in taken or index.name_count(candidate):  # a node may be literally named "Gemm#3"
        candidate += f"#{i}"
    return candidate


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
        group.reason = e.skip
    return group


QUANTISED = ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul")


def _weight_view(index: GraphIndex, i: int, label: str) -> ConstantView:
    """A Gemm/MatMul/Conv's constant weight (input 1), or NotPrunable saying why it is not one."""
    node = index.nodes[i]
    spec = linear_spec(node)
    if len(node.input) < 2:
        raise NotPrunable(f"{label}: it has no weight input", "weight", label)
    view = index.view(i, 1)
    if view is None:
        source = index.producer.get(node.input[1])
        op = index.nodes[source].op_type if source is not None else None
        if op in QUANTISED or (op in ("Mul", "Cast") and _from_cast(index, source)):
            raise NotPrunable(f"{label}: its weight is dequantised at run time ({op}); quantised layers are not pruned",
                              "quantised", label, node.input[1])
        raise NotPrunable(f"{label}: its weight input is not a constant", "weight", label, node.input[1])
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


def _producer(index: GraphIndex, i: int, group: NeuronGroup) -> list[ConstSlice]:
    """Set the group's size and layout; return the producer's weight and bias slices, or raise NotPrunable."""
    node = index.nodes[i]
    spec = linear_spec(node)
    label = index.node_name(i)
    if index.view(i, 0) is not None:
        raise NotPrunable(f"{label}: its data input is a constant", "weight", label, node.input[0])
    raw = index.view(i, 1) if len(node.input) >= 2 else None
    if raw is not None and spec.weight_rank_ok(raw.shape):
        group.size = raw.shape[spec.out_axis(node)]
    view = _weight_view(index, i, label)
    spec.check_producer(index, i, label)
    if spec.channels_first:
        group.features = Features(group.size, 1 - len(view.shape), len(view.shape))
    else:
        group.features = Features(group.size)
    weight_slice = constant_slice(view, spec.out_axis(node))
    bias_slices = []
    b = spec.bias_input
    if b is not None and len(node.input) > b and node.input[b]:
        if spec.channels_first:
            bias = index.view(i, b)
            if bias is None or bias.shape != (group.size,):
                raise NotPrunable(f"{label}: bias {node.input[b]!r} is not a constant of {group.size} values",
                                  "bias", label, node.input[b])
            bias_slices = [constant_slice(bias, 0)]
        else:
            # A shared bias is copied by the rewriter, not refused: it is small.
            bias_slices = per_feature_slice(index, i, b, group.features)
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
        raise NotPrunable("no Gemm/MatMul/Conv consumes the group's features", "no-consumer")
    taps = sorted({r[2] for r in reads if r[0] != "shape"})
    if len(taps) > 1:
        raise NotPrunable(f"consumers read different tensors of the group ({', '.join(taps)})", "taps")
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
            raise NotPrunable(f"tensor {tensor!r} is a graph output", "graph-output", tensor=tensor)
        if tensor in index.subgraph_names:
            raise NotPrunable(f"tensor {tensor!r} is used inside a subgraph", "subgraph", tensor=tensor)
        for reader, position in index.users(tensor):
            node = index.nodes[reader]
            label = index.node_name(reader)
            op = node.op_type if domain_of(node) == "" else None
            spec = linear_spec(node)
            if spec is not None and not (op == "Conv" and position == 0 and index.attr(reader, "group", 1) != 1):
                if channels and not spec.channels_first:
                    raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which contracts over the last "
                                      "spatial axis, not the channels", "layout", label, tensor)
                if spec.channels_first and not channels:
                    raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which reads channels on axis 1, "
                                      "but the group's features are on the last axis", "layout", label, tensor)
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
                                  "an op onnxprune does not know", "unknown-op", label, tensor)
            elif op == "Conv":
                raise NotPrunable(f"tensor {tensor!r} reaches {label}, a grouped Conv "
                                  f"(group={index.attr(reader, 'group', 1)}): coupled channels are not pruned yet",
                                  "grouped-conv", label, tensor)
            elif op in MIXING_REASONS:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which {MIXING_REASONS[op]}", "mixing-op",
                                  label, tensor)
            else:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), "
                                  "which is not known to act on each feature on its own", "unknown-op", label, tensor)


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
        raise NotPrunable(f"{label} flattens channels whose spatial size is not known ({shape})", "layout", label,
                          tensor)
    repeat = int(np.prod(shape[2:]))
    out = index.nodes[flatten].output[0]
    if out in index.graph_outputs or out in index.subgraph_names:
        raise NotPrunable(f"tensor {out!r} (after {label}) is a graph output or used in a subgraph", "graph-output",
                          label, out)
    reads = []
    n = index.nodes[flatten]
    if n.op_type == "Reshape":
        target = index.constant_value(index.view(flatten, 1).name).tolist()
        if target[1] != -1:  # the explicit C*H*W must follow the kept channels
            reads.append(("shape", ShapeUpdate(flatten, 1, 1, repeat)))
    for reader, position in index.users(out):
        node = index.nodes[reader]
        spec = linear_spec(node)
        if spec is None or spec.channels_first:
            raise NotPrunable(f"{label}'s output reaches {index.node_name(reader)} ({node.op_type}), not a Gemm/MatMul",
                              "layout", index.node_name(reader), out)
        reads.append((reader, position, tensor, repeat, out))
    if not reads:
        raise NotPrunable(f"nothing reads {label}'s output", "no-consumer", label, out)
    return reads


def _consumer(index: GraphIndex, i: int, position: int, tensor: str, features: Features, repeat: int,
              via: str | None):
    node = index.nodes[i]
    spec = linear_spec(node)
    label = index.node_name(i)
    spec.check_consumer(index, i, position, tensor, label)
    try:
        view = _weight_view(index, i, label)
    except NotPrunable as e:
        if "not a constant" in str(e):
            raise NotPrunable(f"{label} multiplies the group by a non-constant tensor", "consumer", label,
                              tensor) from None
        raise
    axis = spec.in_axis(node)
    rows = features.n * repeat
    if view.shape[axis] != rows:
        raise NotPrunable(f"{label}: weight {view.name!r} has {view.shape[axis]} input rows for "
                          f"{features.n} features" + (f" x {repeat} positions" if repeat > 1 else ""),
                          "consumer", label, tensor)
    s = constant_slice(view, axis)
    info = Consumer(i, view, node.op_type, repeat, via)
    return info, ConstSlice(s.node, s.input, s.axis, s.chain, consumer=i, repeat=repeat)


def consumer_weight(index: GraphIndex, node: int, view: ConstantView | None = None) -> np.ndarray:
    """A Gemm/MatMul consumer's weight as [features in, features out], alpha included: out = tap @ W."""
    view = view or index.view(node, 1)
    w = view.effective(index.constant_value(view.name)).astype(np.float64)
    return linear_spec(index.nodes[node]).matrix(index.nodes[node], w)


def consumer_effect(index: GraphIndex, info: Consumer, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: what a constant value of it adds to each output ([n, outputs]), and its squared weight norm.

    For a Conv consumer a constant input channel adds mean x (sum of its kernel) to every
    output position away from zero-padded borders; behind a Flatten, mean x (sum of the
    channel's block of rows).
    """
    w = info.view.effective(index.constant_value(info.view.name)).astype(np.float64)
    return info.spec.effect(index.nodes[info.node], w, n_features, info.repeat)

"""Structural ops: how Concat, Split, Slice, Reshape/Flatten, Transpose and Shape carry a group's features.

Pass-through ops keep a tensor's layout; these change it. Concat on the feature axis joins layouts,
Split and Slice cut them (their sizes and bounds are rewritten for the kept features), a Flatten of
channels hands them to a Gemm as blocks of rows, a Reshape may split features into attention heads
(heads.py) or only regroup the rows before them, a Transpose may move only other axes, and a Shape
may read only axes that do not change. Each op is one handler registered with ``structural``
(ops/registry.py); anything else a tensor reaches blocks its groups (discover.py says why).
"""

from __future__ import annotations

import numpy as np

from ..graph import GraphIndex
from ..graph.fold import target_entries
from ..ops import CountEntry, Features, NotPrunable, PrivateTarget, ShapeUpdate, SliceBounds, SplitSizes, linear_spec
from ..ops.registry import structural
from .heads import split_heads
from .layout import Piece, sub, width
from .state import TensorInfo, Walk


@structural("Concat")
def _concat(walk: Walk, i: int, inputs: list) -> bool:
    """A Concat along the features: its output's layout is its inputs', in order (features from outside
    every group where an input carries none)."""
    index, node = walk.index, walk.index.nodes[i]
    label = index.node_name(i)
    known = [walk.info[n] for n in node.input if n in walk.info]
    axis, rank = walk.axis(i, known[0], 0)
    pieces = []
    for name in node.input:
        info = walk.info.get(name)
        if info is not None:
            if info.axis != axis:
                raise NotPrunable(f"{label} (Concat) joins tensor {name!r} along axis {axis}, not its features",
                                  "mixing-op", label, name)
            pieces += info.layout
            continue
        shape = index.shape(name)
        size = shape[axis] if shape is not None and len(shape) >= -axis else None
        if not isinstance(size, int):
            raise NotPrunable(f"{label} (Concat) joins {name!r}, whose number of features is not known",
                              "layout", label, name)
        pieces.append(Piece(None, 0, size))
    walk.region.append((i, tuple(pieces)))
    # the rank stays as the inputs knew it: a Gemm's [N, F] features are "last", not "axis 1"
    walk.set_features(node.output[0], TensorInfo(tuple(pieces), axis, known[0].rank))
    return True


@structural("Split")
def _split(walk: Walk, i: int, inputs: list) -> bool:
    """A Split of the features: each output carries its part; the sizes follow the kept features."""
    index, node = walk.index, walk.index.nodes[i]
    label = index.node_name(i)
    if [pos for pos, _ in inputs] != [0]:
        raise NotPrunable(f"{label} (Split) reads features as its split sizes", "layout", label, inputs[-1][1])
    info = walk.info[node.input[0]]
    axis, _ = walk.axis(i, info, 0)
    if axis != info.axis:
        raise NotPrunable(f"{label} splits tensor {node.input[0]!r} along another axis than its features",
                          "mixing-op", label, node.input[0])
    total = width(info.layout)
    if len(node.input) > 1 and node.input[1]:
        view = index.view(i, 1)
        if view is None:
            raise NotPrunable(f"{label} has split sizes computed at run time", "layout", label, node.input[1])
        sizes = [int(v) for v in index.constant_value(view.name).reshape(-1)]
    elif index.attr(i, "split") is not None:
        sizes = [int(v) for v in index.attr(i, "split")]
    else:
        parts = len(node.output)
        if total % parts:
            raise NotPrunable(f"{label} splits {total} features into {parts} unequal parts", "layout", label)
        sizes = [total // parts] * parts
    if sum(sizes) != total or len(sizes) != len(node.output):
        raise NotPrunable(f"{label}: split sizes {sizes} do not match {total} features", "layout", label)
    bounds, at = [], 0
    for size, out in zip(sizes, node.output):
        bounds.append((at, at + size))
        if out:
            walk.set_features(out, TensorInfo(sub(info.layout, at, at + size), info.axis, info.rank))
        at += size
    walk.place(SplitSizes(i, tuple(bounds)), info.layout)
    walk.region.append((i, info.layout))
    return True


@structural("Slice")
def _slice(walk: Walk, i: int, inputs: list) -> bool:
    """A Slice with constant bounds: of the features (the bounds follow the kept ones), or of other axes."""
    index, node = walk.index, walk.index.nodes[i]
    label = index.node_name(i)
    if [pos for pos, _ in inputs] != [0] or len(node.input) < 3:
        raise NotPrunable(f"{label} (Slice) is not a Slice with constant starts and ends", "layout", label)
    info = walk.info[node.input[0]]
    values = []
    for position in range(1, 5):
        if position >= len(node.input) or not node.input[position]:
            values.append(None)
            continue
        view = index.view(i, position)
        if view is None:
            raise NotPrunable(f"{label} slices with bounds computed at run time", "layout", label,
                              node.input[position])
        values.append([int(v) for v in index.constant_value(view.name).reshape(-1)])
    starts, ends, axes, steps = values
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    rank = info.rank or (len(index.shape(node.input[0])) if index.shape(node.input[0]) is not None else None)
    if any(a >= 0 for a in axes) and rank is None:
        raise NotPrunable(f"{label} slices a tensor of unknown rank", "layout", label)
    negative = [a - rank if a >= 0 else a for a in axes]
    layout = info.layout
    if info.axis in negative:
        k = negative.index(info.axis)
        if steps[k] != 1:
            raise NotPrunable(f"{label} slices the features with step {steps[k]}", "layout", label)
        total = width(layout)
        lo, hi = (min(max(v + total if v < 0 else v, 0), total) for v in (starts[k], ends[k]))
        if hi <= lo:
            raise NotPrunable(f"{label} takes no feature", "layout", label)
        layout = sub(layout, lo, hi)
        walk.place(SliceBounds(i, k, lo, hi), info.layout)
    walk.region.append((i, info.layout))
    walk.set_features(node.output[0], TensorInfo(layout, info.axis, info.rank))
    return True


@structural("Flatten", "Reshape")
def _reshape(walk: Walk, i: int, inputs: list) -> bool:
    """A flatten of channels, a split into heads, or a Reshape of the rows only; False for anything else."""
    position, tensor = inputs[0]
    if position != 0 or len(inputs) != 1:
        return False
    first = walk.info[tensor]
    if first.channel_first:
        if not _flattens_channels(walk.index, i, tensor, first.features()):
            return False
        _flatten(walk, i, tensor)
        return True
    return walk.index.nodes[i].op_type == "Reshape" and (split_heads(walk, i, tensor) or _rows_reshape(walk, i, tensor))


@structural("Transpose")
def _rows_transpose(walk: Walk, i: int, inputs: list) -> bool:
    """A Transpose that keeps the features on the last axis (sequence-first to batch-first and back):
    the features pass through. False when it moves them."""
    tensor = inputs[0][1]
    info = walk.info[tensor]
    shape = walk.index.shape(tensor)
    if info.axis != -1 or info.channel_first or shape is None:
        return False
    rank = len(shape)
    perm = walk.index.attr(i, "perm") or list(reversed(range(rank)))
    if len(perm) != rank or perm[-1] != rank - 1:
        return False
    walk.region.append((i, info.layout))
    walk.set_features(walk.index.nodes[i].output[0], TensorInfo(info.layout, -1, None))
    return True


@structural("Shape")
def _shape(walk: Walk, i: int, inputs: list) -> bool:
    tensor = inputs[0][1]
    walk.shape_read(i, tensor, [walk.info[tensor].axis])
    return True


def _rows_reshape(walk: Walk, i: int, tensor: str) -> bool:
    """A Reshape that only merges or splits the axes before the features (a Linear on tokens
    flattened to 2-D and back: transformers' Conv1D, nn.MultiheadAttention's out-projection): the
    features pass through. The target's last entry is the feature count: a constant (rewritten to
    the kept count), -1, a 0 that copies the same axis, or the size of these features' own axis read
    at run time (it follows the pruning). False when it is not such a Reshape."""
    index = walk.index
    info = walk.info[tensor]
    n = width(info.layout)
    node = index.nodes[i]
    src, dst = index.shape(tensor), index.shape(node.output[0])
    if info.axis != -1 or src is None or dst is None or not src or not dst or src[-1] != n or dst[-1] != n:
        return False
    entries = target_entries(index, i, 1)
    if entries is None or len(entries) != len(dst):
        return False
    if any(e.value == 0 and k >= len(src) - 1 for k, e in enumerate(entries[:-1])):
        return False  # a copy of the feature axis into a leading one
    if any(e.dim is not None and walk.feature_axis(*e.dim) for e in entries[:-1]):
        return False  # a leading size that is some features' count
    last, k = entries[-1], len(entries) - 1
    label = index.node_name(i)
    own = last.dim is not None and walk.feature_axis(*last.dim) and walk.info[last.dim[0]].layout == info.layout
    if i in walk.runtime_targets and not (own and all(e.value is not None or e.dim is not None
                                                      for e in entries[:-1])):
        return False  # sized at run time by some features' count in a way not shown to follow these
    if last.value == n and last.dim is None:
        if last.place is not None:
            node_, position, j, old, copies = last.place
            walk.place(CountEntry(node_, position, j, old, 1, copies), info.layout)
        else:  # a target Concat shared with other Reshapes: this one gets a copy of its own
            private = _private_target(index, i, k)
            if private is None:
                raise NotPrunable(f"{label} reshapes the rows of {tensor!r} with a feature count it cannot "
                                  "rewrite (computed at run time)", "shape-read", label, tensor)
            walk.place(private, info.layout)
    elif last.dim is not None:  # the size of an axis read at run time: it must be these features' own
        if not own:
            return False
    elif not (last.value == -1 or (last.value == 0 and k == len(src) - 1)):
        return False
    walk.runtime_targets.pop(i, None)  # sized by these features' Shape: claimed
    walk.region.append((i, info.layout))
    walk.set_features(node.output[0], TensorInfo(info.layout, -1, None))  # features last, at any rank
    return True


def _flatten(walk: Walk, i: int, tensor: str) -> None:
    """Channels flattened into a Gemm/MatMul's rows: its consumers read blocks of rows per channel."""
    info = walk.info[tensor]
    for read in _flatten_reads(walk.index, i, tensor):
        if read[0] == "shape":
            walk.place(read[1], info.layout)
            continue
        reader, position, _, repeat, via = read
        walk.consume(reader, position, tensor, repeat, via, info)
    walk.region.append((i, info.layout))
    walk.vias.append((walk.index.nodes[i].output[0], info.layout))
    for tensor in _quantised_on_the_way(walk.index, walk.index.nodes[i].output[0])[1]:
        walk.vias.append((tensor, info.layout))


def _quantised_on_the_way(index: GraphIndex, tensor: str) -> tuple[list[tuple[int, int, str]], list[str]]:
    """The readers of `tensor`, seen through QuantizeLinear/DequantizeLinear nodes with one scale for the
    whole tensor (a QDQ model's activations): (reader, position, tensor it reads) each, and the tensors
    in between."""
    reads, between = [], []
    for reader, position in index.users(tensor):
        n = index.nodes[reader]
        per_tensor = all(index.constant_shape(x) is not None and int(np.prod(index.constant_shape(x))) == 1
                         for x in n.input[1:] if x)
        out = n.output[0]
        if (n.op_type in ("QuantizeLinear", "DequantizeLinear") and position == 0 and per_tensor and len(n.input) > 1
                and out not in index.graph_outputs and out not in index.subgraph_names):
            more, inner = _quantised_on_the_way(index, out)
            reads += more
            between += [out, *inner]
        else:
            reads.append((reader, position, tensor))
    return reads, between


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
    for reader, position, via in _quantised_on_the_way(index, out)[0]:
        node = index.nodes[reader]
        spec = linear_spec(node)
        if spec is None or spec.channels_first:
            raise NotPrunable(f"{label}'s output reaches {index.node_name(reader)} ({node.op_type}), not a Gemm/MatMul",
                              "layout", index.node_name(reader), out)
        reads.append((reader, position, tensor, repeat, via))
    if not reads:
        raise NotPrunable(f"nothing reads {label}'s output", "no-consumer", label, out)
    return reads


def _private_target(index: GraphIndex, i: int, k: int) -> PrivateTarget | None:
    """Entry `k` of Reshape `i`'s target, when that target is a Concat (axis 0) and the entry sits in one
    of its constant inputs: what the rewrite needs to give the Reshape a copy with the entry changed."""
    p = index.producer.get(index.nodes[i].input[1])
    if p is None or index.nodes[p].op_type != "Concat" or index.attr(p, "axis", 0) not in (0, -1):
        return None
    at = 0
    for j, piece in enumerate(index.nodes[p].input):
        if index.is_constant(piece):
            values = tuple(int(v) for v in index.constant_value(piece).reshape(-1))
            if at <= k < at + len(values):
                return PrivateTarget(i, p, j, k - at, values)
            at += len(values)
            continue
        shape = index.shape(piece)
        if shape is None or len(shape) != 1 or not isinstance(shape[0], int) or at <= k < at + shape[0]:
            return None
        at += shape[0]
    return None

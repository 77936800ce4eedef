"""Finding neuron groups: propagate feature layouts through the graph, tie spaces by union-find.

Every linear node with a constant weight (Gemm, MatMul, Conv, ConvTranspose; depthwise Convs
are pass-through) whose checks pass produces a *space* of neurons, its output features.
A grouped Conv reads and writes channels in blocks that must keep equal counts: its
groups get `balanced` constraints, or a reason when its blocks do not map onto one group.
Walking the nodes in graph order, each tensor that carries features gets a *layout*: which
pieces of which spaces its features are, in order. Pass-through ops keep the layout; Concat
on the feature axis joins layouts, Split and Slice cut them; an elementwise op of two such
tensors (a residual Add, a gating Mul) ties the spaces piece by piece in an offset union-find;
a linear node reading a layout is a consumer. Anything else - a graph output, a subgraph, an
op that mixes features, a tensor from outside - *blocks* the spaces in its layout, with the
reason. Each union-find set is one group, prunable unless a member is blocked.

This module is the walk's loop and its dispatch: head tensors go to the head walk (heads.py),
linear nodes consume and produce (linear.py), structural ops to their registered handler
(structural.py, attention.py), pass-through ops to theirs (ops/passthrough.py); the walk's state
is state.Walk, and build.py turns the finished walk into groups.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import onnx

from ..graph import GraphIndex
from ..ops import MIXING_REASONS, Features, NotPrunable, Skip, domain_of, handler_for, linear_spec
from ..ops.elementwise import JOINS
from ..ops.registry import STRUCTURAL
from .build import build_groups
from .heads import visit_heads
from .layout import Piece, aligned, width
from .linear import is_depthwise, producer_slices
from .model import NeuronGroup
from .state import TensorInfo, Walk


def find_groups(model: onnx.ModelProto, index: GraphIndex | None = None) -> list[NeuronGroup]:
    """Every neuron group of the model (one per producer, or one per coupled set), prunable or with a reason."""
    walk = Walk(index or GraphIndex(model))
    for i in range(len(walk.index.nodes)):
        _visit(walk, i)
    for layout, skip in walk.runtime_targets.values():  # sized by a head count, but not a head tensor
        walk.block(layout, skip)
    return build_groups(walk)


def _visit(walk: Walk, i: int) -> None:
    index = walk.index
    node = index.nodes[i]
    inputs = [(pos, name) for pos, name in enumerate(node.input) if name in walk.info]
    heads = [(pos, name) for pos, name in enumerate(node.input) if name in walk.heads]
    if heads:
        _visit_heads(walk, i, heads, inputs)
        return
    if linear_spec(node) is not None and not (node.op_type == "Conv" and is_depthwise(index, i)):
        for pos, name in inputs:
            try:
                walk.consume(i, pos, name)
            except NotPrunable as e:
                walk.block(walk.info[name].layout, e.skip)
        _produce(walk, i)
        return
    handler = STRUCTURAL.handler(node)
    if not inputs and not getattr(handler, "produces", False):
        return
    try:
        if handler is not None and handler(walk, i, inputs) or not inputs:
            return
        if handler_for(node) is None:
            raise _unknown(index, i, inputs[0][1])
        _pass_through(walk, i, inputs)
    except NotPrunable as e:
        for _, name in inputs:
            walk.block(walk.info[name].layout, e.skip)


def _visit_heads(walk: Walk, i: int, heads: list, inputs: list) -> None:
    """A node reading head tensors: the head walk's handler, or every space it reads is blocked."""
    index, node = walk.index, walk.index.nodes[i]
    try:
        visit_heads(walk, i, heads)
    except (NotPrunable, ValueError, KeyError, IndexError, StopIteration, TypeError) as e:
        if not isinstance(e, NotPrunable) and os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        skip = e.skip if isinstance(e, NotPrunable) else Skip(
            "attention", f"{index.node_name(i)} ({node.op_type}): onnxprune could not follow the heads "
            f"through it ({type(e).__name__}: {e})", index.node_name(i))
        for _, name in heads:
            walk.block(walk.heads[name].layout, skip)
        for _, name in inputs:
            walk.block(walk.info[name].layout, skip)


def _unknown(index: GraphIndex, i: int, tensor: str) -> NotPrunable:
    """Why features cannot go through an op that has no handler."""
    node, label = index.nodes[i], index.node_name(i)
    op = node.op_type if domain_of(node) == "" else None
    if op is None:
        return NotPrunable(f"tensor {tensor!r} reaches {label} ({node.domain}.{node.op_type}), "
                           "an op onnxprune does not know", "unknown-op", label, tensor)
    if op in MIXING_REASONS:
        return NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which {MIXING_REASONS[op]}",
                           "mixing-op", label, tensor)
    return NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), "
                       "which is not known to act on each feature on its own", "unknown-op", label, tensor)


def _produce(walk: Walk, i: int) -> None:
    """A linear node's output features: a space of its own (or a failed producer, with the reason)."""
    shape = SimpleNamespace(size=None, features=None, blocks=1)
    try:
        slices = producer_slices(walk.index, i, shape)
    except NotPrunable as e:
        walk.failed[i] = (e.skip, shape.size)
        return
    walk.uf.add(i, shape.size)
    if shape.blocks > 1:
        walk.blocks_of[i] = shape.blocks
    walk.features_of[i] = shape.features
    layout = (Piece(i, 0, shape.size),)
    for s in slices:
        walk.place(s, layout)
    walk.set_features(walk.index.nodes[i].output[0], TensorInfo(layout, shape.features.axis, shape.features.rank))


def _pass_through(walk: Walk, i: int, inputs: list) -> None:
    """An op acting on each feature on its own: its registered handler slices its constants; an elementwise
    op of two groups' tensors (a residual Add, a gating Mul) ties their neurons feature by feature."""
    index, node = walk.index, walk.index.nodes[i]
    label = index.node_name(i)
    base = walk.info[inputs[0][1]]
    for _, name in inputs[1:]:
        other = walk.info[name]
        if node.op_type not in JOINS or domain_of(node) != "":
            raise NotPrunable(f"{label} ({node.op_type}) reads the features at more than one input", "layout",
                              label, name)
        if other.axis != base.axis or width(other.layout) != width(base.layout):
            raise NotPrunable(f"{label} ({node.op_type}) combines {inputs[0][1]!r} and {name!r}, whose features "
                              "do not line up", "layout", label, name)
        for a, b in aligned(base.layout, other.layout):
            if (a.space is None) != (b.space is None):
                raise NotPrunable(f"{label} ({node.op_type}) combines neurons with features from outside every "
                                  "group", "outside", label, name)
            if a.space is not None:
                why = walk.uf.union(a.space, a.lo, b.space, b.lo, a.width)
                if why:
                    raise NotPrunable(f"{label} ({node.op_type}) {why}", "coupling", label, name)
    features = base.features()
    if base.rank is None:
        shape = index.shape(inputs[0][1])
        features = Features(features.n, features.axis, len(shape) if shape is not None else None)
    slices = handler_for(node)(index, i, {name for _, name in inputs}, features)
    for s in slices:
        walk.place(s, base.layout)
    walk.region.append((i, base.layout))
    for out in index.used_outputs(i)[:1]:
        walk.set_features(out, TensorInfo(base.layout, base.axis, base.rank))

"""Pass-through ops: which ops act on each feature on its own, and how to slice their constants.

A handler is registered by (domain, op_type) (ops/registry.py). It is called for a node of a group's
pass-through region with the group's feature layout, and returns what to cut along the
feature axis (constant slices, attribute counts), or raises NotPrunable with the reason.
"""

from __future__ import annotations

from typing import Callable

from ..graph import GraphIndex
from .base import ConstSlice, CountAttribute, Features, NotPrunable, constant_slice
from .elementwise import FEATURE_OPS
from .registry import OpRegistry


Handler = Callable[[GraphIndex, int, set, Features], list]
PASS_THROUGH = OpRegistry("pass-through")
register = PASS_THROUGH.register  # register(*op_types, domain=""): a decorator


def handler_for(node) -> Handler | None:
    return PASS_THROUGH.handler(node)


def per_feature_slice(index: GraphIndex, node: int, position: int, features: Features) -> list[ConstSlice]:
    """How a constant combined elementwise with the group's features is sliced.

    Aligned from the right with the feature tensor, its feature axis must be N (one value
    per feature: slice it) or 1 (shared: leave it), and every other axis 1, so that
    broadcasting mixes nothing across features or samples.
    """
    name = index.nodes[node].input[position]
    view = index.view(node, position, dequantized=True)
    label = f"constant {name!r} of {index.node_name(node)}"
    if view is None:
        raise NotPrunable(f"{label} is not a constant with a readable shape")
    shape = view.shape
    at = len(shape) + features.axis  # the constant's axis that lines up with the features
    if at < 0:
        if any(d != 1 for d in shape):
            raise NotPrunable(f"{label} has shape {list(shape)}, which does not line up with the features")
        return []
    if shape[at] == 1:
        if any(d != 1 for d in shape):
            raise NotPrunable(f"{label} has shape {list(shape)}, which broadcasts across samples or positions")
        return []
    if shape[at] != features.n or any(d != 1 for i, d in enumerate(shape) if i != at):
        raise NotPrunable(f"{label} has shape {list(shape)}, not per-feature for {features.n} features")
    return [constant_slice(view, at)]


def runtime_scalar(index: GraphIndex, name: str) -> bool:
    """Whether `name` is computed at run time with one value for all features and samples (its shape is known
    to be all ones): the product of a dynamic quantisation's scales. Anything that computed it from a
    group's features would be a reduction across them, which blocks that group where it is reached."""
    shape = index.shape(name)
    return shape is not None and all(d == 1 for d in shape) and name not in index.graph_inputs


def scaled_constant(index: GraphIndex, node: int, position: int, features: Features) -> list | None:
    """The slices of a per-feature constant multiplied at run time by one value (a dynamic quantisation's
    per-channel weight scales times its input's scale), read only at input `position` of `node`; None when
    that input is not such a product."""
    name = index.nodes[node].input[position]
    p = index.producer.get(name)
    if p is None or index.nodes[p].op_type != "Mul" or index.uses(name) != 1 or len(index.nodes[p].input) != 2:
        return None
    inputs = index.nodes[p].input
    for k in (0, 1):
        if index.is_constant(inputs[k]) and runtime_scalar(index, inputs[1 - k]):
            try:
                out = per_feature_slice(index, p, k, features)
            except NotPrunable:
                return None
            return [ConstSlice(s.node, s.input, s.axis, (*s.chain, name), companions=s.companions) for s in out]
    return None


def _unused_extra_outputs(index: GraphIndex, node: int) -> None:
    n = index.nodes[node]
    extra = [o for o in n.output[1:] if o and index.uses(o)]
    if extra:
        raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) output {extra[0]!r} is used")


ELEMENTWISE = FEATURE_OPS  # the elementwise ops a region follows (ops/elementwise.py)


@register(*ELEMENTWISE)
def elementwise(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    n = index.nodes[node]
    _unused_extra_outputs(index, node)
    if n.op_type == "Cast" and index.attr(node, "to") in (8,):  # to string
        raise NotPrunable(f"{index.node_name(node)} casts to string")
    slices = []
    for position, name in enumerate(n.input):
        if not name or name in region:
            continue
        view = index.view(node, position, dequantized=True)
        if view is None and runtime_scalar(index, name):
            continue  # one value for every feature (a dynamic quantisation's scale): it mixes nothing
        scaled = scaled_constant(index, node, position, features) if view is None else None
        if scaled is not None:
            slices += scaled
            continue
        if view is None:
            source = index.producer.get(name)
            why = ""
            if source is not None and index.nodes[source].op_type in MIXING_REASONS:
                # a residual stream that a LayerNorm (or a reshape) rewrites cannot be sliced through it
                op = index.nodes[source].op_type
                why = f"; it is the output of {index.node_name(source)} ({op}), which {MIXING_REASONS[op]}"
            raise NotPrunable(
                f"{index.node_name(node)} ({n.op_type}) combines the group with {name!r}, "
                f"which comes from outside it (a residual or merge){why}", "outside", index.node_name(node), name)
        if n.op_type in ("Dropout", "Clip"):
            if view.shape not in ((), (1,)):
                raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) input {name!r} is not a scalar")
            continue
        slices += per_feature_slice(index, node, position, features)
    return slices


@register("BatchNormalization")
def batch_normalization(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    n = index.nodes[node]
    if n.input[0] not in region or any(i in region for i in n.input[1:]):
        raise NotPrunable(f"{index.node_name(node)} reads the group as a parameter")
    extra = [o for o in n.output[1:] if o and index.uses(o)]
    if extra:
        raise NotPrunable(f"{index.node_name(node)} is in training mode (output {extra[0]!r} is used)")
    shape = index.shape(n.input[0])
    rank = features.rank or (len(shape) if shape is not None else None)
    if rank is None or rank + features.axis != 1:
        # BatchNormalization normalises axis 1: that must be the feature axis.
        raise NotPrunable(f"{index.node_name(node)} normalises axis 1, which is not known to be the feature axis")
    slices = []
    for position in range(1, 5):
        view = index.view(node, position)
        if view is None or view.shape != (features.n,):
            raise NotPrunable(f"{index.node_name(node)} parameter {n.input[position]!r} is not a constant "
                              f"of {features.n} values")
        slices.append(constant_slice(view, 0))
    return slices


def _channel_first(index: GraphIndex, node: int, features: Features) -> None:
    n = index.nodes[node]
    if not features.channel_first:
        raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) works on [N, C, ...] tensors, "
                          "but the group's features are not on axis 1")


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pooling(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    """Pooling acts on each channel's spatial positions on its own."""
    _channel_first(index, node, features)
    _unused_extra_outputs(index, node)  # MaxPool's indices
    return []


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")
def reduce_positions(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    """A reduction over positions only (keepdims=1, neither the batch nor the feature axis): each feature
    on its own, as a global pooling exported as ReduceMean over the spatial axes."""
    n = index.nodes[node]
    label = f"{index.node_name(node)} ({n.op_type})"
    if len(n.input) > 1 and n.input[1]:
        view = index.view(node, 1)
        if view is None:
            raise NotPrunable(f"{label} reduces axes computed at run time", "mixing-op", index.node_name(node))
        axes = index.constant_value(view.name).reshape(-1).tolist()
    else:
        axes = index.attr(node, "axes")
    if not axes:
        raise NotPrunable(f"{label} reduces across features (all axes)", "mixing-op", index.node_name(node))
    if index.attr(node, "keepdims", 1) != 1:
        raise NotPrunable(f"{label} drops the axes it reduces, which moves the feature axis", "layout",
                          index.node_name(node))
    rank = features.rank
    if rank is None and any(a >= 0 for a in axes):
        raise NotPrunable(f"{label} reduces axes of a tensor of unknown rank", "layout", index.node_name(node))
    negative = {a - rank if a >= 0 else a for a in axes}
    if features.axis in negative:
        raise NotPrunable(f"{label} reduces across features", "mixing-op", index.node_name(node))
    if rank is None or -rank in negative:
        raise NotPrunable(f"{label} reduces across samples (the batch axis)", "mixing-op", index.node_name(node))
    return []


@register("Pad")
def pad(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    """Padding of the spatial axes only (constant pads with zeros on the batch and channel axes)."""
    _channel_first(index, node, features)
    n = index.nodes[node]
    if len(n.input) > 1 and n.input[1]:
        view = index.view(node, 1)
        if view is None:
            raise NotPrunable(f"{index.node_name(node)} has pads computed at run time")
        pads = index.constant_value(view.name).reshape(-1).tolist()
    else:
        pads = list(index.attr(node, "pads", []))
    if len(n.input) > 3 and n.input[3]:
        raise NotPrunable(f"{index.node_name(node)} pads selected axes only (axes input)")
    rank = len(pads) // 2
    if rank < 2 or any(pads[i] or pads[rank + i] for i in (0, 1)):
        raise NotPrunable(f"{index.node_name(node)} pads the batch or channel axis")
    if len(n.input) > 2 and n.input[2] and index.view(node, 2) is None:
        raise NotPrunable(f"{index.node_name(node)} has a padding value computed at run time")
    return []


@register("Resize", "Upsample")
def resize(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    """Resizing of the spatial axes only: a constant scale of 1 on batch and channels, no sizes."""
    _channel_first(index, node, features)
    n = index.nodes[node]
    if n.op_type == "Resize" and len(n.input) > 3 and n.input[3]:
        raise NotPrunable(f"{index.node_name(node)} resizes to explicit sizes, which name the channel count")
    position = 2 if n.op_type == "Resize" else 1
    if len(n.input) <= position or not n.input[position]:
        scales = index.attr(node, "scales")
    else:
        view = index.view(node, position)
        scales = None if view is None else index.constant_value(view.name).reshape(-1).tolist()
    if scales is None or len(scales) < 2 or scales[0] != 1 or scales[1] != 1:
        raise NotPrunable(f"{index.node_name(node)} does not keep the batch and channel axes (scales {scales})")
    return []


@register("Conv")
def depthwise_conv(index: GraphIndex, node: int, region: set, features: Features) -> list:
    """A depthwise Conv (group = channels, one filter per channel) acts on each channel on its own."""
    n = index.nodes[node]
    _channel_first(index, node, features)
    view = index.view(node, 1, dequantized=True)
    group = index.attr(node, "group", 1)
    if group not in (1, features.n):  # discovery sends only depthwise Convs here; grouped ones are linear
        raise NotPrunable(f"{index.node_name(node)} is a grouped Conv (group={group}), not a depthwise one",
                          "grouped-conv", index.node_name(node))
    if view is None or group != features.n or view.shape[0] != features.n or view.shape[1] != 1:
        raise NotPrunable(f"{index.node_name(node)} is not a depthwise Conv over the group's {features.n} channels")
    if n.input[0] not in region or any(i in region for i in n.input[1:]):
        raise NotPrunable(f"{index.node_name(node)} reads the group as a parameter")
    if index.view_shared(view):
        raise NotPrunable(f"{index.node_name(node)}: weight {view.name!r} is shared with another node")
    slices = [constant_slice(view, 0), CountAttribute(node, "group")]
    if len(n.input) > 2 and n.input[2]:
        bias = index.view(node, 2, dequantized=True)
        if bias is None or bias.shape != (features.n,):
            raise NotPrunable(f"{index.node_name(node)} bias is not a constant of {features.n} values")
        slices.append(constant_slice(bias, 0))
    return slices


@register("Gelu", "QuickGelu", domain="com.microsoft")
def microsoft_unary(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    """onnxruntime's fused activations that act on each element on its own."""
    return elementwise(index, node, region, features)


@register("FastGelu", "BiasGelu", domain="com.microsoft")
def microsoft_bias_activation(index: GraphIndex, node: int, region: set, features: Features) -> list[ConstSlice]:
    """gelu(x + bias) with a per-feature bias (FastGelu's optional input 1, BiasGelu's input 1)."""
    n = index.nodes[node]
    if n.input[0] not in region:
        raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) reads the group as its bias")
    return elementwise(index, node, region, features)


# Ops we know mix features or move them; named in the reason instead of a generic message.
MIXING_REASONS = {
    "Reshape": "reshapes the feature axis",
    "Flatten": "reshapes the feature axis",
    "Transpose": "moves the feature axis",
    "Concat": "concatenates it with other tensors along another axis",
    "Split": "splits the feature axis",
    "Slice": "slices it",
    "Gather": "gathers from it",
    "Softmax": "normalises across features",
    "LogSoftmax": "normalises across features",
    "LayerNormalization": "normalises across features",
    "InstanceNormalization": "normalises with per-channel parameters onnxprune does not slice",
    "GroupNormalization": "normalises across groups of channels",
    "ReduceMean": "reduces across features",
    "ReduceSum": "reduces across features",
    "ReduceMax": "reduces across features",
    "If": "passes it into a subgraph",
    "Loop": "passes it into a subgraph",
    "Scan": "passes it into a subgraph",
}

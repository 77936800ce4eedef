"""Per-op knowledge: which ops act on each feature on its own, and how to slice their constants.

A handler is registered by ``op_type``. It is called for a node of a group's
pass-through region and returns the constant inputs to slice along the feature
axis, or raises NotPrunable with the reason it cannot be sliced safely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .graph import GraphIndex


class NotPrunable(Exception):
    """A group cannot be pruned; the message says why."""


@dataclass(frozen=True)
class ConstSlice:
    """The stored constant read at input ``input`` of node ``node``: keep-mask it along ``axis``.

    ``chain`` names the tensors between it and its user (Identity/Transpose), whose shapes
    change too; ``consumer`` is set on a consumer's weight-row slice (the node it belongs to).
    """

    node: int
    input: int
    axis: int
    chain: tuple = ()
    consumer: int | None = None


Handler = Callable[[GraphIndex, int, set, int], list]
PASS_THROUGH: dict[tuple[str, str], Handler] = {}


def domain_of(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def handler_for(node) -> Handler | None:
    return PASS_THROUGH.get((domain_of(node), node.op_type))


def register(*op_types: str, domain: str = ""):
    """Register a handler for ops of a domain; registering an op twice is an error."""

    def wrap(fn: Handler) -> Handler:
        for op in op_types:
            if (domain, op) in PASS_THROUGH:
                raise ValueError(f"a pass-through handler for {domain or 'ai.onnx'}.{op} is already registered")
            PASS_THROUGH[(domain, op)] = fn
        return fn

    return wrap


def constant_slice(view, axis: int) -> ConstSlice:
    return ConstSlice(view.node, view.input, view.axes[axis], view.chain)


def per_feature_slice(index: GraphIndex, node: int, position: int, n_features: int) -> list[ConstSlice]:
    """How a constant combined elementwise with [..., N] features is sliced.

    Its last axis must be N (one value per feature: slice it) or 1 (shared by
    all features: leave it); every other axis must be 1, so that broadcasting
    keeps the features on the last axis and mixes nothing.
    """
    name = index.nodes[node].input[position]
    view = index.view(node, position)
    label = f"constant {name!r} of {index.node_name(node)}"
    if view is None:
        raise NotPrunable(f"{label} is not a constant with a readable shape")
    shape = view.shape
    if len(shape) == 0 or shape[-1] == 1:
        if any(d != 1 for d in shape):
            raise NotPrunable(f"{label} has shape {list(shape)}, which broadcasts across samples")
        return []
    if shape[-1] != n_features or any(d != 1 for d in shape[:-1]):
        raise NotPrunable(f"{label} has shape {list(shape)}, not per-feature for {n_features} features")
    return [constant_slice(view, len(shape) - 1)]


ELEMENTWISE = (
    # unary activations and maths
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Gelu", "Mish", "ThresholdedRelu", "Erf", "Identity", "Abs",
    "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "Cast", "Dropout", "Clip",
    # binary, broadcasting against per-feature constants or other tensors of the region
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu",
)


@register(*ELEMENTWISE)
def elementwise(index: GraphIndex, node: int, region: set, n_features: int) -> list[ConstSlice]:
    n = index.nodes[node]
    extra = [o for o in n.output[1:] if o and index.uses(o)]
    if extra:
        raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) output {extra[0]!r} is used")
    if n.op_type == "Cast" and index.attr(node, "to") in (8,):  # to string
        raise NotPrunable(f"{index.node_name(node)} casts to string")
    slices = []
    for position, name in enumerate(n.input):
        if not name or name in region:
            continue
        view = index.view(node, position)
        if view is None:
            raise NotPrunable(
                f"{index.node_name(node)} ({n.op_type}) combines the group with {name!r}, "
                "which comes from outside it (a residual or merge)")
        if n.op_type in ("Dropout", "Clip"):
            if view.shape not in ((), (1,)):
                raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) input {name!r} is not a scalar")
            continue
        slices += per_feature_slice(index, node, position, n_features)
    return slices


@register("BatchNormalization")
def batch_normalization(index: GraphIndex, node: int, region: set, n_features: int) -> list[ConstSlice]:
    n = index.nodes[node]
    if n.input[0] not in region or any(i in region for i in n.input[1:]):
        raise NotPrunable(f"{index.node_name(node)} reads the group as a parameter")
    extra = [o for o in n.output[1:] if o and index.uses(o)]
    if extra:
        raise NotPrunable(f"{index.node_name(node)} is in training mode (output {extra[0]!r} is used)")
    shape = index.shape(n.input[0])
    if shape is None or len(shape) != 2:
        # Only for rank 2 is BatchNormalization's channel axis (1) the feature axis (last).
        raise NotPrunable(f"{index.node_name(node)} normalises axis 1 of a tensor whose rank is not known to be 2")
    slices = []
    for position in range(1, 5):
        view = index.view(node, position)
        if view is None or view.shape != (n_features,):
            raise NotPrunable(f"{index.node_name(node)} parameter {n.input[position]!r} is not a constant "
                              f"of {n_features} values")
        slices.append(constant_slice(view, 0))
    return slices


@register("Gelu", "QuickGelu", domain="com.microsoft")
def microsoft_unary(index: GraphIndex, node: int, region: set, n_features: int) -> list[ConstSlice]:
    """onnxruntime's fused activations that act on each element on its own."""
    return elementwise(index, node, region, n_features)


@register("FastGelu", "BiasGelu", domain="com.microsoft")
def microsoft_bias_activation(index: GraphIndex, node: int, region: set, n_features: int) -> list[ConstSlice]:
    """gelu(x + bias) with a per-feature bias (FastGelu's optional input 1, BiasGelu's input 1)."""
    n = index.nodes[node]
    if n.input[0] not in region:
        raise NotPrunable(f"{index.node_name(node)} ({n.op_type}) reads the group as its bias")
    return elementwise(index, node, region, n_features)


# Ops we know mix features or move them; named in the reason instead of a generic message.
MIXING_REASONS = {
    "Reshape": "reshapes the feature axis",
    "Flatten": "reshapes the feature axis",
    "Transpose": "moves the feature axis",
    "Concat": "concatenates it with other tensors",
    "Split": "splits the feature axis",
    "Slice": "slices it",
    "Gather": "gathers from it",
    "Softmax": "normalises across features",
    "LogSoftmax": "normalises across features",
    "LayerNormalization": "normalises across features",
    "ReduceMean": "reduces across features",
    "ReduceSum": "reduces across features",
    "ReduceMax": "reduces across features",
    "If": "passes it into a subgraph",
    "Loop": "passes it into a subgraph",
    "Scan": "passes it into a subgraph",
}

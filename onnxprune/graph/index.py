"""A read-only index over an ONNX graph: who produces and who reads each tensor, constants, shapes."""

from __future__ import annotations

from collections import defaultdict

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .dequant import DEQUANTIZERS, dequantize, real_dtype, resolve


@dataclass(frozen=True)
class ConstantView:
    """A constant as a node input sees it, possibly through Identity and Transpose nodes.

    `node`/`input` is where the stored constant `name` is read (the first op of the chain);
    effective axis i is stored axis `axes[i]`; `chain` lists the tensors in between. A quantised
    constant seen through its dequantisation (``view(..., dequantized=True)``) lists the scales and
    zero points that make its stored integers real in `dequant` (graph.dequant.Companion).
    """

    node: int
    input: int
    name: str
    axes: tuple
    shape: tuple
    chain: tuple = ()
    dequant: tuple = ()

    def cut_with(self, stored_axis: int) -> tuple:
        """(node, input, axis) of every scale or zero point that runs along `stored_axis`: cut with it."""
        return tuple((c.node, c.input, c.along(stored_axis)) for c in self.dequant
                     if c.along(stored_axis) is not None)

    def effective(self, stored: np.ndarray) -> np.ndarray:
        return stored if self.axes == tuple(range(len(self.axes))) else np.transpose(stored, self.axes)

    def to_stored(self, effective: np.ndarray) -> np.ndarray:
        return effective if self.axes == tuple(range(len(self.axes))) else np.transpose(effective, np.argsort(self.axes))


class GraphIndex:
    """Lookups the group finder and the rewriter need, built once per model."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        # From IR 4 on, an initializer listed as a graph input can be overridden at run
        # time, so it is not a constant; before IR 4 every initializer had to be listed.
        self.overridable = set()
        if model.ir_version >= 4:
            self.overridable = {v.name for v in graph.input if v.name in self.initializers}
        self.graph_inputs = {v.name for v in graph.input}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.graph_outputs = {v.name for v in graph.output}
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.subgraph_names: set[str] = set()
        self.constant_nodes: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for j, name in enumerate(node.input):
                if name:
                    self.readers[name].append((i, j))
            for name in node.output:
                if name:
                    self.producer[name] = i
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constant_nodes[node.output[0]] = i
            for attr in node.attribute:
                for sub in subgraphs(attr):
                    self.subgraph_names |= names_read(sub)
        self._types = _inferred_types(model)

    def name_count(self, name: str) -> int:
        """How many nodes carry this name (ONNX does not require names to be unique)."""
        if not hasattr(self, "_name_counts"):
            self._name_counts = defaultdict(int)
            for node in self.nodes:
                self._name_counts[node.name] += 1
        return self._name_counts.get(name, 0)

    def node_name(self, i: int) -> str:
        node = self.nodes[i]
        return node.name or f"{node.op_type}#{i}"

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return name not in self.overridable
        return name in self.constant_nodes

    def constant_shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        if name in self.constant_nodes:
            value = self.constant_value(name)
            return None if value is None else value.shape
        return None

    def constant_value(self, name: str) -> np.ndarray | None:
        if name in self.initializers and name not in self.overridable:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constant_nodes:
            return constant_node_value(self.nodes[self.constant_nodes[name]])
        return None

    def constant_dtype(self, name: str) -> np.dtype:
        """A constant's numpy dtype, read from its TensorProto without decoding the data."""
        if name in self.initializers:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.initializers[name].data_type))
        node = self.nodes[self.constant_nodes[name]]
        tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        if tensor is not None:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        return constant_node_value(node).dtype

    def view(self, node: int, position: int, dequantized: bool = False) -> ConstantView | None:
        """The constant feeding input `position` of `node`, seen through Identity/Transpose; None if none.
        With `dequantized`, also through the forms that make stored integers real (graph.dequant), below
        any Transpose: the view is of the integers, with their scales and zero points."""
        name = self.nodes[node].input[position]
        reader = (node, position)
        chain, perms, steps = [], [], []
        while not self.is_constant(name):
            p = self.producer.get(name)
            if p is None or self.nodes[p].domain not in ("", "ai.onnx"):
                return None
            op = self.nodes[p].op_type
            step = DEQUANTIZERS[op](self, p) if dequantized and op in DEQUANTIZERS else None
            if step is None and (op not in ("Identity", "Transpose") or (steps and op == "Transpose")):
                return None
            chain.append(name)
            if step is not None:
                steps.append((p, step))
            if op == "Transpose":
                perms.append(self.attr(p, "perm"))
            source = step.source if step is not None else 0
            reader, name = (p, source), self.nodes[p].input[source]
        shape = self.constant_shape(name)
        if shape is None:
            return None
        companions = resolve(self, steps, shape) if steps else ()
        if companions is None:
            return None
        axes = list(range(len(shape)))
        for perm in perms:  # from the reading node back towards the stored constant
            perm = list(perm) if perm is not None else list(reversed(range(len(shape))))
            axes = [perm[a] for a in axes]
        return ConstantView(reader[0], reader[1], name, tuple(axes), tuple(shape[a] for a in axes), tuple(chain),
                            companions)

    def view_value(self, view: ConstantView) -> np.ndarray:
        """A view's constant as the reading node sees it: dequantised (float64) when it is quantised, in
        the effective layout."""
        stored = dequantize(self, view) if view.dequant else self.constant_value(view.name)
        return view.effective(stored)

    def view_dtype(self, view: ConstantView) -> np.dtype:
        """The dtype of the values the reading node sees (a quantised constant's scale's)."""
        return real_dtype(self, view) if view.dequant else self.constant_dtype(view.name)

    def view_shared(self, view: ConstantView) -> bool:
        """Whether anything but this one path reads the constant or a tensor of its chain."""
        return self.uses(view.name) > 1 or any(self.uses(t) > 1 for t in view.chain)

    def uses(self, name: str) -> int:
        """How many places read a tensor: node inputs, graph outputs and subgraphs."""
        return (len(self.readers.get(name, ()))
                + (name in self.graph_outputs)
                + (name in self.subgraph_names))

    def users(self, name: str) -> list[tuple[int, int]]:
        return self.readers.get(name, [])

    def used_outputs(self, i: int) -> list[str]:
        return [o for o in self.nodes[i].output if o and self.uses(o)]

    def shape(self, name: str):
        """Inferred shape as a tuple of ints / symbolic names / None, or None if unknown."""
        entry = self._types.get(name)
        return None if entry is None else entry[1]

    def elem_type(self, name: str) -> int | None:
        entry = self._types.get(name)
        return None if entry is None else entry[0]

    def attr(self, i: int, name: str, default=None):
        for a in self.nodes[i].attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None  # sparse_value and strings are not weights we slice


def subgraphs(attr: onnx.AttributeProto):
    if attr.type == onnx.AttributeProto.GRAPH:
        yield attr.g
    elif attr.type == onnx.AttributeProto.GRAPHS:
        yield from attr.graphs


def names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph reads (node inputs, its outputs, and those of its subgraphs, including the
    names they capture from outer scopes)."""
    names = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in subgraphs(attr):
                names |= names_read(sub)
    names.update(o.name for o in graph.output)
    return names


def _inferred_types(model: onnx.ModelProto) -> dict:
    """name -> (elem_type, shape) from shape inference (best effort, never raises)."""
    from ..modelio import infer_shapes, shape_only

    try:
        graph = infer_shapes(shape_only(model), data_prop=True).graph
    except Exception:
        graph = model.graph
    out = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        tt = value.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            )
        out[value.name] = (tt.elem_type, shape)
    return out

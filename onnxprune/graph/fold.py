"""Values a static shape fixes: constant folding and reading shapes and Reshape targets.

Shared by the group walk (head counts in Reshape targets, Shape reads) and the packed-projection
split (sizes computed from a shape); they only read the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Entry:
    """One entry of a Reshape target: its value at export (None: not known) and how to rewrite it
    (node, input, position, the input's whole 1-D value), or None when it cannot be rewritten."""

    value: int | None
    place: tuple | None
    dim: tuple | None = None  # (tensor, axis): the entry is that dimension of that tensor, read at run time


def static_value(index, name: str, depth: int = 8) -> int | None:
    """The value of a 1-element integer tensor that a static shape fixes, or None: a constant, a
    dimension of a known shape (``Gather(Shape(t), i)``), and Unsqueeze/Squeeze/Cast/Identity and
    integer arithmetic of such values (TorchScript computes ``head_dim = E // heads`` this way)."""
    if depth == 0 or not name:
        return None
    if index.is_constant(name):
        value = index.constant_value(name)
        return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
    p = index.producer.get(name)
    if p is None:
        return None
    node = index.nodes[p]
    op = node.op_type
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape") and node.input:
        return static_value(index, node.input[0], depth - 1)
    if op in ("Div", "Mul", "Add", "Sub") and len(node.input) == 2:
        a, b = (static_value(index, x, depth - 1) for x in node.input)
        if a is None or b is None or (op == "Div" and b == 0):
            return None
        return {"Div": lambda: int(a / b), "Mul": lambda: a * b, "Add": lambda: a + b, "Sub": lambda: a - b}[op]()
    dims = shape_dims(index, name)  # Gather(Shape(t), i): dimension i of t, when the inferred shape has it
    if dims is None or len(dims) != 1:
        return None
    tensor, axis = dims[0]
    value = index.shape(tensor)[axis]
    return value if isinstance(value, int) and value > 0 else None


def folded(index, name: str, limit: int = 40, stand_in: tuple[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The value of a tensor computed from constants only (a few nodes: shape arithmetic), evaluated with
    onnx's reference evaluator; None if it depends on an input or takes more than `limit` nodes. With
    `stand_in` (tensor, value), that tensor is fed the value instead: only its shape may be read (through
    Shape nodes), or the answer is None."""
    if index.is_constant(name):
        return index.constant_value(name)
    leaf = stand_in[0] if stand_in is not None else None
    nodes, todo, seen = [], [name], set()
    while todo:
        t = todo.pop()
        if t in seen or not t or index.is_constant(t) or t == leaf:
            continue
        seen.add(t)
        p = index.producer.get(t)
        if p is None or len(nodes) >= limit or index.nodes[p].domain not in ("", "ai.onnx"):
            return None
        if p not in nodes:
            nodes.append(p)
            todo += list(index.nodes[p].input)
    if any(leaf in index.nodes[p].input and index.nodes[p].op_type != "Shape" for p in nodes):
        return None  # it reads the stand-in's values, not just its shape
    try:
        import onnx
        from onnx.reference import ReferenceEvaluator

        inits = [onnx.numpy_helper.from_array(index.constant_value(t), t) for p in nodes for t in index.nodes[p].input
                 if t and index.is_constant(t)]
        inputs = [] if leaf is None else [onnx.helper.make_tensor_value_info(
            leaf, onnx.helper.np_dtype_to_tensor_dtype(stand_in[1].dtype), None)]
        graph = onnx.helper.make_graph([index.nodes[p] for p in sorted(nodes)], "fold", inputs,
                                       [onnx.helper.make_empty_tensor_value_info(name)], inits)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", index.opset)])
        return np.asarray(ReferenceEvaluator(model).run(None, {} if leaf is None else {leaf: stand_in[1]})[0])
    except Exception:  # anything unusual: not known
        return None


def shape_dims(index, name: str, depth: int = 6) -> list[tuple] | None:
    """Which dimensions of which tensor a computed 1-D shape value holds, in order: [(tensor, axis)],
    for ``Shape(t)`` (with start/end), Slices of it with constant bounds, a Gather of constant indices,
    Concats of such and Unsqueeze/Squeeze/Cast/Identity. None when it is anything else."""
    p = index.producer.get(name)
    if p is None or depth == 0:
        return None
    read = _DIMS.get(index.nodes[p].op_type)
    return None if read is None else read(index, p, depth)


_DIMS = {}  # op_type -> how the dimensions its output holds follow from its inputs


def _reads_dims(*op_types: str):
    def wrap(fn):
        _DIMS.update(dict.fromkeys(op_types, fn))
        return fn

    return wrap


@_reads_dims("Shape")
def _shape(index, p: int, depth: int):
    node = index.nodes[p]
    shape = index.shape(node.input[0])
    if shape is None:
        return None
    rank = len(shape)
    start, end = index.attr(p, "start", 0), index.attr(p, "end", rank)
    start, end = (v + rank if v < 0 else min(v, rank) for v in (start, end))
    return [(node.input[0], a) for a in range(start, end)]


@_reads_dims("Unsqueeze", "Squeeze", "Cast", "Identity")
def _same(index, p: int, depth: int):
    node = index.nodes[p]
    return shape_dims(index, node.input[0], depth - 1) if node.input else None


@_reads_dims("Concat")
def _joined(index, p: int, depth: int):
    parts = [shape_dims(index, x, depth - 1) for x in index.nodes[p].input]
    return None if any(x is None for x in parts) else [d for x in parts for d in x]


@_reads_dims("Gather")
def _gathered(index, p: int, depth: int):
    node = index.nodes[p]
    source = shape_dims(index, node.input[0], depth - 1) if node.input else None
    if source is None or index.attr(p, "axis", 0) != 0:
        return None
    view = index.view(p, 1)
    if view is None:
        return None
    picked = [int(v) for v in index.constant_value(view.name).reshape(-1)]
    return [source[k] for k in picked] if all(-len(source) <= k < len(source) for k in picked) else None


@_reads_dims("Slice")
def _sliced(index, p: int, depth: int):
    node = index.nodes[p]
    source = shape_dims(index, node.input[0], depth - 1) if node.input else None
    if source is None:
        return None
    bounds = [index.view(p, k) if len(node.input) > k and node.input[k] else None for k in (1, 2, 3, 4)]
    if bounds[0] is None or bounds[1] is None:
        return None
    values = [None if b is None else [int(v) for v in index.constant_value(b.name).reshape(-1)] for b in bounds]
    if (values[2] not in (None, [0], [-1])) or (values[3] not in (None, [1])):
        return None
    lo, hi = values[0][0], values[1][0]
    return source[lo:hi]


def target_entries(index, node: int, tail: int, also: tuple = ()) -> list[Entry] | None:
    """The entries of a Reshape's target (input 1): a constant, or a Concat (axis 0) of constants and
    computed pieces of one entry each. None if the target's length is not known. Only the last
    `tail` entries (and those at `also`) may need rewriting: when the Concat is shared, they get a
    constant target of the Reshape's own (see `_rebuilt_target`)."""
    view = index.view(node, 1) if len(index.nodes[node].input) > 1 else None
    if view is not None:
        values = [int(v) for v in index.constant_value(view.name).reshape(-1)]
        return [Entry(v, (node, 1, k, tuple(values), False)) for k, v in enumerate(values)]
    p = index.producer.get(index.nodes[node].input[1])
    if p is None or index.nodes[p].op_type != "Concat" or index.attr(p, "axis", 0) not in (0, -1):
        return None
    out = []
    for j, name in enumerate(index.nodes[p].input):
        piece = index.view(p, j)
        if piece is not None:
            values = [int(v) for v in index.constant_value(piece.name).reshape(-1)]
            out += [Entry(v, (p, j, k, tuple(values), False)) for k, v in enumerate(values)]
            continue
        shape = index.shape(name)
        dims = shape_dims(index, name)
        if dims is None and (shape is None or len(shape) != 1 or not isinstance(shape[0], int)):
            return None
        if dims is not None and len(dims) != 1 or dims is None and shape[0] != 1:
            out += [Entry(None, None, d) for d in dims] if dims is not None else [Entry(None, None)] * shape[0]
            continue
        value = static_value(index, name)
        out.append(Entry(value, (p, j, 0, (value,), False) if value is not None else None,
                         dims[0] if dims else None))
    if index.uses(index.nodes[node].input[1]) > 1:
        # the Concat also feeds other Reshapes (of other layers, maybe): it is not rewritten; the
        # entry is, with a constant target of its own, when the leading dimensions provably stay
        rebuilt = _rebuilt_target(index, node, set(range(len(out) - tail, len(out))) | set(also))
        out = [Entry(e.value, None, e.dim) for e in out]
        if rebuilt is not None and len(rebuilt) == len(out):
            for k in sorted(set(range(len(out) - tail, len(out))) | set(also)):
                out[k] = Entry(out[k].value, (node, 1, k, rebuilt, True), out[k].dim)
    return out


def _rebuilt_target(index, node: int, rewritten: set) -> tuple | None:
    """A constant target of a Reshape's own that gives what its shared, computed target gives, from the
    inferred output shape: a static size where known, 0 (copy, with allowzero off) where the input has
    the same symbolic size at the same axis, -1 for at most one other. The entries at `rewritten` must
    be static (they are replaced when pruning). None when that cannot be shown."""
    src, dst = index.shape(index.nodes[node].input[0]), index.shape(index.nodes[node].output[0])
    if src is None or dst is None:
        return None
    out = []
    for k, d in enumerate(dst):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif k in rewritten:
            return None
        elif d is not None and k < len(src) and src[k] == d:
            out.append(0)
        else:
            out.append(-1)
    return tuple(out) if out.count(-1) <= 1 else None


def shape_targets(index, name: str, depth: int = 6) -> list[int] | None:
    """The Reshapes whose target (input 1) a shape value feeds, through Slice, Gather, Concat,
    Unsqueeze, Squeeze, Cast and Identity; None if it feeds anything else."""
    if depth == 0 or name in index.graph_outputs or name in index.subgraph_names:
        return None
    out = []
    for reader, position in index.users(name):
        op = index.nodes[reader].op_type
        if op == "Reshape" and position == 1:
            out.append(reader)
        elif op == "Concat" or (op in ("Slice", "Gather", "Unsqueeze", "Squeeze", "Cast", "Identity")
                                and position == 0):
            more = shape_targets(index, index.nodes[reader].output[0], depth - 1)
            if more is None:
                return None
            out += more
        else:
            return None
    return out

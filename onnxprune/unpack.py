"""Packed Q/K/V projections, split into one projection per part before the head walk.

Many attention blocks compute Q, K and V with one projection of width 3M (timm's ``qkv``,
``nn.MultiheadAttention``'s ``in_proj``, GPT-2's ``c_attn``) and then select the three parts.
The head walk cannot tie a space to shifted copies of itself, so such heads were skipped. When
every reader of the packed output only selects parts, the projection is rewritten as three
(``x @ W[:, tM:(t+1)M] + b[tM:(t+1)M]``), each feeding the part's readers directly; the same
products, so outputs change by float rounding at most. Two selection forms are followed:

- on the feature axis: ``Split(P, axis=-1)`` into three equal parts, or a ``Slice`` of each third;
- through a Reshape that splits the feature axis as ``[..., 3, ...]``, then Transposes, Unsqueezes,
  Squeezes of other axes and Identities, ending in ``Gather(axis=part, t)``, or ``Split``/``Slice``
  of the part axis followed by ``Squeeze`` of it. The chain is replayed per part without that axis
  (the Reshape's target loses its 3: a constant, or a constant piece of a Concat).

Anything else leaves the projection packed (its heads stay skipped, with the head walk's reason).
Each op followed is one handler in a registry keyed by (domain, op_type): the selectors of either
form and the shape ops of the chain (see FEATURE_SELECTORS, PART_SELECTORS, PART_AXIS below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphIndex, names_read, subgraphs
from .graph.edits import add_initializer, fresh
from .graph.fold import folded, static_value
from .ops.registry import OpRegistry

PARTS = 3


@dataclass
class _Packed:
    matmul: int
    add: int | None
    source: str
    width: int                                     # 3M: the packed features
    weight: str                                    # its constant: [in, 3M], or [3M, in] with `transposed`
    bias: str | None
    packed: str                                    # the packed output (after the bias)
    removed: list = field(default_factory=list)    # node indices that go
    target: tuple | None = None                    # (reshape node, new target value or Concat inputs)
    chain: list = field(default_factory=list)      # (node, part axis in, part axis out, rank in, rank out)
    finals: dict = field(default_factory=dict)     # part -> names of the tensors that part replaces
    rows: tuple | None = None                      # Gemm: (the Reshape back to tokens, its target's recipe)
    transposed: bool = False                       # a Gemm's transB


def unpack_qkv(model: onnx.ModelProto, index: GraphIndex | None = None, only: set | None = None
               ) -> tuple[onnx.ModelProto, dict[str, tuple[str, list[str]]]]:
    """`model` with its packed Q/K/V projections split (a copy; `model` itself when there are none),
    and per projection split (by node name; `only`: those names only) a line saying so and the
    names of its parts' MatMul nodes."""
    index = index or GraphIndex(model)
    plans = []
    for i, node in enumerate(index.nodes):
        if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx") and (only is None
                                                                                       or node.name in only):
            plan = _plan(index, i)
            if plan is not None:
                plans.append(plan)
    if not plans:
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = _Names(index)
    removed, added, initializers = set(), [], []
    notes = {}
    for plan in plans:
        removed |= set(plan.removed)
        rebuilt = _rebuild(index, plan, names, initializers)
        added += rebuilt
        label = index.node_name(plan.matmul)
        inputs = index.constant_shape(plan.weight)[1 if plan.transposed else 0]
        line = (f"{label}: packed projection [{inputs}, {plan.width}] split into "
                f"{len(plan.finals)} of {plan.width // PARTS} (Q, K, V)")
        notes[index.nodes[plan.matmul].name] = (line, [n.name for n in rebuilt if n.op_type in ("MatMul", "Gemm")])
    nodes = [n for i, n in enumerate(index.nodes) if i not in removed] + added
    del out.graph.node[:]
    out.graph.node.extend(_topological(nodes, out.graph))
    for tensor in initializers:
        add_initializer(out, tensor)
    _drop_unused(out)
    return out, notes


class _Names:
    def __init__(self, index: GraphIndex):
        self.used = set(index.producer) | set(index.initializers) | index.graph_inputs
        self.nodes = {n.name for n in index.nodes}

    def tensor(self, base: str) -> str:
        return fresh(base, self.used)

    def node(self, base: str) -> str:
        return fresh(base, self.nodes)


def _ints(index: GraphIndex, i: int, position: int, attribute: str) -> list[int] | None:
    """Integer list of a node's input `position` (a constant) or, if absent, of its attribute."""
    node = index.nodes[i]
    if len(node.input) > position and node.input[position]:
        value = index.constant_value(node.input[position]) if index.is_constant(node.input[position]) else None
        return None if value is None else [int(v) for v in value.reshape(-1)]
    value = index.attr(i, attribute)
    return None if value is None else [int(v) for v in value]


def _rank(index: GraphIndex, name: str) -> int | None:
    shape = index.shape(name)
    return None if shape is None else len(shape)


def _plan(index: GraphIndex, i: int) -> _Packed | None:
    node = index.nodes[i]
    gemm = node.op_type == "Gemm"
    if gemm:  # on 2-D rows: plain x W + c only (transposed W is read as stored)
        if (index.attr(i, "alpha", 1.0) != 1.0 or index.attr(i, "beta", 1.0) != 1.0 or index.attr(i, "transA", 0)
                or len(node.input) not in (2, 3)):
            return None
    elif len(node.input) != 2:
        return None
    # shapes only here: the weights are read once a projection is found to be packed (every MatMul is asked)
    if not index.is_constant(node.input[1]) or index.uses(node.input[1]) != 1:
        return None
    shape = index.constant_shape(node.input[1])
    transposed = gemm and bool(index.attr(i, "transB", 0))
    if shape is None or len(shape) != 2:
        return None
    width = shape[0] if transposed else shape[1]
    if width % PARTS or width < PARTS:
        return None
    plan = _Packed(i, None, node.input[0], width, node.input[1], None, node.output[0], [i], transposed=transposed)
    if gemm and len(node.input) == 3 and node.input[2]:
        if not _own_vector(index, node.input[2], width):
            return None
        plan.bias = node.input[2]
    users = index.users(node.output[0])
    if not gemm and len(users) == 1 and index.uses(node.output[0]) == 1:
        a, _ = users[0]
        add = index.nodes[a]
        other = [x for x in add.input if x != node.output[0]]
        if add.op_type == "Add" and len(add.input) == 2 and len(other) == 1 and index.is_constant(other[0]):
            if not _own_vector(index, other[0], width):
                return None
            plan.add, plan.bias, plan.packed = a, other[0], add.output[0]
            plan.removed.append(a)
    if gemm:  # tokens flattened to rows: the Reshape back to [..., 3M] goes with the projection
        users = index.users(plan.packed)
        if len(users) != 1 or index.uses(plan.packed) != 1 or index.nodes[users[0][0]].op_type != "Reshape":
            return None
        r = users[0][0]
        rows = _rows_target(index, r, width)
        if rows is None:
            return None
        plan.rows, plan.packed = (r, rows), index.nodes[r].output[0]
        plan.removed.append(r)
    packed = plan.packed
    if index.uses(packed) != len(index.users(packed)) or not index.users(packed):
        return None  # a graph output or read in a subgraph
    rank = _rank(index, packed)
    readers = [u for u, _ in index.users(packed)]
    selectors = [u for u in readers if FEATURE_SELECTORS.handler(index.nodes[u]) is not None]
    shapes = [u for u in readers if index.nodes[u].op_type == "Shape"]
    if selectors and len(selectors) + len(shapes) == len(readers):
        # Shapes of the packed output may only size those Splits (TorchScript's chunk computes them)
        if not all(_only_sizes(index, index.nodes[u].output[0], selectors) for u in shapes):
            return None
        return plan if _feature_selectors(index, plan, selectors, rank) else None
    if len(readers) == 1 and index.nodes[readers[0]].op_type == "Reshape" and rank is not None:
        return plan if _through_reshape(index, plan, readers[0], rank) else None
    return None


def _own_vector(index: GraphIndex, name: str, width: int) -> bool:
    """Whether `name` is a constant [width] that nothing else reads (a bias the split may slice)."""
    return index.is_constant(name) and index.constant_shape(name) == (width,) and index.uses(name) == 1


def _feature_selectors(index: GraphIndex, plan: _Packed, readers: list[int], rank: int | None) -> bool:
    for u in readers:
        select = FEATURE_SELECTORS.handler(index.nodes[u])
        if index.nodes[u].input[0] != plan.packed or not select(index, plan, u, rank):
            return False
        plan.removed.append(u)
    return bool(plan.finals)


# ---- the ops the split follows: handlers registered by (domain, op_type) -----------------------------
# FEATURE_SELECTORS: fn(index, plan, node, rank) -> bool, a selection of the packed output's features
# that records the part(s) it takes in plan.finals; PART_SELECTORS: fn(index, plan, node, axis, length)
# -> bool, the same for a selection along the part axis (after the Reshape that made it); PART_AXIS:
# a ShapeStep, a shape op between the two that the split replays per part without the part axis.
FEATURE_SELECTORS = OpRegistry("packed-feature-selector")
PART_SELECTORS = OpRegistry("packed-part-selector")
PART_AXIS = OpRegistry("packed-part-axis")


@FEATURE_SELECTORS.register("Split")
def _split_features(index: GraphIndex, plan: _Packed, u: int, rank: int | None) -> bool:
    """Split(P, axis=-1) into three equal parts (sizes constant, or computed from P's shape)."""
    node, width = index.nodes[u], plan.width
    axis = index.attr(u, "axis", 0)
    sizes = _ints(index, u, 1, "split")
    if (axis != -1 and (rank is None or axis != rank - 1)) or len(node.output) != PARTS:
        return False
    if len(node.input) > 1 and node.input[1] and sizes is None:
        sizes = _computed(index, node.input[1], plan.packed, width, rank)
    if sizes is not None and sizes != [width // PARTS] * PARTS:
        return False
    for t, out in enumerate(node.output):
        if out:
            plan.finals.setdefault(t, []).append(out)
    return True


@FEATURE_SELECTORS.register("Slice")
def _slice_features(index: GraphIndex, plan: _Packed, u: int, rank: int | None) -> bool:
    """A Slice of one third of the last axis (bounds constant, or computed from P's shape)."""
    node, width = index.nodes[u], plan.width
    m = width // PARTS
    bounds = [_ints(index, u, k, a) for k, a in enumerate(("starts", "ends", "axes", "steps"), 1)]
    for k in range(4):  # bounds computed from the packed output's shape (TorchScript's chunk)
        if bounds[k] is None and len(node.input) > k + 1 and node.input[k + 1]:
            bounds[k] = _computed(index, node.input[k + 1], plan.packed, width, rank)
    starts, ends, axes, steps = bounds
    if starts is None or ends is None or len(starts) != 1 or axes is None or len(axes) != 1:
        return False
    if (axes[0] != -1 and (rank is None or axes[0] != rank - 1)) or (steps not in (None, [1])):
        return False
    lo, hi = starts[0], min(ends[0], width)
    if lo % m or hi - lo != m or lo < 0:
        return False
    plan.finals.setdefault(lo // m, []).append(node.output[0])
    return True


def _through_reshape(index: GraphIndex, plan: _Packed, r: int, rank: int) -> bool:
    node = index.nodes[r]
    m = plan.width // PARTS
    target = _new_target(index, r, rank - 1)
    if target is None:  # (with allowzero on, entries are sizes wherever they stand: taking one out is safe too)
        return False
    values, rebuilt = target
    # the packed axis splits as [3, rest...]: rest must hold one part's features
    rest = values[rank:]
    if values[rank - 1] != PARTS or any(v is None or v <= 0 for v in rest) or int(np.prod(rest)) != m:
        return False
    plan.target = (r, rebuilt)
    plan.removed.append(r)
    tensor, axis, length = node.output[0], rank - 1, len(values)
    while True:
        readers = [u for u, _ in index.users(tensor)]
        if index.uses(tensor) != len(readers) or not readers:
            return False
        step = PART_AXIS.handler(index.nodes[readers[0]]) if len(readers) == 1 else None
        if step is not None:
            u = readers[0]
            new = step.moved(index, u, axis, length)
            if new is None:
                return False
            plan.chain.append((u, axis, new[0], length, new[1]))
            plan.removed.append(u)
            tensor, (axis, length) = index.nodes[u].output[0], new
            continue
        return all(_part_selector(index, plan, u, tensor, axis, length) for u in readers) and bool(plan.finals)


def _only_sizes(index: GraphIndex, tensor: str, selectors: list[int]) -> bool:
    """Whether every use of `tensor` (and of what is computed from it) ends in a Split's sizes or a
    Slice's bounds among `selectors`: then it goes with them."""
    todo, seen = [tensor], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if index.uses(t) != len(index.users(t)):
            return False  # a graph output or read in a subgraph
        for u, position in index.users(t):
            if u in selectors and position >= 1:  # a Split's sizes, a Slice's starts, ends, axes or steps
                continue
            if u in selectors or index.nodes[u].domain not in ("", "ai.onnx"):
                return False
            todo += [o for o in index.nodes[u].output if o]
    return True


def _computed(index: GraphIndex, name: str, packed: str, width: int, rank: int | None) -> list[int] | None:
    """The value of a Split's sizes or a Slice's bounds computed from the packed output's shape alone (and
    constants), evaluated (`folded`) for two different leading dimensions: None unless both agree."""
    if rank is None:
        return None
    values = []
    for lead in (1, 3):
        value = folded(index, name, stand_in=(packed, np.zeros((lead,) * (rank - 1) + (width,), np.float32)))
        if value is None:
            return None
        values.append([int(v) for v in value.reshape(-1)])
    return values[0] if values[0] == values[1] else None


def _new_target(index: GraphIndex, r: int, at: int):
    """The Reshape's target entries (None where computed) and how to rebuild it without entry `at`:
    ("constant", values) or ("concat", Concat node, input position, that input's new values)."""
    name = index.nodes[r].input[1]
    if index.is_constant(name):
        values = [int(v) for v in index.constant_value(name).reshape(-1)]
        if any(v == 0 for v in values[at + 1:]):
            return None  # a later copy-entry would copy another dimension once the entry goes
        return values, ("constant", values[:at] + values[at + 1:])
    p = index.producer.get(name)
    if p is None or index.nodes[p].op_type != "Concat" or index.attr(p, "axis", 0) not in (0, -1):
        return None
    values, place = [], None  # (a Concat shared with other Reshapes is fine: each part gets a new one)
    for j, piece in enumerate(index.nodes[p].input):
        if index.is_constant(piece):
            v = [int(x) for x in index.constant_value(piece).reshape(-1)]
            if len(values) <= at < len(values) + len(v):
                place = ("concat", p, j, v[:at - len(values)] + v[at - len(values) + 1:])
            values += v
            continue
        shape = index.shape(piece)
        if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
            return None
        # one entry computed from static shapes (TorchScript's C // H) is known; others are not
        values += [static_value(index, piece)] if shape[0] == 1 else [None] * shape[0]
    if place is None or any(v == 0 for v in values[at + 1:]):
        return None
    return values, place


def _rows_target(index: GraphIndex, r: int, width: int):
    """How to rebuild the target of a Reshape that only regroups the rows of [R, width] with another last
    entry: ("constant", values) or ("concat", Concat node, input, that input's values, position); None
    when the Reshape does more, or its last entry is not the constant width."""
    src, dst = index.shape(index.nodes[r].input[0]), index.shape(index.nodes[r].output[0])
    if src is None or dst is None or not src or not dst or src[-1] != width or dst[-1] != width:
        return None
    name = index.nodes[r].input[1]
    if index.is_constant(name):
        values = [int(v) for v in index.constant_value(name).reshape(-1)]
        if values[-1] != width or any(v == 0 and k >= len(src) - 1 for k, v in enumerate(values[:-1])):
            return None  # (a 0 there would copy the features' axis into a leading one)
        return ("constant", values, len(values) - 1)
    p = index.producer.get(name)
    if p is None or index.nodes[p].op_type != "Concat" or index.attr(p, "axis", 0) not in (0, -1):
        return None
    last = index.nodes[p].input[-1]
    if not index.is_constant(last):
        return None
    values = [int(v) for v in index.constant_value(last).reshape(-1)]
    if not values or values[-1] != width or 0 in values[:-1]:
        return None
    return ("concat", p, len(index.nodes[p].input) - 1, values, len(values) - 1)


class ShapeStep:
    """A shape op between the packed Reshape and the part selection: where it moves the part axis, and
    the op as it acts on one part (the part axis taken out)."""

    def moved(self, index: GraphIndex, u: int, axis: int, length: int) -> tuple[int, int] | None:
        """The part axis and rank after the op, or None when it touches the part axis."""
        raise NotImplementedError

    def replayed(self, index: GraphIndex, step: tuple, opset: int, constant, tag: str) -> tuple:
        """(op, extra inputs, attributes) of the op on one part; `step` is plan.chain's entry."""
        raise NotImplementedError


def part_axis_op(*op_types: str, domain: str = ""):
    """Register a ShapeStep class (one instance of it) for ops of a domain."""

    def wrap(cls):
        PART_AXIS.register(*op_types, domain=domain)(cls())
        return cls

    return wrap


@part_axis_op("Identity")
class _Identity(ShapeStep):
    def moved(self, index, u, axis, length):
        return axis, length

    def replayed(self, index, step, opset, constant, tag):
        return "Identity", [], {}


@part_axis_op("Transpose")
class _Transpose(ShapeStep):
    def moved(self, index, u, axis, length):
        perm = index.attr(u, "perm") or list(reversed(range(length)))
        return list(perm).index(axis), length

    def replayed(self, index, step, opset, constant, tag):
        u, a_in, _, rank_in, _ = step
        perm = list(index.attr(u, "perm") or reversed(range(rank_in)))
        return "Transpose", [], {"perm": [p - (p > a_in) for p in perm if p != a_in]}


@part_axis_op("Unsqueeze")
class _Unsqueeze(ShapeStep):
    def moved(self, index, u, axis, length):
        axes = _ints(index, u, 1, "axes")
        if axes is None:
            return None
        out_rank = length + len(axes)
        axes = sorted(a % out_rank for a in axes)
        rest = [k for k in range(out_rank) if k not in axes]
        return rest[axis], out_rank

    def replayed(self, index, step, opset, constant, tag):
        u, _, a_out, _, rank_out = step
        axes = sorted(a % rank_out for a in _ints(index, u, 1, "axes"))
        return _axes_op("Unsqueeze", [a - (a > a_out) for a in axes], opset, constant, tag)


@part_axis_op("Squeeze")
class _Squeeze(ShapeStep):
    def moved(self, index, u, axis, length):
        axes = _ints(index, u, 1, "axes")
        if not axes:
            return None  # squeezing every size-1 axis: which ones is not known here
        axes = [a % length for a in axes]
        if axis in axes:
            return None
        return axis - sum(a < axis for a in axes), length - len(axes)

    def replayed(self, index, step, opset, constant, tag):
        u, a_in, _, rank_in, _ = step
        axes = sorted(a % rank_in for a in _ints(index, u, 1, "axes"))
        return _axes_op("Squeeze", [a - (a > a_in) for a in axes], opset, constant, tag)


def _axes_op(op: str, axes: list[int], opset: int, constant, tag: str) -> tuple:
    if opset >= 13:
        return op, [constant(f"{tag}/{op}_axes", np.asarray(axes, np.int64))], {}
    return op, [], {"axes": axes}


def _part_selector(index: GraphIndex, plan: _Packed, u: int, tensor: str, axis: int, length: int) -> bool:
    node = index.nodes[u]
    select = PART_SELECTORS.handler(node)
    return node.input[0] == tensor and select is not None and select(index, plan, u, axis, length)


@PART_SELECTORS.register("Gather")
def _gather_part(index: GraphIndex, plan: _Packed, u: int, axis: int, length: int) -> bool:
    node = index.nodes[u]
    indices = index.constant_value(node.input[1]) if index.is_constant(node.input[1]) else None
    if index.attr(u, "axis", 0) % length != axis or indices is None or indices.ndim != 0:
        return False
    plan.finals.setdefault(int(indices) % PARTS, []).append(node.output[0])
    plan.removed.append(u)
    return True


@PART_SELECTORS.register("Split")
def _split_parts(index: GraphIndex, plan: _Packed, u: int, axis: int, length: int) -> bool:
    node = index.nodes[u]
    sizes = _ints(index, u, 1, "split")
    if len(node.input) > 1 and node.input[1] and sizes is None:
        return False  # sizes computed at run time
    if index.attr(u, "axis", 0) % length != axis or len(node.output) != PARTS or sizes not in (None, [1] * PARTS):
        return False
    return _squeezed(index, plan, u, list(enumerate(node.output)), axis, length)


@PART_SELECTORS.register("Slice")
def _slice_part(index: GraphIndex, plan: _Packed, u: int, axis: int, length: int) -> bool:
    starts, ends = _ints(index, u, 1, "starts"), _ints(index, u, 2, "ends")
    axes, steps = _ints(index, u, 3, "axes"), _ints(index, u, 4, "steps")
    if None in (starts, ends, axes) or len(starts) != 1 or axes[0] % length != axis or steps not in (None, [1]):
        return False
    if not 0 <= starts[0] < PARTS or min(ends[0], PARTS) != starts[0] + 1:
        return False
    return _squeezed(index, plan, u, [(starts[0], index.nodes[u].output[0])], axis, length)


def _squeezed(index: GraphIndex, plan: _Packed, u: int, parts: list, axis: int, length: int) -> bool:
    """Parts selected with the part axis kept (size 1): each read only by a Squeeze of that axis."""
    plan.removed.append(u)
    for t, out in parts:
        users = [v for v, _ in index.users(out)]
        if not out or not users:
            continue
        if index.uses(out) != 1 or index.nodes[users[0]].op_type != "Squeeze":
            return False
        squeeze = users[0]
        if [a % length for a in (_ints(index, squeeze, 1, "axes") or [])] != [axis]:
            return False
        plan.finals.setdefault(t, []).append(index.nodes[squeeze].output[0])
        plan.removed.append(squeeze)
    return True


def _rebuild(index: GraphIndex, plan: _Packed, names: _Names, initializers: list) -> list[onnx.NodeProto]:
    """The nodes of every selected part: its projection, then the chain replayed without the part axis."""
    parts = _Parts(index, plan, names, initializers)
    for t in sorted(plan.finals):
        parts.add(t)
    return parts.nodes


class _Parts:
    """The nodes (and, in `initializers`, the constants) that replace one packed projection, part by part."""

    def __init__(self, index: GraphIndex, plan: _Packed, names: _Names, initializers: list):
        self.index, self.plan, self.names, self.initializers = index, plan, names, initializers
        self.m = plan.width // PARTS
        weight = index.constant_value(plan.weight)
        self.weight = weight.T if plan.transposed else weight
        self.bias = None if plan.bias is None else index.constant_value(plan.bias)
        self.label = index.node_name(plan.matmul)
        self.nodes: list[onnx.NodeProto] = []

    def constant(self, base: str, value) -> str:
        name = self.names.tensor(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, t: int) -> None:
        """Part `t`: its projection, then the Reshape and the chain replayed, ending in the tensors it replaces."""
        plan, names, tag = self.plan, self.names, f"{self.label}/part{t}"
        cur = self._projection(t, tag)
        steps = []
        if plan.target is not None:
            steps.append(("Reshape", [self._part_target(tag)], {}))
        for step in plan.chain:
            steps.append(PART_AXIS.handler(self.index.nodes[step[0]]).replayed(self.index, step, self.index.opset,
                                                                               self.constant, tag))
        finals = plan.finals[t]
        for k, (op, extra, attrs) in enumerate(steps):
            out = finals[0] if k == len(steps) - 1 else names.tensor(f"{tag}/{op}")
            self.nodes.append(helper.make_node(op, [cur, *extra], [out], name=names.node(f"{tag}/{op}"), **attrs))
            cur = out
        if not steps:  # selected on the feature axis: the projection is the part
            self.nodes[-1].output[0] = finals[0]
        for other in finals[1:]:  # the same part selected twice
            self.nodes.append(helper.make_node("Identity", [finals[0]], [other], name=names.node(f"{tag}/Identity")))

    def _projection(self, t: int, tag: str) -> str:
        """x @ W[:, part] (+ b[part]); a Gemm on rows goes back to tokens of this part's width. Its output."""
        plan, names, m, bias = self.plan, self.names, self.m, self.bias
        w = self.constant(f"{tag}/weight", self.weight[:, t * m:(t + 1) * m])
        cur = names.tensor(f"{tag}/MatMul")
        if plan.rows is not None:
            inputs = [plan.source, w] + ([self.constant(f"{tag}/bias", bias[t * m:(t + 1) * m])]
                                         if bias is not None else [])
            self.nodes.append(helper.make_node("Gemm", inputs, [cur], name=names.node(f"{tag}/MatMul")))
            target = self._rows_target(tag)
            out = names.tensor(f"{tag}/tokens")
            self.nodes.append(helper.make_node("Reshape", [cur, target], [out], name=names.node(f"{tag}/tokens")))
            return out
        self.nodes.append(helper.make_node("MatMul", [plan.source, w], [cur], name=names.node(f"{tag}/MatMul")))
        if bias is None:
            return cur
        b = self.constant(f"{tag}/bias", bias[t * m:(t + 1) * m])
        out = names.tensor(f"{tag}/Add")
        self.nodes.append(helper.make_node("Add", [cur, b], [out], name=names.node(f"{tag}/Add")))
        return out

    def _rows_target(self, tag: str) -> str:
        """The target of the Reshape from a Gemm's rows back to tokens, with this part's width last."""
        kind, *recipe = self.plan.rows[1]
        if kind == "constant":
            values, position = list(recipe[0]), recipe[1]
            values[position] = self.m
            return self.constant(f"{tag}/rows", np.asarray(values, np.int64))
        p, j, values, position = recipe
        values = list(values)
        values[position] = self.m
        concat_inputs = list(self.index.nodes[p].input)
        concat_inputs[j] = self.constant(f"{tag}/rows_piece", np.asarray(values, np.int64))
        target = self.names.tensor(f"{tag}/rows")
        self.nodes.append(helper.make_node("Concat", concat_inputs, [target], axis=0,
                                           name=self.names.node(f"{tag}/rows")))
        return target

    def _part_target(self, tag: str) -> str:
        """The Reshape's target without the part entry: a Concat of its own per part (the head walk
        rewrites each part's head count in its own target)."""
        index = self.index
        _, rebuilt = self.plan.target
        if rebuilt[0] == "constant":
            return self.constant(f"{tag}/target", np.asarray(rebuilt[1], np.int64))
        _, p, j, values = rebuilt
        inputs = list(index.nodes[p].input)
        for k, name in enumerate(inputs):
            if index.is_constant(name):  # constants of its own, too
                inputs[k] = self.constant(f"{tag}/target_piece", index.constant_value(name))
        if values:
            inputs[j] = self.constant(f"{tag}/target_piece", np.asarray(values, np.int64))
        else:
            del inputs[j]
        target = self.names.tensor(f"{tag}/target")
        self.nodes.append(helper.make_node("Concat", inputs, [target], axis=0, name=self.names.node(f"{tag}/target")))
        return target


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read, those they capture from the enclosing scope among them."""
    return {x for attr in node.attribute for g in subgraphs(attr) for x in names_read(g)}


def _topological(nodes: list, graph: onnx.GraphProto) -> list:
    """`nodes` in an order where every input is made before it is read, otherwise as given."""
    import heapq

    made = {x.name for x in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    waiting, readers = {}, {}
    for k, n in enumerate(nodes):
        needs = {x for x in [*n.input, *_subgraph_reads(n)] if x not in made and x in producer and producer[x] != k}
        waiting[k] = len(needs)
        for x in needs:
            readers.setdefault(x, []).append(k)
    ready = [k for k, c in waiting.items() if c == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for o in nodes[k].output:
            for r in readers.pop(o, ()):
                waiting[r] -= 1
                if waiting[r] == 0:
                    heapq.heappush(ready, r)
    if len(order) != len(nodes):
        raise ValueError("unpacking Q/K/V projections left a cycle")  # cannot happen: parts only replace
    return order


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is read (repeatedly), then initializers nothing reads."""
    graph = model.graph
    while True:
        read = names_read(graph)
        dead = [k for k, n in enumerate(graph.node) if not any(o in read for o in n.output if o)]
        if not dead:
            break
        for k in reversed(dead):
            del graph.node[k]
    read = names_read(graph)
    inputs = {x.name for x in graph.input}
    # from IR 4 on an initializer listed as an input can be fed at run time: it stays; before, every
    # initializer is listed as an input, and an unread one goes with its entry
    unread = {t.name for t in graph.initializer
              if t.name not in read and (t.name not in inputs or model.ir_version < 4)}
    if unread:
        keep = [t for t in graph.initializer if t.name not in unread]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        keep_inputs = [x for x in graph.input if x.name not in unread]
        del graph.input[:]
        graph.input.extend(keep_inputs)

"""Residual blocks: branches that a residual Add puts on top of its skip path, removable as a whole.

A *residual block* is an ``Add(skip, branch)`` whose `branch` input is computed from the skip's own
tensor by nodes that nothing else reads: a transformer block's attention or FFN branch, a ResNet
basic or bottleneck block's convolutions, a YOLO C2f bottleneck. Removing it makes the Add a
pass-through of the skip (plus the branch's mean output over the calibration data, as a constant)
and deletes every node of the branch.

How a branch is recognised, for each way of reading the Add's two inputs as (skip, branch):

- the *branch* is grown backwards from the branch input: a node joins it when every tensor it
  writes is read only inside the branch (the branch input only by the Add), up to a fixed point;
- the tensors the branch reads from outside must include the *skip's source* (the skip itself, or
  what it is an Identity of): ``x + f(x)``, ``x + f(LN(x))`` (pre-LN) and ``LN(x + f(x))`` (post-LN:
  removing f leaves ``LN(x + c)``) all read so. Other tensors it reads from outside (an attention
  mask shared by every layer) are side inputs: they stay;
- the skip must have the Add's output shape (no broadcasting), and the branch must hold a weight.

What is not a residual block is said with a structured reason (`Skip`): a skip that goes through a
*projection* (a downsampling block's 1x1 Conv) - the branch could only go with the projection kept,
which is not done; a branch whose inner tensor is also read outside it (non-exclusive); a skip
that broadcasts; a branch with a subgraph. An Add of two tensors of which neither reads the other's
source (token + position embeddings, scores + mask) is no residual Add at all, and not listed.

Example: ``y = LN(x + W2 gelu(W1 x + b1) + b2)``: the Add reading x and the FFN output is block
``Add_2`` (post-LN, mlp), its branch the nodes MatMul W1 ... Add b2; the FFN's hidden group of W1's
neurons lies wholly inside it and goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import GraphIndex
from ..ops import Skip, domain_of, linear_spec
from .build import node_id
from .layout import Segment
from .model import NeuronGroup

IDENTITIES = ("Identity", "Dropout")  # a skip written through them is still the block's input
NORMS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "GroupNormalization",
         "InstanceNormalization")
ATTENTION_OPS = ("Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention")
PROJECTION_DEPTH = 8  # nodes followed back from the skip when looking for a projection shortcut
METADATA = ("Shape", "Size")  # their outputs say how big a tensor is, not what it holds
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


@dataclass
class ResidualBlock:
    """A residual branch removable as a unit (`reason` None), or why an Add is not one.

    `nodes` are the branch's node indices (graph order), `groups` the ids of the neuron groups whose
    producers and consumers all lie in it (they go with it) and `neurons` their size; `layout` (of
    Segment) says which groups' features the stream (the Add's output) holds, so that the folded
    constant follows their masks. `neurons` counts those of the inner groups read inside the branch
    (a group the branch's last linear node writes holds the stream's features, not the branch's). The
    feature axis is negative (-1 for tokens, 1 - rank for channels).
    """

    id: str
    add: int                    # the residual Add's node index
    name: str                   # its node name
    position: int               # which input of the Add is the branch
    branch: str                 # the branch's output tensor (an input of the Add)
    skip: str                   # the other input
    stream: str                 # the Add's output
    nodes: list[int] = field(default_factory=list)
    kind: str = "mlp"           # attention, conv or mlp: what the branch computes (for people)
    norm: str | None = None     # "pre" (x + f(LN(x))) or "post" (LN(x + f(x))), when one is seen
    axis: int = -1
    rank: int | None = None
    width: int | None = None
    parameters: int = 0         # elements of the constants only the branch reads
    groups: list[str] = field(default_factory=list)
    neurons: int = 0
    blocks: list[str] = field(default_factory=list)  # ids of residual blocks nested in this branch
    layout: tuple = ()
    dtype: int = onnx.TensorProto.FLOAT  # the stream's element type (of the folded constant)
    reason: Skip | None = None

    @property
    def removable(self) -> bool:
        return self.reason is None

    @property
    def taps(self) -> tuple[str, str]:
        """The tensors whose statistics score the block: the branch output and the stream."""
        return self.branch, self.stream

    def describe(self) -> str:
        norm = f", {self.norm}-norm" if self.norm else ""
        return f"{self.kind} branch{norm}, {len(self.nodes)} nodes"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "kind": "blocks", "branch_kind": self.kind, "norm": self.norm,
                "branch_tensor": self.branch, "skip_tensor": self.skip, "stream_tensor": self.stream,
                "nodes": len(self.nodes), "features": self.width, "parameters": self.parameters,
                "groups": self.groups, "neurons": self.neurons, "nested_blocks": self.blocks,
                "prunable": self.removable, "reason": None if self.reason is None else str(self.reason),
                "skip": None if self.reason is None else self.reason.to_dict()}


def find_blocks(model: onnx.ModelProto, index: GraphIndex | None = None, groups: list[NeuronGroup] | None = None,
                shapes: dict[str, tuple] | None = None) -> list[ResidualBlock]:
    """Every residual Add of the model, as a removable block or with the reason it is not one. `shapes`
    (tensor -> dims, as observed on data) stand in for the statically inferred shapes where given: a skip
    whose dimensions shape inference cannot name is then compared at the data's shapes."""
    index = index or GraphIndex(model)
    graph = _Graph(index, shapes)
    blocks = []
    for i, node in enumerate(index.nodes):
        if node.op_type == "Add" and domain_of(node) == "" and len(node.input) == 2:
            block = _read_add(graph, i)
            if block is not None:
                blocks.append(block)
    taken: set[str] = set()
    for b in blocks:
        b.id = _block_id(index, b.add, taken)
    _settle(graph, blocks, groups or [])
    return blocks


def _block_id(index: GraphIndex, add: int, taken: set) -> str:
    """The Add's group-style id (its name where unique), kept apart from neuron group ids."""
    name = f"block:{node_id(index, add)}"
    while name in taken:
        name += f"#{add}"
    taken.add(name)
    return name


class _Graph:
    """Lookups the block finder repeats: which tensors are computed from constants only."""

    def __init__(self, index: GraphIndex, shapes: dict[str, tuple] | None = None):
        self.index = index
        self.shapes = shapes or {}
        self._constant: dict[str, bool] = {}

    def shape(self, name: str):
        return self.shapes[name] if name in self.shapes else self.index.shape(name)

    def constant(self, name: str) -> bool:
        """Whether the tensor is a constant or computed from constants only (a weight behind an Identity)."""
        index, memo = self.index, self._constant
        stack = [(name, False)]
        while stack:  # post-order, iterative: the walk may go back through the whole network
            t, ready = stack.pop()
            if t in memo:
                continue
            p = index.producer.get(t)
            inputs = [x for x in index.nodes[p].input if x] if p is not None else []
            if index.is_constant(t) or p is None or _has_subgraph(index.nodes[p]) or not inputs:
                memo[t] = index.is_constant(t)
            elif ready:
                memo[t] = all(memo.get(x, False) for x in inputs)
            else:
                stack.append((t, True))
                stack.extend((x, False) for x in inputs if x not in memo)
        return memo[name]

    def read_only_by(self, node: int, members: set[int]) -> bool:
        """Whether every tensor node `node` writes is read only by `members` (never a graph output or in a
        subgraph)."""
        index = self.index
        for out in index.nodes[node].output:
            if not out:
                continue
            if out in index.graph_outputs or out in index.subgraph_names:
                return False
            if any(r not in members for r, _ in index.users(out)):
                return False
        return True

    def branch(self, add: int, tensor: str) -> tuple[set[int], set[str]]:
        """The nodes computing `tensor` that nothing outside reads, and the non-constant tensors they read
        from outside. A node joins once its last reader has: so each join re-checks the producers of the
        joining node only (a worklist, linear in the branch's edges)."""
        index = self.index
        start = index.producer[tensor]
        members, work = {start}, [start]
        while work:
            for p in self._producers(work.pop()):
                if p not in members and self.read_only_by(p, members):
                    members.add(p)
                    work.append(p)
        outside = {x for n in members for x in index.nodes[n].input
                   if x and index.producer.get(x) not in members and not self.constant(x)}
        return members, outside

    def _producers(self, node: int) -> list[int]:
        index = self.index
        return [index.producer[x] for x in index.nodes[node].input if x in index.producer]

    def identity_sources(self, tensor: str) -> list[str]:
        """The tensor and what it is an Identity (or inference Dropout) of, back to the first other op."""
        index, out = self.index, [tensor]
        p = index.producer.get(tensor)
        while p is not None and index.nodes[p].op_type in IDENTITIES and domain_of(index.nodes[p]) == "":
            if index.nodes[p].op_type == "Dropout" and len(index.nodes[p].input) > 2 and index.nodes[p].input[2]:
                break  # training_mode given: not necessarily the identity
            tensor = index.nodes[p].input[0]
            out.append(tensor)
            p = index.producer.get(tensor)
        return out

    def skip_path(self, tensor: str) -> list[tuple[str, int]]:
        """(tensor, node) back from the skip through the first non-constant input of each producer: where a
        projection shortcut (Conv -> BatchNormalization, AveragePool -> Conv) comes from. It stops at what is
        no data path (a Shape) and at another residual stream (an Add of two computed tensors)."""
        index, out = self.index, []
        for _ in range(PROJECTION_DEPTH):
            p = index.producer.get(tensor)
            if p is None or self.boundary(p):
                break
            inputs = [x for x in index.nodes[p].input if x and not self.constant(x)]
            if not inputs or not self.data(inputs[0]):
                break
            tensor = inputs[0]
            out.append((tensor, p))
        return out

    def data(self, tensor: str) -> bool:
        """Whether a tensor holds values (floating point, or of unknown type), not indices or sizes."""
        elem = self.index.elem_type(tensor)
        return elem is None or elem in FLOATS

    def boundary(self, node: int) -> bool:
        """A node a search for the block's input does not go through: one that reads a tensor's shape only,
        or another residual Add (an Add of two computed tensors)."""
        n = self.index.nodes[node]
        if n.op_type in METADATA:
            return True
        return n.op_type == "Add" and len([x for x in n.input if x and not self.constant(x)]) == 2

    def near(self, tensor: str, targets: set[str]) -> bool:
        """Whether `tensor` is computed from one of `targets` within PROJECTION_DEPTH nodes, not through a
        boundary (so that a layer's mask or the previous block's output does not count as the same block)."""
        index, frontier, seen = self.index, [tensor] if self.data(tensor) else [], set()
        for _ in range(PROJECTION_DEPTH + 1):
            if targets & set(frontier):
                return True
            step = []
            for t in frontier:
                p = index.producer.get(t)
                if t in seen or p is None or self.boundary(p):
                    continue
                seen.add(t)
                step += [x for x in index.nodes[p].input if x and not self.constant(x) and self.data(x)]
            frontier = step
        return False


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _read_add(graph: _Graph, add: int) -> ResidualBlock | None:
    """The Add as a residual block (removable or with its reason), or None when it is no residual Add."""
    index = graph.index
    node = index.nodes[add]
    a, b = node.input
    if a == b or graph.constant(a) or graph.constant(b) or not node.output[0]:
        return None
    readings = [r for r in (_reading(graph, add, position) for position in (1, 0)) if r is not None]
    if not readings:
        return None
    # removable first; then a projection shortcut read from its short side (the projection is the skip)
    return min(readings, key=lambda r: r[0])[1]


def _reading(graph: _Graph, add: int, position: int) -> tuple[tuple, ResidualBlock] | None:
    """The Add read with input `position` as the branch, with a key that orders readings (removable first,
    then projection shortcuts by the length of the skip's path), or None when it is no residual branch."""
    index = graph.index
    node = index.nodes[add]
    branch, skip = node.input[position], node.input[1 - position]
    block = ResidualBlock("", add, index.node_name(add), position, branch, skip, node.output[0])
    if branch not in index.producer:
        return None
    label = index.node_name(add)
    sources = graph.identity_sources(skip)
    if index.users(branch) != [(add, position)] or branch in index.graph_outputs or branch in index.subgraph_names:
        if not graph.near(branch, set(sources)):
            return None
        readers = [index.node_name(r) for r, _ in index.users(branch) if r != add]
        block.reason = Skip("non-exclusive", f"{label}: the branch output {branch!r} is also read outside the "
                            f"block ({', '.join(readers) or 'a graph output or subgraph'})", label, branch)
        return (3, 0), block
    members, outside = graph.branch(add, branch)
    block.nodes = sorted(members)
    if set(sources) & outside:
        block.reason = _checks(graph, block)
        return (0 if block.reason is None else 1, 0), block
    return _not_removable(graph, block, sources, outside)


def _not_removable(graph: _Graph, block: ResidualBlock, sources: list[str], outside: set[str]):
    """Why a branch that does not read the skip's source directly is still a residual branch that cannot go
    (a projection shortcut, or a branch tensor read outside it), with its reading's key; None when the Add
    is no residual Add."""
    index, label = graph.index, block.name
    path = graph.skip_path(block.skip)
    for k, (tensor, _) in enumerate(path):
        if tensor not in outside:
            continue
        projection = [p for _, p in path[:k + 1]]
        ops = " -> ".join(index.nodes[p].op_type for p in reversed(projection))
        if any(linear_spec(index.nodes[p]) is not None for p in projection):
            block.reason = Skip("projection-shortcut", f"{label}: the skip goes through a projection ({ops}) "
                                f"of the block input {tensor!r}; the branch could only go with the projection "
                                "kept as the block, which onnxprune does not do", label, tensor)
        else:
            block.reason = Skip("skip-path", f"{label}: the skip is computed from the block input {tensor!r} "
                                f"({ops}), not the input itself: removing the branch would leave that "
                                "computation as the block, which onnxprune does not do", label, tensor)
        return (2, k), block
    starts = set(sources) | {t for t, _ in path}
    for tensor in sorted(outside):
        if graph.near(tensor, starts):
            readers = [index.node_name(r) for r, _ in index.users(tensor) if r not in block.nodes]
            where = ", ".join(readers) or "a graph output"
            block.reason = Skip("non-exclusive", f"{label}: the branch's tensor {tensor!r} is also read outside "
                                f"the block ({where})", label, tensor)
            return (3, 0), block
    return None


def _checks(graph: _Graph, block: ResidualBlock) -> Skip | None:
    """Why a branch that reads the skip still cannot go (its shapes, its nodes), or None."""
    index, label = graph.index, block.name
    skip_shape, out_shape = graph.shape(block.skip), graph.shape(block.stream)
    if skip_shape is None or out_shape is None or len(skip_shape) != len(out_shape):
        return Skip("shape", f"{label}: the shapes of the skip and the block output are not known, so the Add "
                    "cannot be shown to be a pass-through of the skip", label, block.skip)
    if any(s is None or s != o for s, o in zip(skip_shape, out_shape)):
        return Skip("broadcast", f"{label}: the skip {list(skip_shape)} is broadcast to the block's output "
                    f"{list(out_shape)} (or their dimensions cannot be matched)", label, block.skip)
    for n in block.nodes:
        if _has_subgraph(index.nodes[n]):
            return Skip("subgraph", f"{label}: the branch holds {index.node_name(n)} ({index.nodes[n].op_type}), "
                        "whose subgraph onnxprune does not follow", label, None)
    if not any(linear_spec(index.nodes[n]) is not None for n in block.nodes):
        return Skip("no-weights", f"{label}: the branch holds no Gemm, MatMul or Conv: nothing to gain", label,
                    block.branch)
    return None


def _settle(graph: _Graph, blocks: list[ResidualBlock], groups: list[NeuronGroup]) -> None:
    """Each block's kind, norm placement, feature axis and width, stream layout, parameters, inner groups
    and nested blocks (a removable block whose width cannot be read gets a reason)."""
    index = graph.index
    by_add = {b.add: b for b in blocks}
    for b in blocks:
        members = set(b.nodes)
        ops = {index.nodes[n].op_type for n in members}
        b.kind = "attention" if ops & set(ATTENTION_OPS) else "conv" if ops & {"Conv", "ConvTranspose"} else "mlp"
        b.norm = _norm(index, b, members)
        b.blocks = [by_add[n].id for n in b.nodes if n in by_add]
        b.parameters = _parameters(index, members)
        inner = [g for g in groups if g.size and _inside(g, members)]
        # the neurons that go with it are those read inside it (the last producer writes the stream's features)
        b.groups, b.neurons = [g.id for g in inner], sum(g.size for g in inner if g.consumer_nodes)
        b.dtype = index.elem_type(b.branch) or onnx.TensorProto.FLOAT
        _features(graph, b, groups, ops)


def _norm(index: GraphIndex, b: ResidualBlock, members: set[int]) -> str | None:
    readers = {r for r, _ in index.users(b.stream)}
    if readers and all(index.nodes[r].op_type in NORMS for r in readers):
        return "post"
    first = [r for r, _ in index.users(b.skip) if r in members]
    if first and all(index.nodes[r].op_type in NORMS for r in first):
        return "pre"
    return None


def _inside(g: NeuronGroup, members: set[int]) -> bool:
    nodes = [n for n, _, _ in g.producers] + [n for n, _ in g.derived] + list(g.consumer_nodes) + list(g.attention)
    return bool(nodes) and all(n in members for n in nodes)


def _parameters(index: GraphIndex, members: set[int]) -> int:
    """Elements of the floating-point constants that only the branch reads."""
    total = 0
    seen = set()
    for n in members:
        for x in index.nodes[n].input:
            if not x or x in seen or not index.is_constant(x):
                continue
            seen.add(x)
            if all(r in members for r, _ in index.users(x)) and x not in index.graph_outputs:
                if np.dtype(index.constant_dtype(x)).kind == "f":
                    shape = index.constant_shape(x)
                    total += int(np.prod(shape, dtype=np.int64)) if shape is not None else 0
    return total


def _features(graph: _Graph, b: ResidualBlock, groups: list[NeuronGroup], ops: set) -> None:
    """The stream's feature axis, width and layout: a group's that carries the stream, else the branch's
    (Conv: channels on axis 1; otherwise the last axis)."""
    shape = graph.shape(b.stream)
    b.rank = len(shape) if shape is not None else None
    carrier = next((g for g in groups if b.stream in g.layouts and g.features is not None), None)
    if carrier is not None:
        b.axis = carrier.axis
    elif b.rank is not None and b.rank >= 3 and ops & {"Conv", "ConvTranspose"}:
        b.axis = 1 - b.rank
    else:
        b.axis = -1
    width = shape[b.axis] if shape is not None and len(shape) >= -b.axis else None
    b.width = width if isinstance(width, int) and width > 0 else None
    b.layout = carrier.layouts[b.stream] if carrier is not None else (Segment(None, 0, b.width or 0),)
    if b.reason is not None:
        return
    if b.width is None:
        b.reason = Skip("shape", f"{b.name}: the number of features of {b.stream!r} (axis {b.axis}) is not known",
                        b.name, b.stream)
    elif sum(s.width for s in b.layout) != b.width:
        b.reason = Skip("layout", f"{b.name}: the stream's features do not line up with its groups'", b.name,
                        b.stream)


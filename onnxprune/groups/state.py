"""The state of one walk over a graph, and the steps every handler of the walk shares.

Walking the nodes in graph order, each tensor that carries a group's features gets a layout
(TensorInfo: which pieces of which producers' spaces it holds, on which axis); a tensor split into
attention heads gets a HeadInfo instead. Spaces that must share one keep-mask are tied in an offset
union-find; a space that reaches something the walk cannot follow is *blocked*, with the first
reason. Everything the rewrite will change is *placed* with the layout of the features it follows.
Discovery (discover.py), the structural ops (structural.py), the head walk (heads.py) and the fused
attention ops (attention.py) all act on one Walk; none of them imports another's state.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import GraphIndex
from ..graph.fold import shape_dims, shape_targets
from ..ops import Features, NotPrunable, Skip, linear_spec
from .layout import OffsetUnionFind, aligned, width
from .linear import consumer_read
from .model import Consumer


@dataclass(frozen=True)
class TensorInfo:
    layout: tuple  # of Piece
    axis: int      # the feature axis, negative
    rank: int | None

    @property
    def channel_first(self) -> bool:
        return self.rank is not None and self.rank + self.axis == 1

    def features(self) -> Features:
        return Features(width(self.layout), self.axis, self.rank)


@dataclass(frozen=True)
class HeadInfo:
    layout: tuple  # of Piece: the H*D features of the projections, head h = features [h*D, (h+1)*D)
    heads: int
    dim: int
    tags: tuple    # per axis of the tensor: "h", "d", "r" (a copy axis next to the heads), None
    repeat: int = 1  # grouped-query attention: each head of `layout` stands for `repeat` heads in a row


class Walk:
    """What the walk knows so far (see the module docstring)."""

    def __init__(self, index: GraphIndex):
        self.index = index
        self.uf = OffsetUnionFind()
        self.info: dict[str, TensorInfo] = {}
        self.blocked: dict[int, Skip] = {}      # space -> the first reason it cannot be pruned
        self.failed: dict[int, tuple] = {}      # producer nodes that are no space: (Skip, size)
        self.blocks_of: dict[int, int] = {}     # producer space -> its number of channel blocks (> 1 only)
        self.features_of: dict[int, Features] = {}
        self.placed: list[tuple[object, tuple]] = []
        self.reads: list[tuple[Consumer, tuple]] = []
        self.region: list[tuple[int, tuple]] = []
        self.vias: list[tuple[str, tuple]] = []
        self.heads: dict[str, HeadInfo] = {}     # head tensors by name
        self.head_dims: dict[int, set] = {}      # space -> head_dim(s) it was split with
        self.attention_nodes: list[tuple[int, tuple]] = []  # Q Kᵀ and P V MatMuls, with a layout of their heads
        self.runtime_targets: dict[int, tuple] = {}  # Reshapes sized by the heads' Shape, not yet reached
        self.derived: dict[int, tuple] = {}  # grouped-query attention: K/V space -> (query space, n_rep, head_dim)

    # ---- what tensors carry --------------------------------------------------------------------

    def block(self, layout: tuple, skip: Skip) -> None:
        for p in layout:
            if p.space is not None and p.space not in self.blocked:
                self.blocked[p.space] = skip

    def set_features(self, tensor: str, info: TensorInfo) -> None:
        self.info[tensor] = info
        if tensor in self.index.graph_outputs:
            self.block(info.layout, Skip("graph-output", f"tensor {tensor!r} is a graph output", tensor=tensor))
        if tensor in self.index.subgraph_names:
            self.block(info.layout, Skip("subgraph", f"tensor {tensor!r} is used inside a subgraph", tensor=tensor))

    def set_heads(self, tensor: str, info: HeadInfo) -> None:
        self.heads[tensor] = info
        self.vias.append((tensor, info.layout))
        if tensor in self.index.graph_outputs or tensor in self.index.subgraph_names:
            raise NotPrunable(f"head tensor {tensor!r} is a graph output or read in a subgraph", "graph-output",
                              tensor=tensor)

    def carry(self, i: int, info: TensorInfo) -> None:
        """Node `i` passes features on: it joins their groups' region, and its output carries `info`."""
        self.region.append((i, info.layout))
        self.set_features(self.index.nodes[i].output[0], info)

    def place(self, item, layout: tuple) -> None:
        """The rewrite changes `item` (an edit record) with the keep-mask of the features of `layout`."""
        self.placed.append((item, layout))

    def note_head_dim(self, layout: tuple, dim: int) -> None:
        for p in layout:
            if p.space is not None:
                self.head_dims.setdefault(p.space, set()).add(dim)

    # ---- reading a node ------------------------------------------------------------------------

    def axis(self, i: int, info: TensorInfo, default: int) -> tuple[int, int | None]:
        """The node's axis attribute as a negative axis, and the rank it was resolved with."""
        axis = self.index.attr(i, "axis", default)
        rank = info.rank
        if rank is None:
            shape = self.index.shape(self.index.nodes[i].input[0])
            rank = len(shape) if shape is not None else None
        if axis >= 0:
            if rank is None:
                raise NotPrunable(f"{self.index.node_name(i)} works on axis {axis} of a tensor of unknown rank",
                                  "layout", self.index.node_name(i))
            axis -= rank
        return axis, rank

    def feature_axis(self, tensor: str, axis: int) -> bool:
        """Whether `axis` of `tensor` is the feature axis of a group's tensor (its size follows pruning)."""
        info = self.info.get(tensor)
        shape = self.index.shape(tensor)
        if info is None or shape is None:
            return False
        rank = len(shape)
        return (axis + rank if axis < 0 else axis) == info.axis + rank

    # ---- steps shared by several handlers --------------------------------------------------------

    def consume(self, i: int, position: int, tensor: str, repeat: int = 1, via: str | None = None,
                info: TensorInfo | None = None) -> None:
        """Linear node `i` contracts over the features of `tensor` at input `position`: a consumer."""
        index = self.index
        info = info or self.info[tensor]
        spec = linear_spec(index.nodes[i])
        label = index.node_name(i)
        op = index.nodes[i].op_type
        if via is None and info.channel_first and not spec.channels_first:
            raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which contracts over the last "
                              "spatial axis, not the channels", "layout", label, tensor)
        if spec.channels_first and not info.channel_first:
            raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which reads channels on axis 1, "
                              "but the features are on the last axis", "layout", label, tensor)
        consumer, weight_slice = consumer_read(index, i, position, tensor, info.features(), repeat, via)
        consumer.tap = tensor
        self.reads.append((consumer, info.layout))
        self.place(weight_slice, info.layout)

    def shape_read(self, i: int, tensor: str, forbidden: list[int]) -> None:
        """A Shape node reading a tensor whose axes `forbidden` change when pruning: allowed when
        everything that reads its value only picks other axes (Gather of a constant index, Slice of a
        constant range, or the Shape's own start/end: see `shape_dims`)."""
        index = self.index
        label = index.node_name(i)
        out = index.nodes[i].output[0]
        read = shape_dims(index, out)
        if read is None:
            raise NotPrunable(f"tensor {tensor!r} reaches {label} (Shape) and its rank is not known", "shape-read",
                              label, tensor)
        rank = len(index.shape(tensor))
        forbidden = {a + rank if a < 0 else a for a in forbidden}
        if not forbidden & {a for _, a in read}:
            return
        reason = NotPrunable(f"tensor {tensor!r} reaches {label} (Shape), whose value reads the number of "
                             "features or heads at run time: sizes computed from it would not follow the pruning",
                             "shape-read", label, tensor)
        if out in index.graph_outputs or out in index.subgraph_names:
            raise reason
        picks = [shape_dims(index, index.nodes[r].output[0]) if index.nodes[r].op_type in ("Gather", "Slice")
                 and position == 0 else None for r, position in index.users(out)]
        if all(p is not None and not forbidden & {a for _, a in p} for p in picks):
            return
        # the heads' own Shape, or a features' count: fine where its values only size Reshapes of these
        # heads or rows of these features (checked when they are reached: the head walk's Reshape,
        # structural._rows_reshape; a target left unclaimed blocks the group at the end)
        targets = shape_targets(index, out)
        if targets is None:
            raise reason
        layout = self.heads[tensor].layout if tensor in self.heads else self.info[tensor].layout
        for node in targets:
            self.runtime_targets.setdefault(node, (layout, reason.skip))

    def tie_heads(self, i: int, a: HeadInfo, b: HeadInfo, name: str) -> None:
        """Node `i` combines heads `a` with heads `b` (read as `name`) head by head: tie their spaces."""
        label = self.index.node_name(i)
        if a.repeat != b.repeat:
            return self._tie_repeated(i, a, b, name)
        if a.heads != b.heads or a.dim != b.dim or width(a.layout) != width(b.layout):
            raise NotPrunable(f"{label} combines {a.heads} heads of {a.dim} with {b.heads} heads of {b.dim} "
                              "(key/value heads shared by query heads in a way onnxprune does not follow)",
                              "attention", label, name)
        for pa, pb in aligned(a.layout, b.layout):
            if (pa.space is None) != (pb.space is None):
                raise NotPrunable(f"{label} combines heads with features from outside every group", "outside",
                                  label, name)
            if pa.space is not None:
                why = self.uf.union(pa.space, pa.lo, pb.space, pb.lo, pa.width)
                if why:
                    raise NotPrunable(f"{label} {why} (a packed QKV projection whose parts are selected in a way "
                                      "onnxprune does not split)", "coupling", label, name)

    def _tie_repeated(self, i: int, a: HeadInfo, b: HeadInfo, name: str) -> None:
        """Query heads (`repeat` 1) against key/value heads repeated n_rep times: the K/V space becomes
        *derived* from the query space (KV head g goes with query heads g*n_rep ... g*n_rep + n_rep - 1)."""
        label = self.index.node_name(i)
        if a.repeat > b.repeat:
            a, b = b, a
        r = b.repeat
        refuse = NotPrunable(f"{label} pairs {a.heads} query heads with {b.heads} key/value heads repeated {r} "
                             "times in a way onnxprune does not follow", "attention", label, name)
        if (a.repeat != 1 or a.dim != b.dim or a.heads != b.heads * r or len(a.layout) != 1
                or len(b.layout) != 1 or None in (a.layout[0].space, b.layout[0].space)):
            raise refuse
        q, kv = a.layout[0], b.layout[0]
        if q.lo != 0 or kv.lo != 0 or q.hi != self.uf.size[q.space] or kv.hi != self.uf.size[kv.space]:
            raise refuse
        if self.derived.get(kv.space, (q.space,))[0] != q.space:
            raise refuse
        self.derived[kv.space] = (q.space, r, a.dim)

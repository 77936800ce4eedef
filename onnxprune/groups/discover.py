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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import onnx

from ..graph import ConstantView, GraphIndex
from ..graph.edits import SliceBounds, SplitSizes
from ..ops.elementwise import JOINS
from ..ops import (MIXING_REASONS, BlockSlice, ConstSlice, CountEntry, Features, NotPrunable, PrivateTarget,
                   ShapeUpdate, Skip, constant_slice, domain_of, handler_for, linear_spec, per_feature_slice)
from ..graph.fold import target_entries
from .heads import HeadWalk
from .layout import OffsetUnionFind, Piece, Segment, aligned, sub, width
from .model import Consumer, NeuronGroup, Placed


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


def find_groups(model: onnx.ModelProto, index: GraphIndex | None = None) -> list[NeuronGroup]:
    """Every neuron group of the model (one per producer, or one per coupled set), prunable or with a reason."""
    return _Discovery(index or GraphIndex(model)).run()


class _Discovery(HeadWalk):
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
        self.heads: dict = {}                    # head tensors (heads.HeadInfo) by name
        self.head_dims: dict[int, set] = {}      # space -> head_dim(s) it was split with
        self.attention_nodes: list[tuple[int, tuple]] = []  # Q Kᵀ and P V MatMuls, with a layout of their heads
        self.runtime_targets: dict[int, tuple] = {}  # Reshapes sized by the heads' Shape, not yet reached
        self.derived: dict[int, tuple] = {}  # grouped-query attention: K/V space -> (query space, n_rep, head_dim)

    def run(self) -> list[NeuronGroup]:
        for i in range(len(self.index.nodes)):
            self._visit(i)
        for layout, skip in self.runtime_targets.values():  # sized by a head count, but not a head tensor
            self._block(layout, skip)
        return self._build()

    # ---- walking the graph ----------------------------------------------------------------

    def _visit(self, i: int) -> None:
        index = self.index
        node = index.nodes[i]
        inputs = [(pos, name) for pos, name in enumerate(node.input) if name in self.info]
        heads = [(pos, name) for pos, name in enumerate(node.input) if name in self.heads]
        if heads:
            try:
                self._head_visit(i, heads)
            except (NotPrunable, ValueError, KeyError, IndexError, StopIteration, TypeError) as e:
                if not isinstance(e, NotPrunable) and os.environ.get("ONNXPRUNE_DEBUG"):
                    raise
                skip = e.skip if isinstance(e, NotPrunable) else Skip(
                    "attention", f"{index.node_name(i)} ({node.op_type}): onnxprune could not follow the heads "
                    f"through it ({type(e).__name__}: {e})", index.node_name(i))
                for _, name in heads:
                    self._block(self.heads[name].layout, skip)
                for _, name in inputs:
                    self._block(self.info[name].layout, skip)
            return
        if node.domain == "com.microsoft" and node.op_type == "Attention":
            for _, name in inputs:
                self._block(self.info[name].layout, Skip("attention", f"tensor {name!r} reaches "
                            f"{index.node_name(i)} (Attention), whose packed weight reads it", index.node_name(i),
                            name))
            try:
                self._fused_attention(i)
            except NotPrunable as e:
                self.failed[i] = (e.skip, None)
            return
        spec = linear_spec(node)
        if spec is not None and not (node.op_type == "Conv" and _is_depthwise(index, i)):
            for pos, name in inputs:
                try:
                    self._consume(i, pos, name)
                except NotPrunable as e:
                    self._block(self.info[name].layout, e.skip)
            self._produce(i)
            return
        if not inputs:
            return
        op = node.op_type if domain_of(node) == "" else None
        label = index.node_name(i)
        tensor = inputs[0][1]
        first = self.info[tensor]
        try:
            if (op in ("Flatten", "Reshape") and first.channel_first and inputs[0][0] == 0 and len(inputs) == 1
                    and _flattens_channels(index, i, tensor, first.features())):
                self._flatten(i, tensor)
            elif op == "Concat":
                self._concat(i)
            elif op == "Split":
                self._split(i, inputs)
            elif op == "Slice":
                self._slice(i, inputs)
            elif (op == "Reshape" and inputs[0][0] == 0 and len(inputs) == 1 and not first.channel_first
                  and self._head_split(i, tensor)):
                pass
            elif (op == "Reshape" and inputs[0][0] == 0 and len(inputs) == 1 and not first.channel_first
                  and self._rows_reshape(i, tensor)):
                pass
            elif op == "Transpose" and tensor not in self.heads and self._rows_transpose(i, tensor):
                pass
            elif node.domain == "com.microsoft" and node.op_type == "MultiHeadAttention":
                self._multi_head_attention(i, inputs)
            elif handler_for(node) is not None:
                self._pass_through(i, inputs)
            elif op == "Shape":
                self._shape_read(i, tensor, [first.axis])
            elif op is None:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({node.domain}.{node.op_type}), "
                                  "an op onnxprune does not know", "unknown-op", label, tensor)
            elif op in MIXING_REASONS:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), which {MIXING_REASONS[op]}",
                                  "mixing-op", label, tensor)
            else:
                raise NotPrunable(f"tensor {tensor!r} reaches {label} ({op}), "
                                  "which is not known to act on each feature on its own", "unknown-op", label, tensor)
        except NotPrunable as e:
            for _, name in inputs:
                self._block(self.info[name].layout, e.skip)

    def _block(self, layout: tuple, skip: Skip) -> None:
        for p in layout:
            if p.space is not None and p.space not in self.blocked:
                self.blocked[p.space] = skip

    def _set(self, tensor: str, info: TensorInfo) -> None:
        self.info[tensor] = info
        if tensor in self.index.graph_outputs:
            self._block(info.layout, Skip("graph-output", f"tensor {tensor!r} is a graph output", tensor=tensor))
        if tensor in self.index.subgraph_names:
            self._block(info.layout, Skip("subgraph", f"tensor {tensor!r} is used inside a subgraph", tensor=tensor))

    def _produce(self, i: int) -> None:
        shape = SimpleNamespace(size=None, features=None, blocks=1)
        try:
            slices = _producer(self.index, i, shape)
        except NotPrunable as e:
            self.failed[i] = (e.skip, shape.size)
            return
        self.uf.add(i, shape.size)
        if shape.blocks > 1:
            self.blocks_of[i] = shape.blocks
        self.features_of[i] = shape.features
        layout = (Piece(i, 0, shape.size),)
        self.placed += [(s, layout) for s in slices]
        self._set(self.index.nodes[i].output[0], TensorInfo(layout, shape.features.axis, shape.features.rank))

    def _consume(self, i: int, position: int, tensor: str, repeat: int = 1, via: str | None = None,
                 info: TensorInfo | None = None) -> None:
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
        consumer, weight_slice = _consumer(index, i, position, tensor, info.features(), repeat, via)
        consumer.tap = tensor
        self.reads.append((consumer, info.layout))
        self.placed.append((weight_slice, info.layout))

    def _flatten(self, i: int, tensor: str) -> None:
        info = self.info[tensor]
        for read in _flatten_reads(self.index, i, tensor):
            if read[0] == "shape":
                self.placed.append((read[1], info.layout))
                continue
            reader, position, _, repeat, via = read
            self._consume(reader, position, tensor, repeat, via, info)
        self.region.append((i, info.layout))
        self.vias.append((self.index.nodes[i].output[0], info.layout))

    def _axis(self, i: int, info: TensorInfo, default: int) -> tuple[int, int | None]:
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

    def _concat(self, i: int) -> None:
        index, node = self.index, self.index.nodes[i]
        label = index.node_name(i)
        known = [self.info[n] for n in node.input if n in self.info]
        axis, rank = self._axis(i, known[0], 0)
        pieces = []
        for name in node.input:
            info = self.info.get(name)
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
        self.region.append((i, tuple(pieces)))
        # the rank stays as the inputs knew it: a Gemm's [N, F] features are "last", not "axis 1"
        self._set(node.output[0], TensorInfo(tuple(pieces), axis, known[0].rank))

    def _split(self, i: int, inputs: list) -> None:
        index, node = self.index, self.index.nodes[i]
        label = index.node_name(i)
        if [pos for pos, _ in inputs] != [0]:
            raise NotPrunable(f"{label} (Split) reads features as its split sizes", "layout", label, inputs[-1][1])
        info = self.info[node.input[0]]
        axis, _ = self._axis(i, info, 0)
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
                self._set(out, TensorInfo(sub(info.layout, at, at + size), info.axis, info.rank))
            at += size
        self.placed.append((SplitSizes(i, tuple(bounds)), info.layout))
        self.region.append((i, info.layout))

    def _slice(self, i: int, inputs: list) -> None:
        index, node = self.index, self.index.nodes[i]
        label = index.node_name(i)
        if [pos for pos, _ in inputs] != [0] or len(node.input) < 3:
            raise NotPrunable(f"{label} (Slice) is not a Slice with constant starts and ends", "layout", label)
        info = self.info[node.input[0]]
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
            self.placed.append((SliceBounds(i, k, lo, hi), info.layout))
        self.region.append((i, info.layout))
        self._set(node.output[0], TensorInfo(layout, info.axis, info.rank))

    def _rows_reshape(self, i: int, tensor: str) -> bool:
        """A Reshape that only merges or splits the axes before the features (a Linear on tokens
        flattened to 2-D and back: transformers' Conv1D, nn.MultiheadAttention's out-projection): the
        features pass through. The target's last entry is the feature count: a constant (rewritten to
        the kept count), -1, a 0 that copies the same axis, or the size of these features' own axis read
        at run time (it follows the pruning). False when it is not such a Reshape."""
        index = self.index
        info = self.info[tensor]
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
        if any(e.dim is not None and self._feature_axis(*e.dim) for e in entries[:-1]):
            return False  # a leading size that is some features' count
        last, k = entries[-1], len(entries) - 1
        label = index.node_name(i)
        own = last.dim is not None and self._feature_axis(*last.dim) and self.info[last.dim[0]].layout == info.layout
        if i in self.runtime_targets and not (own and all(e.value is not None or e.dim is not None
                                                          for e in entries[:-1])):
            return False  # sized at run time by some features' count in a way not shown to follow these
        if last.value == n and last.dim is None:
            if last.place is not None:
                node_, position, j, old, copies = last.place
                self.placed.append((CountEntry(node_, position, j, old, 1, copies), info.layout))
            else:  # a target Concat shared with other Reshapes: this one gets a copy of its own
                private = _private_target(index, i, k)
                if private is None:
                    raise NotPrunable(f"{label} reshapes the rows of {tensor!r} with a feature count it cannot "
                                      "rewrite (computed at run time)", "shape-read", label, tensor)
                self.placed.append((private, info.layout))
        elif last.dim is not None:  # the size of an axis read at run time: it must be these features' own
            if not own:
                return False
        elif not (last.value == -1 or (last.value == 0 and k == len(src) - 1)):
            return False
        self.runtime_targets.pop(i, None)  # sized by these features' Shape: claimed
        self.region.append((i, info.layout))
        self._set(node.output[0], TensorInfo(info.layout, -1, None))  # features last, at any rank
        return True

    def _rows_transpose(self, i: int, tensor: str) -> bool:
        """A Transpose that keeps the features on the last axis (sequence-first to batch-first and back):
        the features pass through. False when it moves them."""
        info = self.info[tensor]
        shape = self.index.shape(tensor)
        if info.axis != -1 or info.channel_first or shape is None:
            return False
        rank = len(shape)
        perm = self.index.attr(i, "perm") or list(reversed(range(rank)))
        if len(perm) != rank or perm[-1] != rank - 1:
            return False
        self.region.append((i, info.layout))
        self._set(self.index.nodes[i].output[0], TensorInfo(info.layout, -1, None))
        return True

    def _feature_axis(self, tensor: str, axis: int) -> bool:
        """Whether `axis` of `tensor` is the feature axis of a group's tensor (its size follows pruning)."""
        info = self.info.get(tensor)
        shape = self.index.shape(tensor)
        if info is None or shape is None:
            return False
        rank = len(shape)
        return (axis + rank if axis < 0 else axis) == info.axis + rank

    def _pass_through(self, i: int, inputs: list) -> None:
        index, node = self.index, self.index.nodes[i]
        label = index.node_name(i)
        base = self.info[inputs[0][1]]
        for _, name in inputs[1:]:
            other = self.info[name]
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
                    why = self.uf.union(a.space, a.lo, b.space, b.lo, a.width)
                    if why:
                        raise NotPrunable(f"{label} ({node.op_type}) {why}", "coupling", label, name)
        features = base.features()
        if base.rank is None:
            shape = index.shape(inputs[0][1])
            features = Features(features.n, features.axis, len(shape) if shape is not None else None)
        slices = handler_for(node)(index, i, {name for _, name in inputs}, features)
        self.placed += [(s, base.layout) for s in slices]
        self.region.append((i, base.layout))
        for out in index.used_outputs(i)[:1]:
            self._set(out, TensorInfo(base.layout, base.axis, base.rank))

    # ---- the groups -----------------------------------------------------------------------

    def _build(self) -> list[NeuronGroup]:
        index, uf = self.index, self.uf
        ids: dict[int, str] = {}
        for i, node in enumerate(index.nodes):
            if i in uf.size or i in self.failed:
                ids[i] = node_id(index, i, set(ids.values()))
        members: dict[int, list[int]] = {}
        for space in sorted(uf.size):
            members.setdefault(uf.find(space)[0], []).append(space)
        derived = self._derived(members)
        for space in derived:
            members.pop(uf.find(space)[0], None)
        group_of = {root: ids[m[0]] for root, m in members.items()}

        def resolve(layout: tuple) -> tuple:
            out = []
            for p in layout:
                if p.space is None:
                    out.append(Segment(None, 0, p.width))
                elif p.space in derived:  # K/V head g: the first head_dim neurons of query group g
                    target, r, d = derived[p.space]
                    for g in range(p.lo // d, -(-p.hi // d)):
                        a, b = max(p.lo, g * d), min(p.hi, (g + 1) * d)
                        out += resolve((Piece(target, g * r * d + a - g * d, g * r * d + b - g * d),))
                else:
                    root, offset = uf.find(p.space)
                    out.append(Segment(group_of[root], p.lo + offset, p.hi + offset))
            return tuple(out)

        def by_group(pairs) -> dict[str, list]:
            """Each thing under every group its resolved layout touches (in the order given)."""
            out: dict[str, list] = {}
            for thing, layout in pairs:
                for gid in dict.fromkeys(s.group for s in layout if s.group is not None):
                    out.setdefault(gid, []).append(thing)
            return out

        balanced: dict[str, list] = {}
        for consumer, layout in self.reads:
            if consumer.blocks > 1:
                try:
                    blocks = _consumer_blocks(index, consumer, resolve(layout))
                except NotPrunable as e:
                    self._block(layout, e.skip)
                    continue
                balanced.setdefault(blocks[0][0], []).append(tuple((lo, hi) for _, lo, hi in blocks))
        for space, g in self.blocks_of.items():
            root, offset = uf.find(space)
            per = uf.size[space] // g
            balanced.setdefault(group_of[root], []).append(
                tuple((offset + b * per, offset + (b + 1) * per) for b in range(g)))

        resolved = [(item, resolve(layout)) for item, layout in self.placed]
        placed = by_group((Placed(item, layout), layout) for item, layout in resolved)
        for consumer, layout in self.reads:
            consumer.layout = resolve(layout)
        reads = by_group((c, c.layout) for c, _ in self.reads)
        region = by_group((i, resolve(layout)) for i, layout in self.region)
        attention = by_group((i, resolve(layout)) for i, layout in self.attention_nodes)
        entries: dict[tuple, set] = {}  # a shape constant rewritten for two groups could not follow both
        for item, layout in resolved:
            if isinstance(item, CountEntry):
                entries.setdefault((item.node, item.input), set()).update(s.group for s in layout if s.group)
        shared_entry = {gid: key for key, gids in entries.items() if len(gids) > 1 for gid in gids}
        tensors = by_group([(name, resolve(info.layout)) for name, info in self.info.items()]
                           + [(name, resolve(layout)) for name, layout in self.vias])

        groups = []
        for i in sorted(ids):
            if i in derived:
                continue  # its neurons belong to the query heads' group
            if i in self.failed:
                skip, size = self.failed[i]
                groups.append(NeuronGroup(index.node_name(i), index.nodes[i].op_type, size, reason=skip, id=ids[i],
                                          producer_node=i, producers=[(i, 0, size)] if size else [],
                                          producer_names=[index.node_name(i)]))
                continue
            root = uf.find(i)[0]
            if members[root][0] != i:
                continue
            gid = group_of[root]
            spaces = members[root]
            g = NeuronGroup(index.node_name(i), index.nodes[i].op_type, uf.size[root], id=gid, producer_node=i)
            g.producers = [(m, uf.find(m)[1], uf.size[m]) for m in spaces]
            extra = [m for m, (t, _, _) in derived.items() if uf.find(t)[0] == root]
            g.derived = [(m, resolve((Piece(m, 0, uf.size[m]),))) for m in extra]
            g.producer_names = [index.node_name(m) for m in spaces + extra]
            spaces = spaces + extra
            f = self.features_of[root]
            g.features = Features(uf.size[root], f.axis, f.rank)
            g.slices = placed.get(gid, [])
            mine = sorted(reads.get(gid, []), key=lambda c: c.node)
            g.consumer_info = {c.node: c for c in mine}
            g.consumer_nodes = [c.node for c in mine]
            g.consumers = [index.node_name(c.node) for c in mine]
            g.taps = list(dict.fromkeys(c.tap for c in mine))
            g.tap = g.taps[0] if g.taps else None
            nodes = region.get(gid, [])
            g.region = [index.node_name(n) for n in nodes]
            g.region_ops = [index.nodes[n].op_type for n in nodes]
            g.tensors = sorted(set(tensors.get(gid, [])))
            g.nonempty = _nonempty(g)
            dims = set().union(*(self.head_dims.get(m, set()) for m in spaces))
            repeats = {derived[m][1] for m in extra}
            if dims:
                g.kind, g.head_dim, g.unit = "heads", min(dims), min(dims) * max(repeats or {1})
                g.attention = sorted(set(attention.get(gid, [])))
            g.balanced = list(dict.fromkeys(balanced.get(gid, [])))
            blocks = [m for m in spaces if m in self.blocked]
            if blocks:
                skip = self.blocked[blocks[0]]
                if len(spaces) > 1:
                    others = ", ".join(index.node_name(m) for m in spaces)
                    skip = Skip(skip.kind, f"{skip.message} (channels shared by {others})", skip.node, skip.tensor)
                g.reason = skip
            elif not mine:
                g.reason = Skip("no-consumer", "no Gemm/MatMul/Conv consumes the group's features")
            elif len(dims) > 1 or len(repeats) > 1 or any(o % g.unit or n % g.unit for _, o, n in g.producers):
                g.reason = Skip("attention", f"heads of different sizes ({sorted(dims)}) or key/value heads repeated "
                                f"differently ({sorted(repeats)}) share one set of neurons")
            elif gid in shared_entry:
                node, _ = shared_entry[gid]
                g.reason = Skip("attention", f"a shape constant of {index.node_name(node)} counts the heads of "
                                "more than one group", index.node_name(node))
            groups.append(g)
        return groups


    def _derived(self, members: dict) -> dict:
        """The key/value spaces of grouped-query attention, each derived from one query space: valid when
        the K/V space shares its neurons with nothing else (else both are blocked, with the reason)."""
        out = {}
        for space, (target, r, d) in self.derived.items():
            alone = members.get(self.uf.find(space)[0]) == [space]
            if alone and target not in self.derived and self.uf.find(target)[0] != self.uf.find(space)[0]:
                out[space] = (target, r, d)
                continue
            skip = Skip("attention", f"the key/value heads of {self.index.node_name(space)} are shared with "
                        "more than the query heads they serve", self.index.node_name(space))
            self.blocked.setdefault(space, skip)
            self.blocked.setdefault(target, skip)
        return out

def _consumer_blocks(index: GraphIndex, consumer: Consumer, layout: tuple) -> list[tuple[str, int, int]]:
    """(group, lo, hi) of each channel block of a grouped Conv's input: each block must be one piece of
    one group, the same group for all, so that one mask can keep equal counts in every block."""
    per = sum(s.width for s in layout) // consumer.blocks
    label = index.node_name(consumer.node)
    out = []
    for b in range(consumer.blocks):
        part = _joined(sub(layout, b * per, (b + 1) * per))
        if any(s.group is None for s in part):
            raise NotPrunable(f"{label} (group={consumer.blocks}) reads features from outside every group in "
                              f"channel block {b}: its blocks must keep equal counts, and those cannot be cut",
                              "grouped-conv", label, consumer.tap)
        if len(part) != 1 or part[0].group != layout[0].group:
            raise NotPrunable(f"{label} (group={consumer.blocks}) reads channel blocks made of several groups' "
                              "neurons (or of non-contiguous pieces): equal kept counts per block would tie "
                              "separate keep-masks, which is not done", "grouped-conv", label, consumer.tap)
        out.append((part[0].group, part[0].lo, part[0].hi))
    return out


def _joined(segments: tuple) -> tuple:
    """Adjacent segments that continue each other in one group's index space, as one."""
    out = []
    for s in segments:
        if out and s.group is not None and out[-1].group == s.group and out[-1].hi == s.lo:
            out[-1] = Segment(s.group, out[-1].lo, s.hi)
        else:
            out.append(s)
    return tuple(out)


def _nonempty(g: NeuronGroup) -> list[tuple[int, int]]:
    """The ranges of the group's neurons of which one must stay: every part of a Split and every Slice
    whose features start in this group (an empty part would be a zero-size tensor)."""
    out = []
    for placed in g.slices:
        for lo, hi in placed.item.nonempty():
            segments = sub(placed.layout, lo, hi)
            if any(s.group is None for s in segments) or not segments or segments[0].group != g.id:
                continue  # kept anyway, or another group's duty
            out.append((segments[0].lo, segments[0].hi))
    return sorted(set(out))


def _producer(index: GraphIndex, i: int, group) -> list[ConstSlice]:
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
        group.blocks = spec.blocks(node)
        if group.size % group.blocks:
            raise NotPrunable(f"{label}: {group.size} output channels do not split into {group.blocks} blocks",
                              "grouped-conv", label)
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
    blocks = spec.blocks(node) if spec.channels_first else 1
    if view.shape[axis] * blocks != rows or view.shape[spec.out_axis(node)] % blocks:
        raise NotPrunable(f"{label}: weight {view.name!r} has {view.shape[axis]} input rows for "
                          f"{features.n} features" + (f" x {repeat} positions" if repeat > 1 else "")
                          + (f" in {blocks} groups" if blocks > 1 else ""), "consumer", label, tensor)
    s = constant_slice(view, axis)
    info = Consumer(i, view, node.op_type, repeat, via, blocks=blocks)
    if blocks > 1:
        # output row o reads the input block o // (C_out / group): a per-block gather of axis 1
        return info, BlockSlice(s.node, s.input, s.axis, view.axes[spec.out_axis(node)], blocks, s.chain, consumer=i)
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
def node_id(index: GraphIndex, i: int, taken: set = frozenset()) -> str:
    """A node's name where it names only this node; else its name (or op type) and its node index."""
    name = index.nodes[i].name
    if name and index.name_count(name) == 1:
        return name
    candidate = f"{name or index.nodes[i].op_type}#{i}"
    while candidate in taken or index.name_count(candidate):  # a node may be literally named "Gemm#3"
        candidate += f"#{i}"
    return candidate


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


def _is_depthwise(index: GraphIndex, i: int) -> bool:
    view = index.view(i, 1) if len(index.nodes[i].input) > 1 else None
    group = index.attr(i, "group", 1)
    return view is not None and group > 1 and len(view.shape) >= 3 and view.shape[1] == 1 and view.shape[0] == group


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



"""Attention heads in decomposed attention: following Q, K and V from the head split to the merge.

A Reshape that splits a projection's features ``[..., H*D]`` into ``[..., H, D]`` starts a *head
tensor*: each of its axes is tagged "h" (the heads), "d" (a head's own features) or None. Head
tensors move through Transposes, elementwise ops that broadcast over the heads (the scale, the
attention mask, RoPE's cos/sin), Softmax over an axis that is not the heads, Slice/Split/Concat of
other axes, and MatMuls of two head tensors whose heads sit on the same batch axis (``Q Kᵀ`` and
``P V``): those tie the projections' neuron spaces head by head. The Reshape that merges
``[..., H, D]`` back into ``[..., H*D]`` turns the head tensor into features again, read by the
out-projection as any consumer reads a group (statistics are taken there: each head's slice of
the merged context). Head groups are cut in whole heads (``unit`` = D); every Reshape-target
entry that counts heads or ``heads x head_dim`` (a constant, or a value a Concat computes from a
static shape) is rewritten; the scale is not touched. Anything else blocks the spaces, with the
reason: a graph output, an op that mixes heads, a KV cache from outside, a per-head constant.

Example (PyTorch, TorchScript or dynamo export)::

    q = Reshape(Add(MatMul(x, Wq), bq), [B, S, H, D]) -> Transpose(0, 2, 1, 3)      tags (., h, ., d)
    k = Reshape(Add(MatMul(x, Wk), bk), [B, S, H, D]) -> Transpose(0, 2, 3, 1)      tags (., h, d, .)
    p = Softmax(Div(MatMul(q, k), sqrt(D)))                                         ties Wq with Wk
    c = Reshape(Transpose(MatMul(p, v), (0, 2, 1, 3)), [B, S, H*D]) -> MatMul(c, Wo) ties Wv; Wo reads c
"""

from __future__ import annotations

from dataclasses import dataclass, replace


from ..graph.fold import folded, shape_dims, shape_targets, target_entries
from ..ops import CountEntry, NotPrunable, domain_of
from ..ops.elementwise import BROADCASTS, HEAD_OPS
from .layout import aligned, width


@dataclass(frozen=True)
class HeadInfo:
    layout: tuple  # of Piece: the H*D features of the projections, head h = features [h*D, (h+1)*D)
    heads: int
    dim: int
    tags: tuple    # per axis of the tensor: "h", "d", "r" (a copy axis next to the heads), None
    repeat: int = 1  # grouped-query attention: each head of `layout` stands for `repeat` heads in a row


NORMALISE = ("Softmax", "LogSoftmax")


def dim_is_one(index, name: str, back: int, depth: int = 12) -> bool:
    """Whether axis `back` from the right of a tensor from outside the heads is 1 (or absent) whatever
    the inputs: from its inferred shape, or through broadcasting ops and Expands by constant shapes."""
    shape = index.constant_shape(name) if index.is_constant(name) else index.shape(name)
    if shape is not None:
        if len(shape) < back or shape[-back] == 1:
            return True
        if isinstance(shape[-back], int):
            return False
    p = index.producer.get(name)
    if p is None or depth == 0:
        return False
    node = index.nodes[p]
    if node.op_type in BROADCASTS and node.domain in ("", "ai.onnx"):
        return all(dim_is_one(index, x, back, depth - 1) for x in node.input if x)
    if node.op_type == "Expand" and len(node.input) == 2:
        target = folded(index, node.input[1])
        if target is None:
            return False
        target = target.reshape(-1)
        return (len(target) < back or int(target[-back]) == 1) and dim_is_one(index, node.input[0], back, depth - 1)
    return False


def head_axis(tags: tuple) -> int:
    """The axis holding the heads: "h", or "bh" (batch and heads folded into one axis, heads inner)."""
    return next(a for a, t in enumerate(tags) if t in ("h", "bh"))


class HeadWalk:
    """The head-tensor part of group discovery (mixed into groups.discover._Discovery)."""

    def _head_split(self, i: int, tensor: str) -> bool:
        """A Reshape of features [..., H*D] into [..., H, D]: start a head tensor. False if it is no split."""
        index = self.index
        label = index.node_name(i)
        info = self.info[tensor]
        n = width(info.layout)
        entries = target_entries(index, i, 2)
        if entries is None or len(entries) < 2 or info.axis != -1:
            return False
        heads, dim = entries[-2], entries[-1]
        if dim.value is None or dim.value <= 0 or n % dim.value:
            return False
        count = n // dim.value
        if heads.value not in (count, -1) or count < 2:
            return False
        if heads.value == count and heads.place is None:
            raise NotPrunable(f"{label} splits features into heads with a count it cannot rewrite (computed at run "
                              "time, or a target shared with other Reshapes)", "attention", label, tensor)
        if heads.value == count:
            node, position, k, old, copies = heads.place
            self.placed.append((CountEntry(node, position, k, old, dim.value, copies), info.layout))
        for p in info.layout:
            if p.space is not None:
                self.head_dims.setdefault(p.space, set()).add(dim.value)
        tags = (None,) * (len(entries) - 2) + ("h", "d")
        self._set_head(index.nodes[i].output[0], HeadInfo(info.layout, count, dim.value, tags))
        return True

    def _set_head(self, tensor: str, info: HeadInfo) -> None:
        self.heads[tensor] = info
        self.vias.append((tensor, info.layout))
        if tensor in self.index.graph_outputs or tensor in self.index.subgraph_names:
            raise NotPrunable(f"head tensor {tensor!r} is a graph output or read in a subgraph", "graph-output",
                              tensor=tensor)

    def _head_visit(self, i: int, inputs: list) -> None:
        """A node reading head tensors (at `inputs`: (position, name))."""
        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        op = node.op_type if domain_of(node) == "" else None
        position, tensor = inputs[0]
        first = self.heads[tensor]
        outs = index.used_outputs(i)
        if op == "Transpose":
            perm = index.attr(i, "perm") or list(reversed(range(len(first.tags))))
            tags = tuple(first.tags[p] for p in perm)
            self._set_head(node.output[0], replace(first, tags=tags))
        elif op == "Reshape" and position == 0:
            self.runtime_targets.pop(i, None)
            if "r" in first.tags:
                self._head_repeat_merge(i, tensor)
            else:
                entries = target_entries(index, i, 1)
                if first.tags[-2:] == ("h", "d") and entries is not None and (
                        len(entries) == len(first.tags) - 1
                        or 2 <= len(entries) < len(first.tags) - 1 and self._rows_only(entries[:-1])):
                    self._head_merge(i, tensor, entries)  # (with the rows flattened too: [B, S, H, D] -> [B*S, E])
                else:
                    self._head_refold(i, tensor, entries)
        elif op == "MatMul":
            self._head_matmul(i)
        elif op == "Shape":
            self._shape_read(i, tensor, [a for a, t in enumerate(first.tags) if t in ("h", "bh")])
        elif op in NORMALISE:
            axis = index.attr(i, "axis", -1 if index.opset >= 13 else 1)
            rank = len(first.tags)
            axis = axis + rank if axis < 0 else axis
            h = head_axis(first.tags)
            if (h == axis) if index.opset >= 13 else (h >= axis):
                raise NotPrunable(f"{label} ({op}) normalises across the heads of {tensor!r}", "attention", label,
                                  tensor)
            self._head_same(i, first, outs)
        elif op in HEAD_OPS:
            self._head_elementwise(i, inputs, first, outs)
        elif op in ("Slice", "Split") and position == 0:
            self._head_cut(i, first, outs)
        elif op == "Attention":
            self._onnx_attention(i, inputs)
        elif op == "Unsqueeze" and position == 0:
            self._head_unsqueeze(i, first)
        elif op == "Expand" and position == 0:
            self._head_expand(i, first)
        elif op == "Concat":
            self._head_concat(i, first)
        else:
            what = f"{node.domain}.{node.op_type}" if op is None else op
            raise NotPrunable(f"head tensor {tensor!r} reaches {label} ({what}), which onnxprune does not follow "
                              "through attention", "attention", label, tensor)

    def _head_same(self, i: int, info: HeadInfo, outs: list) -> None:
        for out in outs[:1]:
            self._set_head(out, info)

    def _tie_heads(self, i: int, a: HeadInfo, b: HeadInfo, name: str) -> None:
        label = self.index.node_name(i)
        if a.repeat != b.repeat:
            return self._tie_groups(i, a, b, name)
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

    def _tie_groups(self, i: int, a: HeadInfo, b: HeadInfo, name: str) -> None:
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

    def _head_elementwise(self, i: int, inputs: list, first: HeadInfo, outs: list) -> None:
        index = self.index
        label = index.node_name(i)
        node = index.nodes[i]
        rank = len(first.tags)
        for _, name in inputs[1:]:
            other = self.heads[name]
            if other.tags != first.tags:
                raise NotPrunable(f"{label} combines head tensors whose axes do not line up", "attention", label,
                                  name)
            self._tie_heads(i, first, other, name)
        known = {name for _, name in inputs}
        for name in node.input:
            if not name or name in known:
                continue
            if name in self.info:
                raise NotPrunable(f"{label} combines heads with another group's features", "attention", label, name)
            shape = index.constant_shape(name) if index.is_constant(name) else index.shape(name)
            if shape is not None and len(shape) > rank:
                raise NotPrunable(f"{label} broadcasts heads against a tensor of higher rank", "attention", label,
                                  name)
            for axis, tag in enumerate(first.tags):
                if tag in ("h", "bh") and not dim_is_one(index, name, rank - axis):
                    raise NotPrunable(f"{label} combines heads with {name!r} of shape "
                                      f"{list(shape) if shape is not None else 'unknown'}, which may differ per head "
                                      "(a per-head constant or a tensor from outside)", "attention", label, name)
        self._head_same(i, first, outs)

    def _head_cut(self, i: int, info: HeadInfo, outs: list) -> None:
        """Slice or Split along axes that are not the heads."""
        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        rank = len(info.tags)
        h = head_axis(info.tags)
        if node.op_type == "Split":
            axes = [index.attr(i, "axis", 0)]
        else:
            if len(node.input) > 3 and node.input[3]:
                view = index.view(i, 3)
                if view is None:
                    raise NotPrunable(f"{label} slices head tensors along axes computed at run time", "attention",
                                      label)
                axes = [int(v) for v in index.constant_value(view.name).reshape(-1)]
            else:
                starts = index.shape(node.input[1]) if len(node.input) > 1 else None
                if starts is None or not isinstance(starts[0], int):
                    raise NotPrunable(f"{label} slices head tensors along axes not known", "attention", label)
                axes = list(range(starts[0]))
        if any((a + rank if a < 0 else a) == h for a in axes):
            raise NotPrunable(f"{label} ({node.op_type}) cuts the heads", "attention", label)
        for out in outs:
            self._set_head(out, info)

    def _head_concat(self, i: int, first: HeadInfo) -> None:
        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        rank = len(first.tags)
        axis = index.attr(i, "axis", 0)
        if (axis + rank if axis < 0 else axis) == head_axis(first.tags):
            raise NotPrunable(f"{label} (Concat) joins along the heads", "attention", label)
        for name in node.input:
            if name not in self.heads:
                raise NotPrunable(f"{label} (Concat) joins heads with {name!r} from outside (a KV cache?)",
                                  "attention", label, name)
            other = self.heads[name]
            if other.tags != first.tags:
                raise NotPrunable(f"{label} (Concat) joins head tensors whose axes differ", "attention", label, name)
            self._tie_heads(i, first, other, name)
        self._head_same(i, first, self.index.used_outputs(i))

    def _head_matmul(self, i: int) -> None:
        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        a_name, b_name = node.input[0], node.input[1]
        if a_name not in self.heads or b_name not in self.heads:
            other = b_name if a_name in self.heads else a_name
            raise NotPrunable(f"{label} (MatMul) multiplies heads by {other!r}, which is not a head tensor",
                              "attention", label, other)
        a, b = self.heads[a_name], self.heads[b_name]
        if {"h", "bh"} & set(a.tags[-2:] + b.tags[-2:]):
            raise NotPrunable(f"{label} (MatMul) contracts or multiplies along the heads", "attention", label)
        ha, hb = head_axis(a.tags) - len(a.tags), head_axis(b.tags) - len(b.tags)
        if a.tags[ha] != b.tags[hb]:
            raise NotPrunable(f"{label} (MatMul) pairs heads folded into the batch with heads that are not",
                              "attention", label)
        if ha != hb:
            raise NotPrunable(f"{label} (MatMul) pairs heads on different axes", "attention", label)
        self._tie_heads(i, a, b, b_name)
        batch = a.tags[:-2] if len(a.tags) >= len(b.tags) else b.tags[:-2]
        tags = batch + (a.tags[-2], b.tags[-1])
        # the output's heads are the query's (P V: the context is read per query head)
        q = a if a.repeat == 1 else b
        self.attention_nodes.append((i, q.layout))
        for out in index.used_outputs(i)[:1]:
            self._set_head(out, HeadInfo(q.layout, q.heads, q.dim, tags))

    # ---- grouped-query attention: K/V heads repeated for groups of query heads -------------------

    def _head_unsqueeze(self, i: int, info: HeadInfo) -> None:
        """A new axis of size 1; right after the heads it is the axis repeat_kv expands ("r")."""
        index = self.index
        node = index.nodes[i]
        if len(node.input) > 1 and node.input[1]:
            view = index.view(i, 1)
            axes = None if view is None else [int(v) for v in index.constant_value(view.name).reshape(-1)]
        else:
            axes = index.attr(i, "axes")
        if not axes:
            raise NotPrunable(f"{index.node_name(i)} adds axes to heads that are not constant", "attention",
                              index.node_name(i))
        rank = len(info.tags) + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        tags = list(info.tags)
        for a in axes:
            tags.insert(a, None)
        h = head_axis(tuple(tags))
        if len(axes) == 1 and axes[0] == h + 1 and tags[h] == "h" and info.repeat == 1:
            tags[h + 1] = "r"
        self._head_same(i, replace(info, tags=tuple(tags)), index.used_outputs(i))

    def _head_expand(self, i: int, info: HeadInfo) -> None:
        """repeat_kv's Expand of the "r" axis to n_rep copies; any other axis must keep its size (inferred
        shapes). Its shape input becomes a constant of 1s and n_rep, whatever the number of heads."""
        from ..ops import CountEntry

        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        src, dst = index.shape(node.input[0]), index.shape(node.output[0])
        if "r" not in info.tags or src is None or dst is None or not len(src) == len(dst) == len(info.tags):
            raise NotPrunable(f"{label} (Expand) broadcasts head tensor {node.input[0]!r} in a way onnxprune does "
                              "not follow", "attention", label, node.input[0])
        r = info.tags.index("r")
        same = all(a == b and a is not None for k, (a, b) in enumerate(zip(src, dst)) if k != r)
        if not same or not isinstance(dst[r], int) or dst[r] < 1:
            raise NotPrunable(f"{label} (Expand) changes more than the copies of the heads ({list(src)} -> "
                              f"{list(dst)})", "attention", label, node.input[0])
        shape = tuple(dst[r] if k == r else 1 for k in range(len(dst)))
        # divisor 0 marks a fixed value (no count): entry r stays n_rep
        self.placed.append((CountEntry(i, 1, r, shape, 0, False), info.layout))
        self._head_same(i, replace(info, repeat=dst[r]), index.used_outputs(i))

    def _head_repeat_merge(self, i: int, tensor: str) -> None:
        """The Reshape that merges (KV heads, n_rep copies) into the query heads: each KV head's features
        stand for n_rep heads in a row."""
        from ..ops import CountEntry
        from .layout import sub

        index = self.index
        label = index.node_name(i)
        info = self.heads[tensor]
        h = info.tags.index("h")
        refuse = NotPrunable(f"{label} merges repeated key/value heads in a way onnxprune does not follow",
                             "attention", label, tensor)
        if info.tags[h + 1:h + 2] != ("r",) or info.repeat < 1:
            raise refuse
        entries = target_entries(index, i, 0, also=(h,))
        if entries is None or len(entries) != len(info.tags) - 1:
            raise refuse
        count = info.heads * info.repeat
        entry = entries[h]
        if entry.value == count and entry.place is not None:
            node, position, k, old, copies = entry.place
            repeated = tuple(p for g in range(info.heads) for p in sub(info.layout, g * info.dim, (g + 1) * info.dim)
                             for _ in range(info.repeat))
            self.placed.append((CountEntry(node, position, k, old, info.dim, copies), repeated))
        elif not (entry.dim is not None and entry.dim[0] in self.heads):
            raise refuse
        tags = info.tags[:h + 1] + info.tags[h + 2:]
        self._head_same(i, replace(info, tags=tags), index.used_outputs(i))

    def _head_refold(self, i: int, tensor: str, entries: list | None) -> None:
        """A Reshape that folds the heads into the batch axis ([B, H, S, D] -> [-1, S, D]) or unfolds them
        ([B*H, D, S] -> [B, H, D, S]) with sizes read at run time from the head tensors' own Shape: the
        pruned head count follows by itself (dynamo's decomposition of scaled_dot_product_attention)."""
        index = self.index
        label = index.node_name(i)
        info = self.heads[tensor]
        tags = info.tags
        refuse = NotPrunable(f"{label} reshapes head tensor {tensor!r} in a way onnxprune does not follow",
                             "attention", label, tensor)
        if entries is None or any(e.dim is None and e.value != -1 for e in entries):
            raise refuse  # a constant entry might count heads: not followed

        def tag(e):
            if e.dim is None:
                return "rest"
            source, axis = e.dim
            return self.heads[source].tags[axis] if source in self.heads else None

        got = [tag(e) for e in entries]
        if "h" in tags and "h" not in got and "bh" not in got:  # fold: [b.., h, rest..] -> [-1, rest..]
            p = tags.index("h")
            if (any(t is not None for t in tags[:p]) or got[0] != "rest" or len(entries) != len(tags) - p
                    or [e.dim for e in entries[1:]] != [(tensor, a) for a in range(p + 1, len(tags))]):
                raise refuse
            out = ("bh",) + tags[p + 1:]
        elif tags[0] == "bh" and "h" in got:  # unfold: [bh, rest..] -> [b.., h, rest..]
            k = got.index("h")
            source = entries[k].dim[0]
            other = self.heads[source]
            if ([e.dim for e in entries[:k + 1]] != [(source, a) for a in range(k + 1)]
                    or any(t is not None for t in other.tags[:k]) or got[k + 1:] != list(tags[1:])):
                raise refuse
            self._tie_heads(i, info, other, source)
            out = other.tags[:k + 1] + tags[1:]
        else:
            raise refuse
        for name in index.used_outputs(i)[:1]:
            self._set_head(name, replace(info, tags=tuple(out)))

    def _head_merge(self, i: int, tensor: str, entries: list) -> None:
        """A Reshape of [..., H, D] into [..., H*D] (`entries`: its target, one shorter than the head tensor):
        the head tensor becomes features again."""
        from .discover import TensorInfo

        index = self.index
        label = index.node_name(i)
        info = self.heads[tensor]
        n = info.heads * info.dim
        last = entries[-1]
        if last.value == n and last.place is not None:
            node, position, k, old, copies = last.place
            self.placed.append((CountEntry(node, position, k, old, 1, copies), info.layout))
        elif not (last.value == -1 and all(e.value != -1 for e in entries[:-1])):
            raise NotPrunable(f"{label} merges heads into a size onnxprune cannot rewrite "
                              f"({last.value if last.value is not None else 'computed at run time'})", "attention",
                              label, tensor)
        out = index.nodes[i].output[0]
        self.vias.append((out, info.layout))
        # rows flattened as well: features last at any rank (a 2-D rank would read as channels first)
        self._set(out, TensorInfo(info.layout, -1, len(entries) if len(entries) == len(info.tags) - 1 else None))

    def _rows_only(self, entries: list) -> bool:
        """Whether leading target entries size only rows: -1, fixed sizes, or sizes read from tensors that
        carry no heads (a merge that also flattens the tokens)."""
        return all(e.value == -1 or (e.value is not None and e.value > 0)
                   or (e.dim is not None and e.dim[0] not in self.heads) for e in entries)

    def _shape_read(self, i: int, tensor: str, forbidden: list[int]) -> None:
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
        # heads or rows of these features (checked when they are reached: `_head_visit`, `_rows_reshape`;
        # a target left unclaimed blocks the group at the end)
        targets = shape_targets(index, out)
        if targets is None:
            raise reason
        layout = self.heads[tensor].layout if tensor in self.heads else self.info[tensor].layout
        for node in targets:
            self.runtime_targets.setdefault(node, (layout, reason.skip))

    # ---- fused attention ----------------------------------------------------------------------------

    def _onnx_attention(self, i: int, inputs: list) -> None:
        """ai.onnx Attention (opset 23; dynamo's scaled_dot_product_attention) on 4-D Q, K, V [B, H, S, D]:
        ties Q with K and V head by head (key/value heads serving groups of query heads with fewer K/V
        heads); its output carries the query heads. A cache or the Q·Kᵀ output is refused."""
        from ..ops import CountAttribute

        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        where = dict(inputs)
        refuse = NotPrunable(f"{label} (Attention) reads Q, K and V in a form onnxprune does not follow (3-D "
                             "inputs, or tensors that are not head tensors)", "attention", label)
        if sorted(p for p in where if p < 3) != [0, 1, 2] or any(p >= 3 for p in where):
            raise refuse
        q, k, v = (self.heads[where[p]] for p in (0, 1, 2))
        if any(t.tags != (None, "h", None, "d") or t.repeat != 1 for t in (q, k, v)):
            raise refuse
        for position in (4, 5):
            if len(node.input) > position and node.input[position]:
                raise NotPrunable(f"{label} (Attention) takes a key/value cache", "attention", label,
                                  node.input[position])
        if len(index.used_outputs(i)) > 1 or not node.output[0] or node.output[0] not in index.used_outputs(i):
            raise NotPrunable(f"{label} (Attention) returns a cache or its Q·Kᵀ", "attention", label)
        if len(node.input) > 3 and node.input[3] and not dim_is_one(index, node.input[3], 3):
            raise NotPrunable(f"{label} (Attention) adds a mask that may differ per head", "attention", label,
                              node.input[3])
        if k.heads != v.heads or q.heads % k.heads:
            raise refuse
        r = q.heads // k.heads
        for other, name in ((k, where[1]), (v, where[2])):
            self._tie_heads(i, q, replace(other, repeat=r) if r > 1 else other, name)
        for attr, info in (("q_num_heads", q), ("kv_num_heads", k)):
            if index.attr(i, attr) is not None:
                self.placed.append((CountAttribute(i, attr, info.dim), info.layout))
        self.attention_nodes.append((i, q.layout))
        self._set_head(node.output[0], replace(q, tags=(None, "h", None, "d")))

    # ---- fused attention (onnxruntime's com.microsoft ops) ----------------------------------------

    def _fused_attention(self, i: int) -> None:
        """com.microsoft.Attention: a packed [E, 3*H*D] weight (Q | K | V) and bias, `num_heads`; its output,
        the merged context [B, S, H*D], is a space of H heads that the out-projection consumes."""
        from ..ops import CountAttribute, Features, constant_slice
        from .discover import TensorInfo
        from .layout import Piece

        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        heads = index.attr(i, "num_heads")
        weight = index.view(i, 1) if len(node.input) > 1 else None
        if weight is None or len(weight.shape) != 2 or index.view_shared(weight):
            raise NotPrunable(f"{label} (Attention): its packed weight is not a constant of its own", "weight", label)
        sizes = index.attr(i, "qkv_hidden_sizes")
        total = weight.shape[1]
        if sizes is not None and (len(set(sizes)) != 1 or sum(sizes) != total):
            raise NotPrunable(f"{label} (Attention): Q, K and V of different sizes {list(sizes)}", "attention", label)
        n = total // 3
        if total % 3 or not heads or n % heads:
            raise NotPrunable(f"{label} (Attention): {total} packed columns for {heads} heads", "attention", label)
        for position, what in ((4, "a past key/value cache"), (5, "a per-head attention bias"),
                               (6, "a past sequence length"), (7, "a cache")):
            if len(node.input) > position and node.input[position]:
                raise NotPrunable(f"{label} (Attention) takes {what}", "attention", label, node.input[position])
        if len(index.used_outputs(i)) > 1 or not node.output[0]:
            raise NotPrunable(f"{label} (Attention) returns a key/value cache", "attention", label)
        if index.attr(i, "do_rotary", 0) or index.attr(i, "past_present_share_buffer", 0):
            raise NotPrunable(f"{label} (Attention) uses rotary embeddings or a shared cache", "attention", label)
        dim = n // heads
        layout = (Piece(i, 0, n),)
        packed = layout * 3  # the same heads in the Q, K and V columns
        slices = [(constant_slice(weight, 1), packed), (CountAttribute(i, "num_heads", dim), layout)]
        if sizes is not None:
            slices.append((CountAttribute(i, "qkv_hidden_sizes", 1), layout))
        bias = index.view(i, 2) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2]:
            if bias is None or bias.shape != (total,) or index.view_shared(bias):
                raise NotPrunable(f"{label} (Attention): its bias is not a constant of {total} values", "bias", label)
            slices.append((constant_slice(bias, 0), packed))
        self.uf.add(i, n)
        self.features_of[i] = Features(n)
        self.head_dims[i] = {dim}
        self.placed += slices
        self.attention_nodes.append((i, layout))
        self._set(node.output[0], TensorInfo(layout, -1, 3))

    def _multi_head_attention(self, i: int, inputs: list) -> None:
        """com.microsoft.MultiHeadAttention fed by separate Q, K and V projections ([B, S, H*D] each):
        ties the three head by head; its output (the merged context) carries V's heads."""
        from ..ops import CountAttribute, constant_slice
        from .discover import TensorInfo

        index = self.index
        node = index.nodes[i]
        label = index.node_name(i)
        heads = index.attr(i, "num_heads")
        where = dict((pos, name) for pos, name in inputs)
        if sorted(where) != [0, 1, 2]:
            raise NotPrunable(f"{label} (MultiHeadAttention) does not read separate Q, K and V projections",
                              "attention", label)
        q, k, v = (self.info[where[p]] for p in (0, 1, 2))
        if any(t.axis != -1 or (t.rank not in (None, 3)) for t in (q, k, v)):
            raise NotPrunable(f"{label} (MultiHeadAttention) reads packed or 4-D Q/K/V", "attention", label)
        n = width(q.layout)
        if width(k.layout) != n or width(v.layout) != n or not heads or n % heads:
            raise NotPrunable(f"{label} (MultiHeadAttention): Q, K, V widths {width(q.layout)}, {width(k.layout)}, "
                              f"{width(v.layout)} for {heads} heads", "attention", label)
        for position in range(4, len(node.input)):
            if node.input[position] and position != 4:  # 4: key padding mask, shared by the heads
                raise NotPrunable(f"{label} (MultiHeadAttention) takes a per-head bias or a cache "
                                  f"({node.input[position]!r})", "attention", label, node.input[position])
        if len(index.used_outputs(i)) > 1:
            raise NotPrunable(f"{label} (MultiHeadAttention) returns a key/value cache", "attention", label)
        dim = n // heads
        infos = [HeadInfo(t.layout, heads, dim, (None, None, "h")) for t in (q, k, v)]
        self._tie_heads(i, infos[0], infos[1], where[1])
        self._tie_heads(i, infos[0], infos[2], where[2])
        for t in (q, k, v):
            for p in t.layout:
                if p.space is not None:
                    self.head_dims.setdefault(p.space, set()).add(dim)
        self.placed.append((CountAttribute(i, "num_heads", dim), v.layout))
        if len(node.input) > 3 and node.input[3]:
            bias = index.view(i, 3)
            if bias is None or bias.shape != (3 * n,) or index.view_shared(bias):
                raise NotPrunable(f"{label} (MultiHeadAttention): its bias is not a constant of {3 * n} values",
                                  "bias", label, node.input[3])
            self.placed.append((constant_slice(bias, 0), q.layout + k.layout + v.layout))
        self.attention_nodes.append((i, v.layout))
        self._set(node.output[0], TensorInfo(v.layout, -1, 3))

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

Each op the head walk follows is a handler registered by (domain, op_type) with ``head_op``
(ops/registry.py); the fused attention ops are in attention.py.

Example (PyTorch, TorchScript or dynamo export)::

    q = Reshape(Add(MatMul(x, Wq), bq), [B, S, H, D]) -> Transpose(0, 2, 1, 3)      tags (., h, ., d)
    k = Reshape(Add(MatMul(x, Wk), bk), [B, S, H, D]) -> Transpose(0, 2, 3, 1)      tags (., h, d, .)
    p = Softmax(Div(MatMul(q, k), sqrt(D)))                                         ties Wq with Wk
    c = Reshape(Transpose(MatMul(p, v), (0, 2, 1, 3)), [B, S, H*D]) -> MatMul(c, Wo) ties Wv; Wo reads c
"""

from __future__ import annotations

from dataclasses import replace

from ..graph.fold import folded, target_entries
from ..ops import CountEntry, NotPrunable, domain_of
from ..ops.elementwise import BROADCASTS, HEAD_OPS
from ..ops.registry import HEAD_WALK, head_op
from .layout import sub, width
from .state import HeadInfo, TensorInfo, Walk

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


def split_heads(walk: Walk, i: int, tensor: str) -> bool:
    """A Reshape of features [..., H*D] into [..., H, D]: start a head tensor. False if it is no split."""
    index = walk.index
    label = index.node_name(i)
    info = walk.info[tensor]
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
        walk.place(CountEntry(node, position, k, old, dim.value, copies), info.layout)
    walk.note_head_dim(info.layout, dim.value)
    tags = (None,) * (len(entries) - 2) + ("h", "d")
    walk.set_heads(index.nodes[i].output[0], HeadInfo(info.layout, count, dim.value, tags))
    return True


def visit_heads(walk: Walk, i: int, inputs: list) -> None:
    """A node reading head tensors (at `inputs`: (position, name)): its registered handler, or NotPrunable."""
    handler = HEAD_WALK.handler(walk.index.nodes[i])
    if handler is None or not handler(walk, i, inputs):
        node, label, tensor = walk.index.nodes[i], walk.index.node_name(i), inputs[0][1]
        what = node.op_type if domain_of(node) == "" else f"{node.domain}.{node.op_type}"
        raise NotPrunable(f"head tensor {tensor!r} reaches {label} ({what}), which onnxprune does not follow "
                          "through attention", "attention", label, tensor)


def _same(walk: Walk, i: int, info: HeadInfo, outs: list) -> None:
    for out in outs[:1]:
        walk.set_heads(out, info)


# ---- the ops heads pass through: handler(walk, node, inputs) -> whether it followed the node --------

@head_op("Transpose")
def _transpose(walk: Walk, i: int, inputs: list) -> bool:
    first = walk.heads[inputs[0][1]]
    perm = walk.index.attr(i, "perm") or list(reversed(range(len(first.tags))))
    walk.set_heads(walk.index.nodes[i].output[0], replace(first, tags=tuple(first.tags[p] for p in perm)))
    return True


@head_op("Reshape")
def _reshape(walk: Walk, i: int, inputs: list) -> bool:
    position, tensor = inputs[0]
    if position != 0:
        return False
    first = walk.heads[tensor]
    walk.runtime_targets.pop(i, None)
    if "r" in first.tags:
        _repeat_merge(walk, i, tensor)
        return True
    entries = target_entries(walk.index, i, 1)
    if first.tags[-2:] == ("h", "d") and entries is not None and (
            len(entries) == len(first.tags) - 1
            or 2 <= len(entries) < len(first.tags) - 1 and _rows_only(walk, entries[:-1])):
        _merge(walk, i, tensor, entries)  # (with the rows flattened too: [B, S, H, D] -> [B*S, E])
    else:
        _refold(walk, i, tensor, entries)
    return True


@head_op("MatMul")
def _matmul(walk: Walk, i: int, inputs: list) -> bool:
    """Q Kᵀ or P V: two head tensors whose heads sit on the same batch axis; ties their spaces."""
    index = walk.index
    node = index.nodes[i]
    label = index.node_name(i)
    a_name, b_name = node.input[0], node.input[1]
    if a_name not in walk.heads or b_name not in walk.heads:
        other = b_name if a_name in walk.heads else a_name
        raise NotPrunable(f"{label} (MatMul) multiplies heads by {other!r}, which is not a head tensor",
                          "attention", label, other)
    a, b = walk.heads[a_name], walk.heads[b_name]
    if {"h", "bh"} & set(a.tags[-2:] + b.tags[-2:]):
        raise NotPrunable(f"{label} (MatMul) contracts or multiplies along the heads", "attention", label)
    ha, hb = head_axis(a.tags) - len(a.tags), head_axis(b.tags) - len(b.tags)
    if a.tags[ha] != b.tags[hb]:
        raise NotPrunable(f"{label} (MatMul) pairs heads folded into the batch with heads that are not",
                          "attention", label)
    if ha != hb:
        raise NotPrunable(f"{label} (MatMul) pairs heads on different axes", "attention", label)
    walk.tie_heads(i, a, b, b_name)
    batch = a.tags[:-2] if len(a.tags) >= len(b.tags) else b.tags[:-2]
    tags = batch + (a.tags[-2], b.tags[-1])
    # the output's heads are the query's (P V: the context is read per query head)
    q = a if a.repeat == 1 else b
    walk.attention_nodes.append((i, q.layout))
    for out in index.used_outputs(i)[:1]:
        walk.set_heads(out, HeadInfo(q.layout, q.heads, q.dim, tags))
    return True


@head_op("Shape")
def _shape(walk: Walk, i: int, inputs: list) -> bool:
    tensor = inputs[0][1]
    walk.shape_read(i, tensor, [a for a, t in enumerate(walk.heads[tensor].tags) if t in ("h", "bh")])
    return True


@head_op(*NORMALISE)
def _normalise(walk: Walk, i: int, inputs: list) -> bool:
    index, tensor = walk.index, inputs[0][1]
    first = walk.heads[tensor]
    axis = index.attr(i, "axis", -1 if index.opset >= 13 else 1)
    rank = len(first.tags)
    axis = axis + rank if axis < 0 else axis
    h = head_axis(first.tags)
    if (h == axis) if index.opset >= 13 else (h >= axis):
        label = index.node_name(i)
        raise NotPrunable(f"{label} ({index.nodes[i].op_type}) normalises across the heads of {tensor!r}",
                          "attention", label, tensor)
    _same(walk, i, first, index.used_outputs(i))
    return True


@head_op(*HEAD_OPS)
def _elementwise(walk: Walk, i: int, inputs: list) -> bool:
    """Elementwise ops: other head tensors must line up (and are tied), anything else must not differ
    per head."""
    index = walk.index
    first = walk.heads[inputs[0][1]]
    label = index.node_name(i)
    node = index.nodes[i]
    rank = len(first.tags)
    for _, name in inputs[1:]:
        other = walk.heads[name]
        if other.tags != first.tags:
            raise NotPrunable(f"{label} combines head tensors whose axes do not line up", "attention", label,
                              name)
        walk.tie_heads(i, first, other, name)
    known = {name for _, name in inputs}
    for name in node.input:
        if not name or name in known:
            continue
        if name in walk.info:
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
    _same(walk, i, first, index.used_outputs(i))
    return True


@head_op("Slice", "Split")
def _cut(walk: Walk, i: int, inputs: list) -> bool:
    """Slice or Split along axes that are not the heads."""
    position, tensor = inputs[0]
    if position != 0:
        return False
    info = walk.heads[tensor]
    index = walk.index
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
    for out in index.used_outputs(i):
        walk.set_heads(out, info)
    return True


@head_op("Unsqueeze")
def _unsqueeze(walk: Walk, i: int, inputs: list) -> bool:
    """A new axis of size 1; right after the heads it is the axis repeat_kv expands ("r")."""
    position, tensor = inputs[0]
    if position != 0:
        return False
    info = walk.heads[tensor]
    index = walk.index
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
    _same(walk, i, replace(info, tags=tuple(tags)), index.used_outputs(i))
    return True


@head_op("Expand")
def _expand(walk: Walk, i: int, inputs: list) -> bool:
    """repeat_kv's Expand of the "r" axis to n_rep copies; any other axis must keep its size (inferred
    shapes). Its shape input becomes a constant of 1s and n_rep, whatever the number of heads."""
    position, tensor = inputs[0]
    if position != 0:
        return False
    info = walk.heads[tensor]
    index = walk.index
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
    walk.place(CountEntry(i, 1, r, shape, 0, False), info.layout)
    _same(walk, i, replace(info, repeat=dst[r]), index.used_outputs(i))
    return True


@head_op("Concat")
def _concat(walk: Walk, i: int, inputs: list) -> bool:
    """A Concat of head tensors along another axis than the heads (no KV cache from outside)."""
    first = walk.heads[inputs[0][1]]
    index = walk.index
    node = index.nodes[i]
    label = index.node_name(i)
    rank = len(first.tags)
    axis = index.attr(i, "axis", 0)
    if (axis + rank if axis < 0 else axis) == head_axis(first.tags):
        raise NotPrunable(f"{label} (Concat) joins along the heads", "attention", label)
    for name in node.input:
        if name not in walk.heads:
            raise NotPrunable(f"{label} (Concat) joins heads with {name!r} from outside (a KV cache?)",
                              "attention", label, name)
        other = walk.heads[name]
        if other.tags != first.tags:
            raise NotPrunable(f"{label} (Concat) joins head tensors whose axes differ", "attention", label, name)
        walk.tie_heads(i, first, other, name)
    _same(walk, i, first, walk.index.used_outputs(i))
    return True


# ---- Reshapes of head tensors ----------------------------------------------------------------------

def _repeat_merge(walk: Walk, i: int, tensor: str) -> None:
    """The Reshape that merges (KV heads, n_rep copies) into the query heads: each KV head's features
    stand for n_rep heads in a row."""
    index = walk.index
    label = index.node_name(i)
    info = walk.heads[tensor]
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
        walk.place(CountEntry(node, position, k, old, info.dim, copies), repeated)
    elif not (entry.dim is not None and entry.dim[0] in walk.heads):
        raise refuse
    tags = info.tags[:h + 1] + info.tags[h + 2:]
    _same(walk, i, replace(info, tags=tags), index.used_outputs(i))


def _refold(walk: Walk, i: int, tensor: str, entries: list | None) -> None:
    """A Reshape that folds the heads into the batch axis ([B, H, S, D] -> [-1, S, D]) or unfolds them
    ([B*H, D, S] -> [B, H, D, S]) with sizes read at run time from the head tensors' own Shape: the
    pruned head count follows by itself (dynamo's decomposition of scaled_dot_product_attention)."""
    index = walk.index
    label = index.node_name(i)
    info = walk.heads[tensor]
    tags = info.tags
    refuse = NotPrunable(f"{label} reshapes head tensor {tensor!r} in a way onnxprune does not follow",
                         "attention", label, tensor)
    if entries is None or any(e.dim is None and e.value != -1 for e in entries):
        raise refuse  # a constant entry might count heads: not followed

    def tag(e):
        if e.dim is None:
            return "rest"
        source, axis = e.dim
        return walk.heads[source].tags[axis] if source in walk.heads else None

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
        other = walk.heads[source]
        if ([e.dim for e in entries[:k + 1]] != [(source, a) for a in range(k + 1)]
                or any(t is not None for t in other.tags[:k]) or got[k + 1:] != list(tags[1:])):
            raise refuse
        walk.tie_heads(i, info, other, source)
        out = other.tags[:k + 1] + tags[1:]
    else:
        raise refuse
    for name in index.used_outputs(i)[:1]:
        walk.set_heads(name, replace(info, tags=tuple(out)))


def _merge(walk: Walk, i: int, tensor: str, entries: list) -> None:
    """A Reshape of [..., H, D] into [..., H*D] (`entries`: its target, one shorter than the head tensor):
    the head tensor becomes features again."""
    index = walk.index
    label = index.node_name(i)
    info = walk.heads[tensor]
    n = info.heads * info.dim
    last = entries[-1]
    if last.value == n and last.place is not None:
        node, position, k, old, copies = last.place
        walk.place(CountEntry(node, position, k, old, 1, copies), info.layout)
    elif not (last.value == -1 and all(e.value != -1 for e in entries[:-1])):
        raise NotPrunable(f"{label} merges heads into a size onnxprune cannot rewrite "
                          f"({last.value if last.value is not None else 'computed at run time'})", "attention",
                          label, tensor)
    out = index.nodes[i].output[0]
    walk.vias.append((out, info.layout))
    # rows flattened as well: features last at any rank (a 2-D rank would read as channels first)
    walk.set_features(out, TensorInfo(info.layout, -1, len(entries) if len(entries) == len(info.tags) - 1 else None))


def _rows_only(walk: Walk, entries: list) -> bool:
    """Whether leading target entries size only rows: -1, fixed sizes, or sizes read from tensors that
    carry no heads (a merge that also flattens the tokens)."""
    return all(e.value == -1 or (e.value is not None and e.value > 0)
               or (e.dim is not None and e.dim[0] not in walk.heads) for e in entries)

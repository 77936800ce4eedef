"""Fused attention ops: ai.onnx Attention on head tensors, onnxruntime's com.microsoft Attention (a packed
Q/K/V projection of its own) and MultiHeadAttention (fed by separate projections).

Each is one handler: the ai.onnx op in the head walk's registry, the com.microsoft ones in the
structural registry (ops/registry.py).
"""

from __future__ import annotations

from dataclasses import replace

from ..ops import CountAttribute, Features, NotPrunable, Skip, constant_slice
from ..ops.registry import head_op, structural
from .heads import dim_is_one
from .layout import Piece, width
from .state import HeadInfo, TensorInfo, Walk


@head_op("Attention")
def _onnx_attention(walk: Walk, i: int, inputs: list) -> bool:
    """ai.onnx Attention (opset 23; dynamo's scaled_dot_product_attention) on 4-D Q, K, V [B, H, S, D]:
    ties Q with K and V head by head (key/value heads serving groups of query heads with fewer K/V
    heads); its output carries the query heads. A cache or the Q·Kᵀ output is refused."""
    index = walk.index
    node = index.nodes[i]
    label = index.node_name(i)
    where = dict(inputs)
    refuse = NotPrunable(f"{label} (Attention) reads Q, K and V in a form onnxprune does not follow (3-D "
                         "inputs, or tensors that are not head tensors)", "attention", label)
    if sorted(p for p in where if p < 3) != [0, 1, 2] or any(p >= 3 for p in where):
        raise refuse
    q, k, v = (walk.heads[where[p]] for p in (0, 1, 2))
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
        walk.tie_heads(i, q, replace(other, repeat=r) if r > 1 else other, name)
    for attr, info in (("q_num_heads", q), ("kv_num_heads", k)):
        if index.attr(i, attr) is not None:
            walk.place(CountAttribute(i, attr, info.dim), info.layout)
    walk.attention_nodes.append((i, q.layout))
    walk.set_heads(node.output[0], replace(q, tags=(None, "h", None, "d")))
    return True


@structural("Attention", domain="com.microsoft", produces=True)
def _fused_attention(walk: Walk, i: int, inputs: list) -> bool:
    """com.microsoft.Attention: the features it reads go into its packed weight (not cut), and its
    packed projection makes a space of heads of its own (or fails as a producer, with the reason)."""
    label = walk.index.node_name(i)
    for _, name in inputs:
        walk.block(walk.info[name].layout, Skip("attention", f"tensor {name!r} reaches {label} (Attention), whose "
                                                "packed weight reads it", label, name))
    try:
        _packed_attention(walk, i)
    except NotPrunable as e:
        walk.failed[i] = (e.skip, None)
    return True


def _packed_attention(walk: Walk, i: int) -> None:
    """com.microsoft.Attention: a packed [E, 3*H*D] weight (Q | K | V) and bias, `num_heads`; its output,
    the merged context [B, S, H*D], is a space of H heads that the out-projection consumes."""
    index = walk.index
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
    walk.uf.add(i, n)
    walk.features_of[i] = Features(n)
    walk.head_dims[i] = {dim}
    for item, follows in slices:
        walk.place(item, follows)
    walk.attention_nodes.append((i, layout))
    walk.set_features(node.output[0], TensorInfo(layout, -1, 3))


@structural("MultiHeadAttention", domain="com.microsoft")
def _multi_head_attention(walk: Walk, i: int, inputs: list) -> bool:
    """com.microsoft.MultiHeadAttention fed by separate Q, K and V projections ([B, S, H*D] each):
    ties the three head by head; its output (the merged context) carries V's heads."""
    index = walk.index
    node = index.nodes[i]
    label = index.node_name(i)
    heads = index.attr(i, "num_heads")
    where = dict((pos, name) for pos, name in inputs)
    if sorted(where) != [0, 1, 2]:
        raise NotPrunable(f"{label} (MultiHeadAttention) does not read separate Q, K and V projections",
                          "attention", label)
    q, k, v = (walk.info[where[p]] for p in (0, 1, 2))
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
    walk.tie_heads(i, infos[0], infos[1], where[1])
    walk.tie_heads(i, infos[0], infos[2], where[2])
    for t in (q, k, v):
        walk.note_head_dim(t.layout, dim)
    walk.place(CountAttribute(i, "num_heads", dim), v.layout)
    if len(node.input) > 3 and node.input[3]:
        bias = index.view(i, 3)
        if bias is None or bias.shape != (3 * n,) or index.view_shared(bias):
            raise NotPrunable(f"{label} (MultiHeadAttention): its bias is not a constant of {3 * n} values",
                              "bias", label, node.input[3])
        walk.place(constant_slice(bias, 0), q.layout + k.layout + v.layout)
    walk.attention_nodes.append((i, v.layout))
    walk.set_features(node.output[0], TensorInfo(v.layout, -1, 3))
    return True

"""Apply keep-masks to a model: slice every constant of every pruned group, then compensate.

Slicing: each group's keep-mask is applied to its producer's weight and bias, the
per-feature constants of its region and its consumers' weight rows. Compensation
(`ConsumerUpdate`, see refit.py): a consumer may get new weight rows and a bias change,
which goes into its Gemm bias, into the bias Add that follows its MatMul, or into a new
Add. The input model is never modified.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ValidationFailed
from .graph import GraphIndex, names_read
from .groups import NeuronGroup, SliceBounds, SplitSizes, keep_of
from .modelio import infer_shapes, shape_only
from .ops import BlockSlice, ConstSlice, CountAttribute, CountEntry, PrivateTarget, ShapeUpdate, linear_spec
from .ops.edit import set_input
from .ops.edit import add_initializer as _add_initializer
from .ops.edit import fresh as _fresh
from .refit import ConsumerUpdate


def apply_masks(model: onnx.ModelProto, groups: list[NeuronGroup], masks: dict[str, np.ndarray],
                *, updates: dict[int, ConsumerUpdate] | None = None, index: GraphIndex | None = None,
                settings: dict | None = None, check_shapes: bool = True) -> onnx.ModelProto:
    """A new model with each group's removed neurons gone, and consumers compensated per `updates`.

    A constant that something outside the plan also reads is copied before it is
    sliced. Shapes of the touched tensors are re-inferred (strictly); everything else
    - opsets, IR version, domains, metadata, other value_info - is kept.
    """
    index = index or GraphIndex(model)
    updates = {c: u for c, u in (updates or {}).items() if u.weight is not None or u.bias_delta is not None}
    plan: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    counts: list[tuple[object, np.ndarray]] = []  # attribute and shape updates, with the kept features
    replaced: dict[tuple[int, int], np.ndarray] = {}
    output_mask: dict[int, np.ndarray] = {}  # producer node -> keep-mask of its output features
    touched: set[str] = set()
    pruned: dict[str, np.ndarray] = {}
    for group in groups:
        mask = masks.get(group.id)
        if mask is None or not group.prunable or mask.all():
            continue
        if len(mask) != group.size or not mask.any():
            raise ValueError(f"keep-mask for {group.id} must have {group.size} entries, at least one kept")
        mask = np.asarray(mask, bool)
        if not np.array_equal(group.whole_units(mask), mask):
            raise ValueError(f"keep-mask for {group.id} cuts a head: its {group.unit}-neuron units go whole or not "
                             "at all")
        for blocks in group.balanced:
            kept = [int(mask[lo:hi].sum()) for lo, hi in blocks]
            if min(kept) == 0 or len(set(kept)) > 1:
                raise ValueError(f"keep-mask for {group.id} keeps {kept} neurons in the channel blocks "
                                 f"{list(blocks)} of a grouped Conv: every block must keep the same number, at "
                                 "least one (see criteria.balance_blocks)")
        pruned[group.id] = mask
    done: set[int] = set()  # a Placed item shared by several groups (a Concat's consumer) is applied once
    for group in groups:
        if group.id not in pruned:
            continue
        mask = pruned[group.id]
        for node, offset, size in group.producers:
            output_mask[node] = mask[offset:offset + size]
        for node, layout in group.derived:
            output_mask[node] = keep_of(layout, pruned)
        for placed in group.slices:
            if id(placed) in done:
                continue
            done.add(id(placed))
            keep = keep_of(placed.layout, pruned)
            s = placed.item
            if keep.all():
                continue
            if isinstance(s, BlockSlice):
                if updates.get(s.consumer) is not None and updates[s.consumer].weight is not None:
                    raise ValueError(f"node {s.consumer}: a grouped Conv's weight cannot take refit rows")
                touched.update(s.chain)
                plan[(s.node, s.input)].append((s.axis, keep, (s.by, s.blocks)))
                continue
            if not isinstance(s, ConstSlice):
                counts.append((s, keep))
                continue
            touched.update(s.chain)
            update = updates.get(s.consumer) if s.consumer is not None else None
            if update is not None and update.weight is not None:
                view = group.consumer_views[s.consumer]
                replaced[(s.node, s.input)] = _in_layout(index, s.consumer, view, update.weight)
                continue  # the new weight rows are already the kept ones
            plan[(s.node, s.input)].append((s.axis, np.repeat(keep, s.repeat) if s.repeat > 1 else keep, None))
        touched.update(group.tensors)
    views = {c: view for group in groups for c, view in group.consumer_views.items()}
    for key in replaced:
        plan.setdefault(key, [])

    new = onnx.ModelProto()
    new.CopyFrom(model)
    by_constant: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for node, position in plan:
        by_constant[model.graph.node[node].input[position]].append((node, position))
    touched.update(by_constant)  # exporters also record the shapes of initializers

    taken = _all_names(new)
    for name, uses in by_constant.items():
        original = index.constant_value(name)

        def value_for(use):
            return _slice(replaced.get(use, original), plan[use])

        same = len({_spec_key(plan[u]) for u in uses}) == 1 and not replaced.keys() & set(uses)
        if index.uses(name) == len(uses) and (len(uses) == 1 or same):
            _replace_constant(new, index, name, value_for(uses[0]))
            continue
        for node, position in uses:  # shared with something outside: slice a private copy
            copy_name = _fresh(f"{name}_pruned", taken)
            _add_initializer(new, numpy_helper.from_array(value_for((node, position)), copy_name))
            new.graph.node[node].input[position] = copy_name

    detached: set[str] = set()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    private = [(count, keep) for count, keep in counts if isinstance(count, PrivateTarget)]
    for count, keep in counts:
        if not isinstance(count, PrivateTarget):
            detached |= _apply_count(new, index, count, keep, taken, opset)
    for consumer in sorted(updates, reverse=True):  # from the end, so node insertions keep indices valid
        delta = updates[consumer].bias_delta
        if delta is None:
            continue
        if consumer in output_mask:
            delta = delta[output_mask[consumer]]
        dtype = index.constant_dtype(views[consumer].name) if consumer in views else np.float32
        detached |= linear_spec(new.graph.node[consumer]).fold_bias(new, consumer, delta, dtype, taken, touched)
    for count, keep in private:  # after every insertion above: these insert nodes of their own
        _private_target(new, index, count, keep, taken)
    shared = {index.nodes[count.concat].output[0] for count, _ in private}
    read = {x for n in new.graph.node for x in n.input} | {o.name for o in new.graph.output}
    for k in reversed(range(len(new.graph.node))):  # a shared target every Reshape now has a copy of
        if new.graph.node[k].output and new.graph.node[k].output[0] in shared - read:
            detached |= {x for x in new.graph.node[k].input if index.is_constant(x)}
            del new.graph.node[k]
    _drop_unused_initializers(new, detached)

    if check_shapes:
        _refresh_shapes(new, model, touched)
    else:
        _drop_shapes(new, touched)
    if settings is not None:
        _set_metadata(new, settings)
    return new


def _apply_count(new: onnx.ModelProto, index: GraphIndex, count, keep: np.ndarray, taken: set, opset: int) -> set:
    """Rewrite an attribute or constant that counts features, for the kept ones; return detached constants."""
    node = new.graph.node[count.node]
    if isinstance(count, CountAttribute):
        value = int(keep.sum()) // count.divisor
        for attr in node.attribute:
            if attr.name == count.name and attr.ints:
                attr.ints[:] = [value] * len(attr.ints)
            elif attr.name == count.name:
                attr.i = value
        return set()
    if isinstance(count, CountEntry):
        target = np.array(count.old, dtype=np.int64)
        if count.divisor:  # 0: a fixed value (repeat_kv's Expand shape of 1s and n_rep)
            target[count.position] = int(keep.sum()) // count.divisor
        if count.copies:
            for attr in node.attribute:
                if attr.name == "allowzero":
                    attr.i = 0
        return {_new_constant(new, node, count.input, target, taken)} - {""}
    if isinstance(count, ShapeUpdate):
        target = index.constant_value(index.view(count.node, count.input).name).copy()
        target[count.position] = int(keep.sum()) * count.per_feature
        return {_new_constant(new, node, count.input, target, taken)} - {""}
    if isinstance(count, SplitSizes):
        sizes = np.array([int(keep[lo:hi].sum()) for lo, hi in count.bounds], dtype=np.int64)
        if not sizes.all():
            raise ValueError(f"{node.name or 'Split'}: a keep-mask empties one of its outputs")
        kept = [a for a in node.attribute if a.name not in ("split", "num_outputs")]
        del node.attribute[:]
        node.attribute.extend(kept)
        if opset >= 13:
            old = _new_constant(new, node, 1, sizes, taken)
            return {old} - {""}
        node.attribute.append(onnx.helper.make_attribute("split", sizes.tolist()))
        return set()
    if isinstance(count, SliceBounds):
        dropped = set()
        kept_before = np.concatenate([[0], np.cumsum(keep)])
        for position, value in ((1, kept_before[count.lo]), (2, kept_before[count.hi])):
            bounds = index.constant_value(index.view(count.node, position).name).astype(np.int64).reshape(-1).copy()
            bounds[count.position] = int(value)
            dropped.add(_new_constant(new, node, position, bounds, taken))
        return dropped - {""}
    raise TypeError(f"unknown update {count!r}")


def _private_target(new: onnx.ModelProto, index: GraphIndex, count: PrivateTarget, keep: np.ndarray,
                    taken: set) -> None:
    """Give the Reshape a copy of its shared target Concat, with the kept count in place (see PrivateTarget)."""
    nodes = new.graph.node
    reshape_output = index.nodes[count.reshape].output[0]
    at = next(k for k, n in enumerate(nodes) if reshape_output in n.output)  # nodes may have been inserted
    concat = onnx.NodeProto()
    concat.CopyFrom(index.nodes[count.concat])
    concat.name = _fresh(f"{concat.name or 'Concat'}_pruned", taken)
    del concat.output[:]
    concat.output.append(_fresh(f"{index.nodes[count.concat].output[0]}_pruned", taken))
    piece = np.array(count.old, dtype=np.int64)
    piece[count.position] = int(keep.sum())
    _new_constant(new, concat, count.piece, piece, taken)
    set_input(nodes[at], 1, concat.output[0])
    nodes.insert(at, concat)


def _new_constant(new: onnx.ModelProto, node: onnx.NodeProto, position: int, value: np.ndarray, taken: set) -> str:
    """Point input `position` of `node` at a new initializer holding `value`; return the name it read before
    (a Constant or an initializer that may be shared, so it is never changed in place)."""
    old = node.input[position] if len(node.input) > position else ""
    name = _fresh(f"{old or node.name or node.op_type}_pruned", taken)
    _add_initializer(new, numpy_helper.from_array(np.asarray(value), name))
    set_input(node, position, name)
    return old


def _in_layout(index: GraphIndex, node: int, view, weight: np.ndarray) -> np.ndarray:
    """A [in, out] weight (alpha included) back in the stored constant's layout and dtype."""
    n = index.nodes[node]
    dtype = index.constant_dtype(view.name)
    weight = linear_spec(n).from_matrix(n, weight)
    return np.ascontiguousarray(view.to_stored(weight).astype(dtype))


def _slice(value: np.ndarray, cuts: list[tuple[int, np.ndarray, tuple | None]]) -> np.ndarray:
    for axis, mask, blocks in cuts:
        value = np.compress(mask, value, axis=axis) if blocks is None else _gather_blocks(value, axis, mask, *blocks)
    return np.ascontiguousarray(value)


def _gather_blocks(value: np.ndarray, axis: int, keep: np.ndarray, by: int, blocks: int) -> np.ndarray:
    """A grouped Conv's weight without its removed input channels: `keep` covers all C_in channels in
    `blocks` blocks, and each entry along `by` (an output row, of block o // (rows / blocks)) keeps the
    positions of its own block's kept channels along `axis`."""
    per_block = keep.reshape(blocks, -1)
    counts = per_block.sum(axis=1)
    if counts.min() == 0 or (counts != counts[0]).any():
        raise ValueError(f"a grouped Conv's input keeps {counts.tolist()} channels per block: they must be equal")
    rows = value.shape[by]
    if per_block.shape[1] != value.shape[axis] or rows % blocks:
        raise ValueError(f"weight of shape {list(value.shape)} does not read {keep.size} channels in {blocks} blocks")
    positions = np.nonzero(per_block)[1].reshape(blocks, -1)          # [blocks, kept per block]
    moved = np.moveaxis(value, (by, axis), (0, 1))                     # [rows, C_in / blocks, ...]
    index = positions[np.arange(rows) // (rows // blocks)]              # [rows, kept per block]
    index = index.reshape(index.shape + (1,) * (moved.ndim - 2))
    return np.moveaxis(np.take_along_axis(moved, index, axis=1), (0, 1), (by, axis))


def _spec_key(cuts):
    return tuple((axis, mask.tobytes(), blocks) for axis, mask, blocks in cuts)


def _replace_constant(model: onnx.ModelProto, index: GraphIndex, name: str, value: np.ndarray) -> None:
    tensor = numpy_helper.from_array(value, name)
    if name in index.initializers:
        for t in model.graph.initializer:
            if t.name == name:
                t.CopyFrom(tensor)
    else:
        node = model.graph.node[index.constant_nodes[name]]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))
    for v in model.graph.input:
        if v.name == name:  # IR < 4 lists initializers as inputs, with their shape
            v.CopyFrom(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(value.shape)))







def _drop_unused_initializers(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the constants that compensation replaced, once nothing reads them."""
    unused = candidates - names_read(model.graph)
    if not unused:
        return
    kept = [t for t in model.graph.initializer if t.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    inputs = [v for v in model.graph.input if v.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    nodes = [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] in unused)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _drop_shapes(new: onnx.ModelProto, touched: set[str]) -> None:
    kept = [v for v in new.graph.value_info if v.name not in touched]
    del new.graph.value_info[:]
    new.graph.value_info.extend(kept)


def _refresh_shapes(new: onnx.ModelProto, original: onnx.ModelProto, touched: set[str]) -> None:
    """Drop stale shape information of the touched tensors, re-infer, and check strictly."""
    had = {v.name for v in new.graph.value_info if v.name in touched}
    _drop_shapes(new, touched)
    probe = shape_only(new)
    try:
        inferred = infer_shapes(probe, strict=True)
    except Exception as e:
        if _infers_strictly(original):
            raise ValidationFailed(f"shape inference fails on the pruned model: {str(e).splitlines()[0]}") from None
        inferred = infer_shapes(probe)
    for v in inferred.graph.value_info:
        if v.name in had:
            new.graph.value_info.append(v)


def _infers_strictly(model: onnx.ModelProto) -> bool:
    try:
        infer_shapes(shape_only(model), strict=True)
        return True
    except Exception:
        return False


def _set_metadata(model: onnx.ModelProto, settings: dict) -> None:
    from . import __version__

    entries = {"onnxprune.version": __version__, "onnxprune.settings": json.dumps(settings, sort_keys=True)}
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def _all_names(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    for node in model.graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names



def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of every floating-point constant (initializers and Constant nodes)."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                   onnx.TensorProto.BFLOAT16}
    total = 0
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for t in tensors:
        if t.data_type in float_types:
            total += int(np.prod(t.dims, dtype=np.int64))
    return total

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
from .graph import GraphIndex, constant_node_value
from .groups import NeuronGroup
from .modelio import infer_shapes
from .ops import CountAttribute, ShapeUpdate
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
    counts: list[tuple[CountAttribute, int]] = []
    replaced: dict[tuple[int, int], np.ndarray] = {}
    output_mask: dict[int, np.ndarray] = {}  # producer node -> keep-mask of its output features
    touched: set[str] = set()
    for group in groups:
        mask = masks.get(group.name)
        if mask is None or not group.prunable or mask.all():
            continue
        if len(mask) != group.size or not mask.any():
            raise ValueError(f"keep-mask for {group.name} must have {group.size} entries, at least one kept")
        output_mask[group.producer_node] = mask
        for s in group.slices:
            if isinstance(s, (CountAttribute, ShapeUpdate)):
                counts.append((s, int(mask.sum())))
                continue
            touched.update(s.chain)
            update = updates.get(s.consumer) if s.consumer is not None else None
            if update is not None and update.weight is not None:
                view = group.consumer_views[s.consumer]
                replaced[(s.node, s.input)] = _in_layout(index, s.consumer, view, update.weight)
                continue  # the new weight rows are already the kept ones
            plan[(s.node, s.input)].append((s.axis, np.repeat(mask, s.repeat) if s.repeat > 1 else mask))
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
    for count, value in counts:
        node = new.graph.node[count.node]
        if isinstance(count, ShapeUpdate):
            target = index.constant_value(index.view(count.node, count.input).name).copy()
            target[count.position] = value * count.per_feature
            name = _fresh(f"{node.input[count.input]}_pruned", taken)
            _add_initializer(new, numpy_helper.from_array(target, name))
            detached.add(node.input[count.input])
            node.input[count.input] = name
            continue
        for attr in node.attribute:
            if attr.name == count.name:
                attr.i = value
    for consumer in sorted(updates, reverse=True):  # from the end, so node insertions keep indices valid
        delta = updates[consumer].bias_delta
        if delta is None:
            continue
        if consumer in output_mask:
            delta = delta[output_mask[consumer]]
        dtype = index.constant_dtype(views[consumer].name) if consumer in views else np.float32
        detached |= _add_bias(new, consumer, delta, dtype, taken, touched)
    _drop_unused_initializers(new, detached)

    if check_shapes:
        _refresh_shapes(new, model, touched)
    else:
        _drop_shapes(new, touched)
    if settings is not None:
        _set_metadata(new, settings)
    return new


def _in_layout(index: GraphIndex, node: int, view, weight: np.ndarray) -> np.ndarray:
    """A [in, out] weight (alpha included) back in the stored constant's layout and dtype."""
    n = index.nodes[node]
    dtype = index.constant_dtype(view.name)
    if n.op_type == "Gemm":
        weight = weight / index.attr(node, "alpha", 1.0)
        if index.attr(node, "transB", 0):
            weight = weight.T
    return np.ascontiguousarray(view.to_stored(weight).astype(dtype))


def _slice(value: np.ndarray, cuts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    for axis, mask in cuts:
        value = np.compress(mask, value, axis=axis)
    return np.ascontiguousarray(value)


def _spec_key(cuts):
    return tuple((axis, mask.tobytes()) for axis, mask in cuts)


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


def _add_initializer(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    model.graph.initializer.append(tensor)
    if model.ir_version < 4:
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))


def _constant_in(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return constant_node_value(node)
    return None


def _readers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def _per_feature(value: np.ndarray, n: int) -> bool:
    return value.ndim == 0 or (value.shape[-1] in (1, n) and all(d == 1 for d in value.shape[:-1]))


def _add_bias(model: onnx.ModelProto, consumer: int, delta: np.ndarray, dtype, taken: set, touched: set) -> set:
    """Add `delta` to the consumer's output bias: Gemm's C, the MatMul's bias Add, or a new Add.

    Returns the names of constants no longer read by the consumer (to drop if now unused).
    """
    node = model.graph.node[consumer]
    if node.op_type == "Conv":
        old = node.input[2] if len(node.input) > 2 and node.input[2] else None
        current = _constant_in(model, old) if old else None
        bias = delta if current is None else current.astype(np.float64) + delta
        name = _fresh(f"{node.name or 'conv'}_bias_folded", taken)
        _add_initializer(model, numpy_helper.from_array(np.asarray(bias, dtype=dtype), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        return {old} if old else set()
    if node.op_type == "Gemm":
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        old = node.input[2] if len(node.input) > 2 and node.input[2] else None
        current = _constant_in(model, old) if old else None
        bias = delta if current is None else beta * current.astype(np.float64) + delta
        name = _fresh(f"{node.name or 'gemm'}_bias_folded", taken)
        _add_initializer(model, numpy_helper.from_array(np.asarray(bias, dtype=dtype), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        kept = [a for a in node.attribute if a.name != "beta"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("beta", 1.0))
        return {old} if old else set()
    out = node.output[0]
    readers = _readers(model, out)
    is_output = any(o.name == out for o in model.graph.output)
    if len(readers) == 1 and readers[0].op_type == "Add" and not is_output:
        add = readers[0]
        other = 1 if add.input[0] == out else 0
        old = add.input[other]
        current = _constant_in(model, old)
        if current is not None and _per_feature(current, len(delta)):
            name = _fresh(f"{old}_folded", taken)
            _add_initializer(model, numpy_helper.from_array((current.astype(np.float64) + delta).astype(dtype), name))
            add.input[other] = name
            touched.add(add.output[0])
            return {old}
    # No bias Add to fold into: insert one right after the MatMul.
    unbiased = _fresh(f"{out}_unbiased", taken)
    bias_name = _fresh(f"{node.name or 'matmul'}_bias_folded", taken)
    _add_initializer(model, numpy_helper.from_array(delta.astype(dtype), bias_name))
    node.output[0] = unbiased
    add = onnx.helper.make_node("Add", [unbiased, bias_name], [out], name=_fresh(f"{node.name or 'matmul'}_bias", taken))
    model.graph.node.insert(consumer + 1, add)
    return set()


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _names_read(sub)
    return names


def _drop_unused_initializers(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the constants that compensation replaced, once nothing reads them."""
    unused = candidates - _names_read(model.graph)
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
    try:
        inferred = infer_shapes(new, strict=True)
    except Exception as e:
        if _infers_strictly(original):
            raise ValidationFailed(f"shape inference fails on the pruned model: {str(e).splitlines()[0]}") from None
        inferred = infer_shapes(new)
    for v in inferred.graph.value_info:
        if v.name in had:
            new.graph.value_info.append(v)


def _infers_strictly(model: onnx.ModelProto) -> bool:
    try:
        infer_shapes(model, strict=True)
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


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


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

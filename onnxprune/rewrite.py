"""Apply keep-masks to a model: slice every constant of every pruned group."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ValidationFailed
from .graph import GraphIndex
from .groups import NeuronGroup


def apply_masks(model: onnx.ModelProto, groups: list[NeuronGroup], masks: dict[str, np.ndarray],
                *, index: GraphIndex | None = None, settings: dict | None = None) -> onnx.ModelProto:
    """A new model with each group's removed neurons gone; the input model is not modified.

    A constant that something outside the plan also reads is copied before it is
    sliced. Shapes of the touched tensors are re-inferred (strictly), everything else
    - opsets, IR version, domains, metadata, other value_info - is kept.
    """
    index = index or GraphIndex(model)
    plan: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    touched: set[str] = set()
    for group in groups:
        mask = masks.get(group.name)
        if mask is None or not group.prunable or mask.all():
            continue
        if len(mask) != group.size or not mask.any():
            raise ValueError(f"keep-mask for {group.name} must have {group.size} entries, at least one kept")
        for s in group.slices:
            plan[(s.node, s.input)].append((s.axis, mask))
        touched.update(group.tensors)

    new = onnx.ModelProto()
    new.CopyFrom(model)
    by_constant: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for node, position in plan:
        by_constant[model.graph.node[node].input[position]].append((node, position))

    touched.update(by_constant)  # exporters also record the shapes of initializers
    taken = _all_names(new)
    for name, uses in by_constant.items():
        value = index.constant_value(name)
        specs = {_spec_key(plan[u]) for u in uses}
        if len(specs) == 1 and index.uses(name) == len(uses):
            _replace_constant(new, index, name, _slice(value, plan[uses[0]]))
            continue
        for node, position in uses:  # shared with something outside: slice a private copy
            copy_name = _fresh(f"{name}_pruned", taken)
            tensor = numpy_helper.from_array(_slice(value, plan[(node, position)]), copy_name)
            new.graph.initializer.append(tensor)
            if new.ir_version < 4:
                new.graph.input.append(onnx.helper.make_tensor_value_info(
                    copy_name, tensor.data_type, list(tensor.dims)))
            new.graph.node[node].input[position] = copy_name

    _refresh_shapes(new, model, touched)
    if settings is not None:
        _set_metadata(new, settings)
    return new


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


def _refresh_shapes(new: onnx.ModelProto, original: onnx.ModelProto, touched: set[str]) -> None:
    """Drop stale shape information of the touched tensors, re-infer, and check strictly."""
    kept = [v for v in new.graph.value_info if v.name not in touched]
    had = {v.name for v in new.graph.value_info if v.name in touched}
    del new.graph.value_info[:]
    new.graph.value_info.extend(kept)
    try:
        inferred = onnx.shape_inference.infer_shapes(new, check_type=True, strict_mode=True)
    except Exception as e:
        if _infers_strictly(original):
            raise ValidationFailed(f"shape inference fails on the pruned model: {str(e).splitlines()[0]}") from None
        inferred = onnx.shape_inference.infer_shapes(new)
    for v in inferred.graph.value_info:
        if v.name in had:
            new.graph.value_info.append(v)


def _infers_strictly(model: onnx.ModelProto) -> bool:
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
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

"""Apply keep-masks to a model: every edit record of every pruned group applies itself (graph.edits), then
compensation folds its bias changes.

Slicing: each group's keep-mask is applied to its producer's weight and bias, the
per-feature constants of its region and its consumers' weight rows. Compensation
(`ConsumerUpdate`, see refit.py): a consumer may get new weight rows and a bias change,
which goes into its Gemm bias, into the bias Add that follows its MatMul, or into a new
Add. The input model is never modified.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from .errors import ValidationFailed
from .graph import GraphIndex
from .graph.dequant import INTEGER_TYPES, WEIGHT_INPUTS
from .graph.edits import ModelEdit, drop_unused_initializers
from .groups import NeuronGroup, keep_of
from .modelio import infer_shapes, shape_only
from .ops import linear_spec
from .refit import ConsumerUpdate


def apply_masks(model: onnx.ModelProto, groups: list[NeuronGroup], masks: dict[str, np.ndarray],
                *, updates: dict[int, ConsumerUpdate] | None = None, index: GraphIndex | None = None,
                settings: dict | None = None, check_shapes: bool = True, blocks: list | None = None) -> onnx.ModelProto:
    """A new model with each group's removed neurons gone, and consumers compensated per `updates`.

    A constant that something outside the plan also reads is copied before it is
    sliced. Shapes of the touched tensors are re-inferred (strictly); everything else
    - opsets, IR version, domains, metadata, other value_info - is kept. `blocks` are the removed
    residual branches: (graph.branch.RemovedBranch, the stream's layout) each, applied last.
    """
    index = index or GraphIndex(model)
    updates = {c: u for c, u in (updates or {}).items() if u.weight is not None or u.bias_delta is not None}
    pruned = _checked_masks(groups, masks)
    edit = _Rewrite(model, index, updates)
    output_mask = _collect(edit, groups, pruned)
    edit.slice_constants()
    detached = edit.apply_deferred(late=False)
    detached |= _fold_biases(edit, groups, output_mask)
    edit.apply_deferred(late=True)
    for record, layout in blocks or ():  # they delete nodes: after every record that finds its node by index
        detached |= record.apply(edit, keep_of(layout, pruned))
    detached |= edit.drop_orphans()
    drop_unused_initializers(edit.model, detached)
    if check_shapes:
        _refresh_shapes(edit.model, model, edit.touched)
    else:
        _drop_shapes(edit.model, edit.touched)
    if settings is not None:
        _set_metadata(edit.model, settings)
    return edit.model


def _checked_masks(groups: list[NeuronGroup], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The masks that remove something, by group id, after checking each fits its group."""
    pruned = {}
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
    return pruned


class _Rewrite(ModelEdit):
    """A model edit whose consumers may take refit weight rows (`updates`, from compensation)."""

    def __init__(self, model: onnx.ModelProto, index: GraphIndex, updates: dict[int, ConsumerUpdate]):
        super().__init__(model, index)
        self.updates = updates

    def refits(self, consumer):
        return self.updates.get(consumer) is not None and self.updates[consumer].weight is not None

    def refit_rows(self, consumer, group):
        if not self.refits(consumer):
            return None
        return _in_layout(self.index, consumer, group.consumer_views[consumer], self.updates[consumer].weight)


def _collect(edit: ModelEdit, groups: list[NeuronGroup], pruned: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Hand every record of a pruned group its keep-mask (round 1 of graph.edits); return the keep-mask of
    each pruned producer's output features."""
    output_mask: dict[int, np.ndarray] = {}
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
            if not keep.all():
                placed.item.collect(edit, keep, group)
        edit.touched.update(group.tensors)
    for group in groups:  # consumers that keep every input and take new weights (sequential.DOWNSTREAM)
        for placed in group.slices:
            consumer = getattr(placed.item, "consumer", None)
            if id(placed) not in done and consumer is not None and edit.refits(consumer):
                done.add(id(placed))
                placed.item.collect(edit, keep_of(placed.layout, pruned), group)
    return output_mask


def _fold_biases(edit: _Rewrite, groups: list[NeuronGroup], output_mask: dict[int, np.ndarray]) -> set[str]:
    """Fold each consumer's bias change into its bias (or a new Add); return the constants it replaced."""
    views = {c: view for group in groups for c, view in group.consumer_views.items()}
    detached = set()
    for consumer in sorted(edit.updates, reverse=True):  # from the end, so node insertions keep indices valid
        delta = edit.updates[consumer].bias_delta
        if delta is None:
            continue
        if consumer in output_mask:
            delta = delta[output_mask[consumer]]
        dtype = edit.index.view_dtype(views[consumer]) if consumer in views else np.float32
        spec = linear_spec(edit.model.graph.node[consumer])
        detached |= spec.fold_bias(edit.model, consumer, delta, dtype, edit.taken, edit.touched)
    return detached


def _in_layout(index: GraphIndex, node: int, view, weight: np.ndarray) -> np.ndarray:
    """A [in, out] weight (alpha included) back in the stored constant's layout and dtype."""
    n = index.nodes[node]
    dtype = index.constant_dtype(view.name)
    weight = linear_spec(n).from_matrix(n, weight, view.shape)
    return np.ascontiguousarray(view.to_stored(weight).astype(dtype))


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


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of every floating-point constant (initializers and Constant nodes), and of every integer
    constant a quantised model reads as a weight or bias (graph.dequant.WEIGHT_INPUTS)."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                   onnx.TensorProto.BFLOAT16}
    stored = {node.input[k] for node in model.graph.node for k in WEIGHT_INPUTS.get(node.op_type, ())
              if len(node.input) > k}
    total = 0
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [(a.t, node.output[0]) for a in node.attribute if a.name == "value"]
    for t in tensors:
        t, name = t if isinstance(t, tuple) else (t, t.name)
        if t.data_type in float_types or (t.data_type in INTEGER_TYPES and name in stored):
            total += int(np.prod(t.dims, dtype=np.int64))
    return total

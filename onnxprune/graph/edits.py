"""Edit records: what pruning a group changes in the model, each record applying itself.

Group discovery places a record with the layout of the features it follows; the rewrite builds the
record's keep-mask from the groups' masks and hands both to the record. Applying happens in three
rounds, in this order:

1. ``collect``: slices of constants add their cut to the rewrite (a constant read by several slices
   is cut once, or copied per reader when something else reads it); other records wait;
2. ``apply``: records that count features (attributes, Reshape targets, Split sizes, Slice bounds)
   rewrite their node, once every constant is sliced;
3. ``apply`` of the ``late`` records, which insert nodes of their own: after compensation has
   inserted its bias Adds, so node positions hold.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .index import GraphIndex, constant_node_value, names_read


class Edit:
    """What every record shares: by default it waits for round 2 and asks for no feature to stay."""

    late = False  # applied in round 3, after compensation inserted its nodes

    def collect(self, edit: "ModelEdit", keep: np.ndarray, group) -> None:
        edit.deferred.append((self, keep))

    def apply(self, edit: "ModelEdit", keep: np.ndarray) -> set[str]:
        """Change the new model for the kept features; return the constants the node no longer reads."""
        raise NotImplementedError(f"{type(self).__name__} is collected, not applied")

    def nonempty(self) -> list[tuple[int, int]]:
        """Feature ranges of which one must stay (an empty part would be a zero-size tensor)."""
        return []


@dataclass(frozen=True)
class ConstSlice(Edit):
    """The stored constant read at input ``input`` of node ``node``: keep-mask it along ``axis``.

    ``chain`` names the tensors between it and its user (Identity/Transpose), whose shapes
    change too; ``consumer`` is set on a consumer's weight slice (the node it belongs to);
    ``repeat`` > 1 expands the mask, for a Flatten between channels and a Gemm's rows.
    ``companions`` ((node, input, axis) each) are the scales and zero points of a quantised
    constant that run along the cut axis: cut with the same mask (graph.dequant).
    The mask itself comes from the layout the slice is placed with (groups.Placed).
    """

    node: int
    input: int
    axis: int
    chain: tuple = ()
    consumer: int | None = None
    repeat: int = 1
    companions: tuple = ()

    def collect(self, edit, keep, group):
        edit.touched.update(self.chain)
        rows = edit.refit_rows(self.consumer, group) if self.consumer is not None else None
        if rows is not None:
            if self.companions:
                raise ValueError(f"node {self.consumer}: a quantised weight cannot take refit rows")
            edit.replaced[(self.node, self.input)] = rows  # the new weight rows are already the kept ones
            return
        mask = np.repeat(keep, self.repeat) if self.repeat > 1 else keep
        edit.cuts[(self.node, self.input)].append((self.axis, mask, None))
        for node, position, axis in self.companions:
            edit.cuts[(node, position)].append((axis, mask, None))


@dataclass(frozen=True)
class BlockSlice(Edit):
    """A grouped Conv's weight read by blocks: keep-mask ``axis`` per block of the ``by`` axis.

    A Conv with ``blocks`` groups has weight [C_out, C_in / blocks, k...]: output row o (in block
    b = o // (C_out / blocks)) reads only input channels of block b, at positions 0..C_in/blocks
    of axis 1. Removing input channels is a gather along ``axis`` whose indices depend on the
    row's block; every block must keep the same number (the mask, over all C_in channels, comes
    from the layout, as for a ConstSlice). Axes are the stored constant's.
    """

    node: int
    input: int
    axis: int
    by: int
    blocks: int
    chain: tuple = ()
    consumer: int | None = None

    def collect(self, edit, keep, group):
        edit.touched.update(self.chain)
        rows = edit.refit_rows(self.consumer, group) if self.consumer is not None else None
        if rows is not None:  # refit per block: already each block's kept channels
            edit.replaced[(self.node, self.input)] = rows
            return
        edit.cuts[(self.node, self.input)].append((self.axis, keep, (self.by, self.blocks)))


@dataclass(frozen=True)
class CountAttribute(Edit):
    """An integer attribute that must equal the number of kept features (a depthwise Conv's group), or
    that number divided by `divisor` (a fused attention's num_heads); a list attribute (qkv_hidden_sizes)
    has each entry set so."""

    node: int
    name: str
    divisor: int = 1

    def apply(self, edit, keep):
        value = int(keep.sum()) // self.divisor
        for attr in edit.model.graph.node[self.node].attribute:
            if attr.name == self.name and attr.ints:
                attr.ints[:] = [value] * len(attr.ints)
            elif attr.name == self.name:
                attr.i = value
        return set()


@dataclass(frozen=True)
class ShapeUpdate(Edit):
    """A Reshape's constant target shape whose entry `position` is features x `per_feature` (a flatten)."""

    node: int
    input: int
    position: int
    per_feature: int

    def apply(self, edit, keep):
        index = edit.index
        target = index.constant_value(index.view(self.node, self.input).name).copy()
        target[self.position] = int(keep.sum()) * self.per_feature
        return {edit.new_constant(edit.model.graph.node[self.node], self.input, target)} - {""}


@dataclass(frozen=True)
class CountEntry(Edit):
    """Entry `position` of the 1-D integer constant read at input `input` of node `node` (a Reshape
    target, or one input of the Concat that computes it), `old` before pruning: it becomes the
    number of kept features divided by `divisor` (heads: features / head_dim). Written as a new
    constant, so a value computed at run time from a static shape can be replaced too. With
    `copies`, `old` is a target of 0s (copy the input's dimension) and the node's allowzero goes off."""

    node: int
    input: int
    position: int
    old: tuple
    divisor: int = 1
    copies: bool = False

    def apply(self, edit, keep):
        node = edit.model.graph.node[self.node]
        target = np.array(self.old, dtype=np.int64)
        if self.divisor:  # 0: a fixed value (repeat_kv's Expand shape of 1s and n_rep)
            target[self.position] = int(keep.sum()) // self.divisor
        if self.copies:
            for attr in node.attribute:
                if attr.name == "allowzero":
                    attr.i = 0
        return {edit.new_constant(node, self.input, target)} - {""}


@dataclass(frozen=True)
class PrivateTarget(Edit):
    """A Reshape (`reshape`) whose target is a Concat (`concat`) shared with other Reshapes, and whose
    entry `position` of the Concat's constant input `piece` (`old` before pruning) is the number of
    kept features: the rewrite gives this Reshape a copy of the Concat of its own, with that entry set."""

    reshape: int
    concat: int
    piece: int
    position: int
    old: tuple

    late = True  # it inserts a node: after compensation's insertions

    def apply(self, edit, keep):
        index, nodes = edit.index, edit.model.graph.node
        reshape_output = index.nodes[self.reshape].output[0]
        at = next(k for k, n in enumerate(nodes) if reshape_output in n.output)  # nodes may have been inserted
        concat = onnx.NodeProto()
        concat.CopyFrom(index.nodes[self.concat])
        concat.name = fresh(f"{concat.name or 'Concat'}_pruned", edit.taken)
        del concat.output[:]
        concat.output.append(fresh(f"{index.nodes[self.concat].output[0]}_pruned", edit.taken))
        piece = np.array(self.old, dtype=np.int64)
        piece[self.position] = int(keep.sum())
        edit.new_constant(concat, self.piece, piece)
        set_input(nodes[at], 1, concat.output[0])
        nodes.insert(at, concat)
        edit.orphans.add(index.nodes[self.concat].output[0])  # the shared one goes once no Reshape reads it
        return set()


@dataclass(frozen=True)
class SplitSizes(Edit):
    """A Split on the feature axis: output k holds features [lo, hi) of `bounds[k]` before pruning."""

    node: int
    bounds: tuple

    def apply(self, edit, keep):
        node = edit.model.graph.node[self.node]
        sizes = np.array([int(keep[lo:hi].sum()) for lo, hi in self.bounds], dtype=np.int64)
        if not sizes.all():
            raise ValueError(f"{node.name or 'Split'}: a keep-mask empties one of its outputs")
        kept = [a for a in node.attribute if a.name not in ("split", "num_outputs")]
        del node.attribute[:]
        node.attribute.extend(kept)
        if edit.opset >= 13:
            return {edit.new_constant(node, 1, sizes)} - {""}
        node.attribute.append(onnx.helper.make_attribute("split", sizes.tolist()))
        return set()

    def nonempty(self):
        return list(self.bounds)


@dataclass(frozen=True)
class SliceBounds(Edit):
    """A Slice on the feature axis (entry `position` of its starts/ends): features [lo, hi) before pruning."""

    node: int
    position: int
    lo: int
    hi: int

    def apply(self, edit, keep):
        node = edit.model.graph.node[self.node]
        dropped = set()
        kept_before = np.concatenate([[0], np.cumsum(keep)])
        for position, value in ((1, kept_before[self.lo]), (2, kept_before[self.hi])):
            bounds = edit.index.constant_value(edit.index.view(self.node, position).name)
            bounds = bounds.astype(np.int64).reshape(-1).copy()
            bounds[self.position] = int(value)
            dropped.add(edit.new_constant(node, position, bounds))
        return dropped - {""}

    def nonempty(self):
        return [(self.lo, self.hi)]


class ModelEdit:
    """A rewrite in progress: a copy of the model, the original's index, and what the records asked for.

    ``refits``/``refit_rows`` answer whether compensation gives a consumer new weight rows, and which;
    the base answers no (a rewrite with compensation overrides both).
    """

    def __init__(self, model: onnx.ModelProto, index: GraphIndex):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.index = index
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.taken = all_names(self.model)
        self.cuts: dict[tuple[int, int], list] = defaultdict(list)  # (node, input) -> (axis, mask, blocks)
        self.replaced: dict[tuple[int, int], np.ndarray] = {}          # (node, input) -> new constant
        self.touched: set[str] = set()   # tensors whose shapes change
        self.deferred: list[tuple[Edit, np.ndarray]] = []
        self.orphans: set[str] = set()   # tensors whose producer goes once nothing reads them

    def refits(self, consumer: int | None) -> bool:
        return False

    def refit_rows(self, consumer: int, group) -> np.ndarray | None:
        return None

    def new_constant(self, node: onnx.NodeProto, position: int, value: np.ndarray) -> str:
        """Point input `position` of `node` at a new initializer holding `value`; return the name it read before
        (a Constant or an initializer that may be shared, so it is never changed in place)."""
        old = node.input[position] if len(node.input) > position else ""
        name = fresh(f"{old or node.name or node.op_type}_pruned", self.taken)
        add_initializer(self.model, numpy_helper.from_array(np.asarray(value), name))
        set_input(node, position, name)
        return old

    def slice_constants(self) -> None:
        """Cut every constant the slices asked for: in place when only they read it and agree on the cut,
        else a private copy per reader."""
        for key in self.replaced:
            self.cuts.setdefault(key, [])
        index, new = self.index, self.model
        by_constant: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for node, position in self.cuts:
            by_constant[new.graph.node[node].input[position]].append((node, position))
        self.touched.update(by_constant)  # exporters also record the shapes of initializers
        for name, uses in by_constant.items():
            original = index.constant_value(name)

            def value_for(use):
                return _slice(self.replaced.get(use, original), self.cuts[use])

            same = len({_cut_key(self.cuts[u]) for u in uses}) == 1 and not self.replaced.keys() & set(uses)
            if index.uses(name) == len(uses) and (len(uses) == 1 or same):
                _replace_constant(new, index, name, value_for(uses[0]))
                continue
            for node, position in uses:  # shared with something outside: slice a private copy
                copy_name = fresh(f"{name}_pruned", self.taken)
                add_initializer(new, numpy_helper.from_array(value_for((node, position)), copy_name))
                new.graph.node[node].input[position] = copy_name

    def apply_deferred(self, late: bool) -> set[str]:
        """Round 2 (`late` False) or 3: let the waiting records apply themselves; the constants they detached."""
        detached = set()
        for record, keep in self.deferred:
            if record.late == late:
                detached |= record.apply(self, keep)
        return detached

    def drop_orphans(self) -> set[str]:
        """Remove the nodes making an orphaned tensor nothing reads any more; the constants they read."""
        new, detached = self.model, set()
        read = {x for n in new.graph.node for x in n.input} | {o.name for o in new.graph.output}
        for k in reversed(range(len(new.graph.node))):
            if new.graph.node[k].output and new.graph.node[k].output[0] in self.orphans - read:
                detached |= {x for x in new.graph.node[k].input if self.index.is_constant(x)}
                del new.graph.node[k]
        return detached


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


def _cut_key(cuts):
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


# ---- small edits of a ModelProto, shared with the linear ops' bias folding and the Q/K/V split ----------

def fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name of the main graph (what a new name must avoid)."""
    names = {t.name for t in model.graph.initializer}
    names |= {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    for node in model.graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def add_initializer(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    model.graph.initializer.append(tensor)
    if model.ir_version < 4:
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))


def constant_in(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return constant_node_value(node)
    return None


def readers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def set_input(node: onnx.NodeProto, position: int, name: str) -> None:
    while len(node.input) <= position:
        node.input.append("")
    node.input[position] = name


def drop_unused_initializers(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the constants among `candidates` that nothing reads any more (initializers, their IR < 4 input
    entries, Constant nodes)."""
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


def fold_into_dequantized(model: onnx.ModelProto, tensor: str, delta: np.ndarray, taken: set) -> str | None:
    """Add `delta` (one value per feature of the last axis, or per channel along the DequantizeLinear's
    axis) to `tensor`, the output of a DequantizeLinear of constants: its integers move by
    round(delta / scale), so its quantised form (and onnxruntime's fused integer kernels) stay.
    Returns the stored integers it no longer reads; None when `tensor` is not such an output or the
    change does not fit the integer type (the caller then writes a real-valued bias instead)."""
    node = next((n for n in model.graph.node if tensor in n.output), None)
    if node is None or node.op_type != "DequantizeLinear" or any(a.name == "block_size" and a.i for a in node.attribute):
        return None
    q = constant_in(model, node.input[0])
    scale = constant_in(model, node.input[1])
    zero = constant_in(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if q is None or scale is None or q.ndim != 1 or len(delta) != len(q) or (len(node.input) > 2 and node.input[2]
                                                                           and zero is None):
        return None
    step = np.rint(np.asarray(delta, np.float64) / np.where(scale == 0, 1.0, scale.astype(np.float64)))
    moved = q.astype(np.int64) + step.astype(np.int64)
    info = np.iinfo(q.dtype)
    if moved.min() < info.min or moved.max() > info.max:
        return None
    old = node.input[0]
    name = fresh(f"{old}_folded", taken)
    add_initializer(model, numpy_helper.from_array(moved.astype(q.dtype), name))
    node.input[0] = name
    return old


def real_value(model: onnx.ModelProto, tensor: str) -> np.ndarray | None:
    """The real values of `tensor` when it is a constant or a DequantizeLinear of constants (else None)."""
    value = constant_in(model, tensor)
    if value is not None:
        return value
    node = next((n for n in model.graph.node if tensor in n.output), None)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    q, scale = constant_in(model, node.input[0]), constant_in(model, node.input[1])
    zero = constant_in(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if q is None or scale is None:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis % q.ndim] = scale.size
    zp = 0.0 if zero is None else zero.astype(np.float64).reshape(shape if zero.size > 1 else [1] * q.ndim)
    return ((q.astype(np.float64) - zp) * scale.astype(np.float64).reshape(shape if scale.size > 1 else [1] * q.ndim)
            ).astype(scale.dtype)

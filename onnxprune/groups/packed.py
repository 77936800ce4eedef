"""Packed Q/K/V projections split where that makes their heads prunable (the choice needs the groups)."""

from __future__ import annotations

import os

import onnx

from .. import unpack
from ..graph import GraphIndex
from .discover import find_groups


def split_packed_heads(model: onnx.ModelProto, index: GraphIndex | None = None):
    """(model, index, groups, notes): `model` with the packed projections split whose parts then form
    prunable head groups (the others stay packed: splitting them would change the graph for nothing)."""
    index = index or GraphIndex(model)
    try:
        unpacked, found = unpack.unpack_qkv(model, index)
    except (ValueError, KeyError, IndexError, TypeError, onnx.checker.ValidationError):
        # a pattern this module misreads must not stop pruning: the projections stay packed (their
        # heads skipped with the head walk's reason), as before this module existed
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        return model, index, find_groups(model, index), []
    while found:
        u_index = GraphIndex(unpacked)
        u_groups = find_groups(unpacked, u_index)
        heads = {p for g in u_groups if g.prunable and g.kind == "heads" for p in g.producer_names}
        useful = {name for name, (_, parts) in found.items() if parts and all(p in heads for p in parts)}
        if useful == set(found):
            return unpacked, u_index, u_groups, [line for line, _ in found.values()]
        unpacked, found = unpack.unpack_qkv(model, index, only=useful)
    return model, index, find_groups(model, index), []

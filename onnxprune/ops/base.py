"""What every op spec shares: feature layouts and why a group is skipped (the slices a group makes are the
edit records of graph.edits, re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph.edits import (BlockSlice, ConstSlice, CountAttribute, CountEntry, PrivateTarget,  # noqa: F401
                           ShapeUpdate, SliceBounds, SplitSizes)


class Skip(str):
    """Why a group is not prunable: a kind (for tools), where (node, tensor), and a message (for people).

    It is its message as a string, so code that prints, joins or searches a reason keeps
    working; ``to_dict()`` gives the structured form that ``inspect --json`` shows.
    """

    kind: str
    node: str | None
    tensor: str | None

    def __new__(cls, kind: str, message: str, node: str | None = None, tensor: str | None = None):
        self = super().__new__(cls, message)
        self.kind, self.node, self.tensor = kind, node, tensor
        return self

    @property
    def message(self) -> str:
        return str.__str__(self)

    def __reduce__(self):  # groups travel to worker processes
        return Skip, (self.kind, self.message, self.node, self.tensor)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "node": self.node, "tensor": self.tensor}


class NotPrunable(Exception):
    """A group cannot be pruned; ``skip`` says why, in structured form."""

    def __init__(self, message: str, kind: str = "other", node: str | None = None, tensor: str | None = None):
        super().__init__(message)
        self.skip = Skip(kind, message, node, tensor)

    def __reduce__(self):
        s = self.skip
        return NotPrunable, (s.message, s.kind, s.node, s.tensor)


@dataclass(frozen=True)
class Features:
    """Where a group's features are: `n` of them on axis `axis` (negative, from the end).

    Gemm/MatMul features are on the last axis (-1); a Conv's channels on axis 1, which is
    -3 for 2-D images [N, C, H, W]. `rank` is the tensors' rank when known.
    """

    n: int
    axis: int = -1
    rank: int | None = None

    @property
    def channel_first(self) -> bool:
        return self.rank is not None and self.rank + self.axis == 1


def domain_of(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def constant_slice(view, axis: int) -> ConstSlice:
    """Cut effective axis `axis` of a constant (and of the scales and zero points that run along it)."""
    stored = view.axes[axis]
    return ConstSlice(view.node, view.input, stored, view.chain, companions=view.cut_with(stored))

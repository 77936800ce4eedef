"""What every op spec shares: feature layouts, the slices a group makes, and why a group is skipped."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class ConstSlice:
    """The stored constant read at input ``input`` of node ``node``: keep-mask it along ``axis``.

    ``chain`` names the tensors between it and its user (Identity/Transpose), whose shapes
    change too; ``consumer`` is set on a consumer's weight slice (the node it belongs to);
    ``repeat`` > 1 expands the mask, for a Flatten between channels and a Gemm's rows.
    The mask itself comes from the layout the slice is placed with (groups.Placed).
    """

    node: int
    input: int
    axis: int
    chain: tuple = ()
    consumer: int | None = None
    repeat: int = 1


@dataclass(frozen=True)
class BlockSlice:
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


@dataclass(frozen=True)
class CountAttribute:
    """An integer attribute that must equal the number of kept features (a depthwise Conv's group), or
    that number divided by `divisor` (a fused attention's num_heads); a list attribute (qkv_hidden_sizes)
    has each entry set so."""

    node: int
    name: str
    divisor: int = 1


@dataclass(frozen=True)
class ShapeUpdate:
    """A Reshape's constant target shape whose entry `position` is features x `per_feature` (a flatten)."""

    node: int
    input: int
    position: int
    per_feature: int


@dataclass(frozen=True)
class PrivateTarget:
    """A Reshape (`reshape`) whose target is a Concat (`concat`) shared with other Reshapes, and whose
    entry `position` of the Concat's constant input `piece` (`old` before pruning) is the number of
    kept features: the rewrite gives this Reshape a copy of the Concat of its own, with that entry set."""

    reshape: int
    concat: int
    piece: int
    position: int
    old: tuple


@dataclass(frozen=True)
class CountEntry:
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


def domain_of(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def constant_slice(view, axis: int) -> ConstSlice:
    return ConstSlice(view.node, view.input, view.axes[axis], view.chain)

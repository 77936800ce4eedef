"""Where a tensor's features come from: pieces of producers' output spaces, and the offset union-find
that ties spaces together when an elementwise op combines them."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Piece:
    """Features [lo, hi) of the output space of producer node `space`; `space` None: features from
    outside every group (a graph input, an opaque tensor), always kept."""

    space: int | None
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo


Layout = tuple  # of Piece, in feature order along the tensor's feature axis


def width(layout: Layout) -> int:
    return sum(p.width for p in layout)


def sub(layout: tuple, lo: int, hi: int) -> tuple:
    """Features [lo, hi) of a tensor with this layout (of Pieces or of Segments)."""
    out, start = [], 0
    for p in layout:
        a, b = max(lo, start), min(hi, start + p.width)
        if a < b:
            out.append(replace(p, lo=p.lo + a - start, hi=p.lo + b - start))
        start += p.width
    return tuple(out)


def aligned(a: Layout, b: Layout) -> list[tuple[Piece, Piece]]:
    """Both layouts (same width) cut at every boundary of either: pairs of pieces that line up."""
    cuts = sorted({0, width(a)} | _bounds(a) | _bounds(b))
    return [(sub(a, x, y)[0], sub(b, x, y)[0]) for x, y in zip(cuts, cuts[1:])]


def _bounds(layout: Layout) -> set:
    out, at = set(), 0
    for p in layout:
        at += p.width
        out.add(at)
    return out


@dataclass(frozen=True)
class Segment:
    """Features [lo, hi) of group `group`'s neurons (None: kept features from outside any group)."""

    group: str | None
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo


class OffsetUnionFind:
    """Union-find over producers' output spaces where a member sits at an offset inside its root.

    find(s) = (root, offset): feature i of space s is feature i + offset of the root's space.
    Tying features [a1, a1+w) of s1 to [a2, a2+w) of s2 places the smaller root inside the
    larger at the offset that lines them up; that must fit, and two ties within one set must
    agree, or the union is refused (a reason is returned).
    """

    def __init__(self):
        self.size: dict[int, int] = {}
        self.parent: dict[int, tuple[int, int]] = {}

    def add(self, space: int, size: int) -> None:
        self.size[space] = size
        self.parent[space] = (space, 0)

    def find(self, s: int) -> tuple[int, int]:
        parent, offset = self.parent[s]
        if parent == s:
            return s, 0
        root, above = self.find(parent)
        self.parent[s] = (root, offset + above)
        return root, offset + above

    def union(self, s1: int, a1: int, s2: int, a2: int, w: int) -> str | None:
        r1, o1 = self.find(s1)
        r2, o2 = self.find(s2)
        at1, at2 = o1 + a1, o2 + a2
        if r1 == r2:
            return None if at1 == at2 else "ties channels of one set to shifted channels of the same set"
        d = at2 - at1  # feature i of r1 is feature i + d of r2
        if 0 <= d and d + self.size[r1] <= self.size[r2]:
            self.parent[r1] = (r2, d)
        elif 0 <= -d and -d + self.size[r2] <= self.size[r1]:
            self.parent[r2] = (r1, -d)
        else:
            return "ties channel ranges that only partly overlap"
        return None

"""From a finished walk to NeuronGroups: each union-find set of producer spaces is one group.

Each set gets a stable id (its first producer's node_id); every layout the walk recorded (placed
edits, consumers' reads, region nodes, tensors) is resolved from pieces of producer spaces into
segments of groups, and filed under every group it touches. A group is prunable unless one of its
spaces was blocked; it then carries the first reason.
"""

from __future__ import annotations

from ..graph import GraphIndex
from ..ops import CountEntry, Features, NotPrunable, Skip
from .layout import Piece, Segment, sub
from .model import Consumer, NeuronGroup, Placed
from .state import Walk


def build_groups(walk: Walk) -> list[NeuronGroup]:
    """Every group of the walk, in producer order (a producer that failed its checks is a group with the
    reason); the K/V producers of grouped-query attention belong to their query heads' group."""
    sets = _Sets(walk)
    filed = sets.file()
    groups = []
    for i in sorted(sets.ids):
        if i in sets.derived:
            continue  # its neurons belong to the query heads' group
        if i in walk.failed:
            groups.append(_failed(walk, i, sets.ids[i]))
            continue
        root = walk.uf.find(i)[0]
        if sets.members[root][0] == i:
            groups.append(_group(walk, sets, filed, i, root))
    return groups


class _Sets:
    """The union-find sets of a finished walk: their members, ids, and how a layout resolves onto them."""

    def __init__(self, walk: Walk):
        self.walk = walk
        index, uf = walk.index, walk.uf
        self.ids: dict[int, str] = {}
        for i in range(len(index.nodes)):
            if i in uf.size or i in walk.failed:
                self.ids[i] = node_id(index, i, set(self.ids.values()))
        self.members: dict[int, list[int]] = {}
        for space in sorted(uf.size):
            self.members.setdefault(uf.find(space)[0], []).append(space)
        self.derived = _derived(walk, self.members)
        for space in self.derived:
            self.members.pop(uf.find(space)[0], None)
        self.group_of = {root: self.ids[m[0]] for root, m in self.members.items()}

    def resolve(self, layout: tuple) -> tuple:
        """A layout of pieces of producer spaces as segments of groups."""
        out = []
        for p in layout:
            if p.space is None:
                out.append(Segment(None, 0, p.width))
            elif p.space in self.derived:  # K/V head g: the first head_dim neurons of query group g
                target, r, d = self.derived[p.space]
                for g in range(p.lo // d, -(-p.hi // d)):
                    a, b = max(p.lo, g * d), min(p.hi, (g + 1) * d)
                    out += self.resolve((Piece(target, g * r * d + a - g * d, g * r * d + b - g * d),))
            else:
                root, offset = self.walk.uf.find(p.space)
                out.append(Segment(self.group_of[root], p.lo + offset, p.hi + offset))
        return tuple(out)

    def file(self) -> dict[str, dict[str, list]]:
        """What the walk recorded, by kind and then by the group ids it touches."""
        walk, resolve = self.walk, self.resolve
        balanced = self._balanced()
        resolved = [(item, resolve(layout)) for item, layout in walk.placed]
        for consumer, layout in walk.reads:
            consumer.layout = resolve(layout)
        entries: dict[tuple, set] = {}  # a shape constant rewritten for two groups could not follow both
        for item, layout in resolved:
            if isinstance(item, CountEntry):
                entries.setdefault((item.node, item.input), set()).update(s.group for s in layout if s.group)
        tensors = [(name, resolve(info.layout)) for name, info in self.walk.info.items()]
        tensors += [(name, resolve(layout)) for name, layout in walk.vias]
        return {
            "balanced": balanced,
            "placed": _by_group((Placed(item, layout), layout) for item, layout in resolved),
            "reads": _by_group((c, c.layout) for c, _ in walk.reads),
            "region": _by_group((i, resolve(layout)) for i, layout in walk.region),
            "attention": _by_group((i, resolve(layout)) for i, layout in walk.attention_nodes),
            "shared_entry": {gid: key for key, gids in entries.items() if len(gids) > 1 for gid in gids},
            "tensors": _by_group(tensors),
            "layouts": _by_group(((name, layout), layout) for name, layout in tensors),
        }

    def _balanced(self) -> dict[str, list]:
        """Per group, the sets of neuron ranges a grouped Conv reads or writes in equal-count blocks (a
        grouped Conv consumer whose blocks do not map onto one group blocks what it reads)."""
        walk, uf = self.walk, self.walk.uf
        balanced: dict[str, list] = {}
        for consumer, layout in walk.reads:
            if consumer.blocks > 1:
                try:
                    blocks = _consumer_blocks(walk.index, consumer, self.resolve(layout))
                except NotPrunable as e:
                    walk.block(layout, e.skip)
                    continue
                balanced.setdefault(blocks[0][0], []).append(tuple((lo, hi) for _, lo, hi in blocks))
        for space, g in walk.blocks_of.items():
            root, offset = uf.find(space)
            per = uf.size[space] // g
            balanced.setdefault(self.group_of[root], []).append(
                tuple((offset + b * per, offset + (b + 1) * per) for b in range(g)))
        return balanced


def _by_group(pairs) -> dict[str, list]:
    """Each thing under every group its resolved layout touches (in the order given)."""
    out: dict[str, list] = {}
    for thing, layout in pairs:
        for gid in dict.fromkeys(s.group for s in layout if s.group is not None):
            out.setdefault(gid, []).append(thing)
    return out


def _failed(walk: Walk, i: int, gid: str) -> NeuronGroup:
    index = walk.index
    skip, size = walk.failed[i]
    return NeuronGroup(index.node_name(i), index.nodes[i].op_type, size, reason=skip, id=gid, producer_node=i,
                       producers=[(i, 0, size)] if size else [], producer_names=[index.node_name(i)])


def _group(walk: Walk, sets: _Sets, filed: dict, i: int, root: int) -> NeuronGroup:
    """The group of the set whose first producer is node `i`."""
    index, uf = walk.index, walk.uf
    gid = sets.group_of[root]
    spaces = sets.members[root]
    g = NeuronGroup(index.node_name(i), index.nodes[i].op_type, uf.size[root], id=gid, producer_node=i)
    g.producers = [(m, uf.find(m)[1], uf.size[m]) for m in spaces]
    extra = [m for m, (t, _, _) in sets.derived.items() if uf.find(t)[0] == root]
    g.derived = [(m, sets.resolve((Piece(m, 0, uf.size[m]),))) for m in extra]
    g.producer_names = [index.node_name(m) for m in spaces + extra]
    spaces = spaces + extra
    f = walk.features_of[root]
    g.features = Features(uf.size[root], f.axis, f.rank)
    g.slices = filed["placed"].get(gid, [])
    mine = sorted(filed["reads"].get(gid, []), key=lambda c: c.node)
    g.consumer_info = {c.node: c for c in mine}
    g.consumer_nodes = [c.node for c in mine]
    g.consumers = [index.node_name(c.node) for c in mine]
    g.taps = list(dict.fromkeys(c.tap for c in mine))
    g.tap = g.taps[0] if g.taps else None
    nodes = filed["region"].get(gid, [])
    g.region = [index.node_name(n) for n in nodes]
    g.region_ops = [index.nodes[n].op_type for n in nodes]
    g.tensors = sorted(set(filed["tensors"].get(gid, [])))
    g.layouts = dict(filed["layouts"].get(gid, []))
    g.nonempty = _nonempty(g)
    dims = set().union(*(walk.head_dims.get(m, set()) for m in spaces))
    repeats = {sets.derived[m][1] for m in extra}
    if dims:
        g.kind, g.head_dim, g.unit = "heads", min(dims), min(dims) * max(repeats or {1})
        g.attention = sorted(set(filed["attention"].get(gid, [])))
    g.balanced = list(dict.fromkeys(filed["balanced"].get(gid, [])))
    g.reason = _reason(walk, g, spaces, dims, repeats, filed["shared_entry"])
    return g


def _reason(walk: Walk, g: NeuronGroup, spaces: list, dims: set, repeats: set, shared_entry: dict) -> Skip | None:
    """Why the group is not prunable, or None."""
    index = walk.index
    blocks = [m for m in spaces if m in walk.blocked]
    if blocks:
        skip = walk.blocked[blocks[0]]
        if len(spaces) > 1:
            others = ", ".join(index.node_name(m) for m in spaces)
            skip = Skip(skip.kind, f"{skip.message} (channels shared by {others})", skip.node, skip.tensor)
        return skip
    if not g.consumer_info:
        return Skip("no-consumer", "no Gemm/MatMul/Conv consumes the group's features")
    if len(dims) > 1 or len(repeats) > 1 or any(o % g.unit or n % g.unit for _, o, n in g.producers):
        return Skip("attention", f"heads of different sizes ({sorted(dims)}) or key/value heads repeated "
                    f"differently ({sorted(repeats)}) share one set of neurons")
    if g.id in shared_entry:
        node, _ = shared_entry[g.id]
        return Skip("attention", f"a shape constant of {index.node_name(node)} counts the heads of "
                    "more than one group", index.node_name(node))
    return None


def _derived(walk: Walk, members: dict) -> dict:
    """The key/value spaces of grouped-query attention, each derived from one query space: valid when
    the K/V space shares its neurons with nothing else (else both are blocked, with the reason)."""
    out = {}
    for space, (target, r, d) in walk.derived.items():
        alone = members.get(walk.uf.find(space)[0]) == [space]
        if alone and target not in walk.derived and walk.uf.find(target)[0] != walk.uf.find(space)[0]:
            out[space] = (target, r, d)
            continue
        skip = Skip("attention", f"the key/value heads of {walk.index.node_name(space)} are shared with "
                    "more than the query heads they serve", walk.index.node_name(space))
        walk.blocked.setdefault(space, skip)
        walk.blocked.setdefault(target, skip)
    return out


def _consumer_blocks(index: GraphIndex, consumer: Consumer, layout: tuple) -> list[tuple[str, int, int]]:
    """(group, lo, hi) of each channel block of a grouped Conv's input: each block must be one piece of
    one group, the same group for all, so that one mask can keep equal counts in every block."""
    per = sum(s.width for s in layout) // consumer.blocks
    label = index.node_name(consumer.node)
    out = []
    for b in range(consumer.blocks):
        part = _joined(sub(layout, b * per, (b + 1) * per))
        if any(s.group is None for s in part):
            raise NotPrunable(f"{label} (group={consumer.blocks}) reads features from outside every group in "
                              f"channel block {b}: its blocks must keep equal counts, and those cannot be cut",
                              "grouped-conv", label, consumer.tap)
        if len(part) != 1 or part[0].group != layout[0].group:
            raise NotPrunable(f"{label} (group={consumer.blocks}) reads channel blocks made of several groups' "
                              "neurons (or of non-contiguous pieces): equal kept counts per block would tie "
                              "separate keep-masks, which is not done", "grouped-conv", label, consumer.tap)
        out.append((part[0].group, part[0].lo, part[0].hi))
    return out


def _joined(segments: tuple) -> tuple:
    """Adjacent segments that continue each other in one group's index space, as one."""
    out = []
    for s in segments:
        if out and s.group is not None and out[-1].group == s.group and out[-1].hi == s.lo:
            out[-1] = Segment(s.group, out[-1].lo, s.hi)
        else:
            out.append(s)
    return tuple(out)


def _nonempty(g: NeuronGroup) -> list[tuple[int, int]]:
    """The ranges of the group's neurons of which one must stay: every part of a Split and every Slice
    whose features start in this group (an empty part would be a zero-size tensor)."""
    out = []
    for placed in g.slices:
        for lo, hi in placed.item.nonempty():
            segments = sub(placed.layout, lo, hi)
            if any(s.group is None for s in segments) or not segments or segments[0].group != g.id:
                continue  # kept anyway, or another group's duty
            out.append((segments[0].lo, segments[0].hi))
    return sorted(set(out))


def node_id(index: GraphIndex, i: int, taken: set = frozenset()) -> str:
    """A node's name where it names only this node; else its name (or op type) and its node index."""
    name = index.nodes[i].name
    if name and index.name_count(name) == 1:
        return name
    candidate = f"{name or index.nodes[i].op_type}#{i}"
    while candidate in taken or index.name_count(candidate):  # a node may be literally named "Gemm#3"
        candidate += f"#{i}"
    return candidate

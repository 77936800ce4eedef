"""The neuron group: every place one set of neurons lives, possibly across several producers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph import ConstantView
from ..ops import LINEAR, Features, LinearSpec, Skip
from .layout import Segment


@dataclass(frozen=True)
class Placed:
    """Something the rewrite changes (a ConstSlice, BlockSlice, CountAttribute, ShapeUpdate, SplitSizes or SliceBounds)
    and the layout of the features it follows: its keep-mask is assembled from every group in it."""

    item: object
    layout: tuple  # of Segment


@dataclass
class Consumer:
    """How one consumer reads groups: its node, its weight, the tensor it reads (the tap) and that tensor's
    layout (which group each of its features belongs to), and the rows per feature (Flatten: H*W)."""

    node: int
    view: ConstantView
    op: str
    repeat: int = 1
    via: str | None = None  # the tensor a Flatten/Reshape made from the tap, if any
    tap: str | None = None
    layout: tuple = ()      # of Segment
    blocks: int = 1         # a grouped Conv's number of channel blocks (its `group`)

    @property
    def spec(self) -> LinearSpec:
        return LINEAR[self.op]

    @property
    def width(self) -> int:
        return sum(s.width for s in self.layout)

    @property
    def single_group(self) -> str | None:
        """The group whose neurons are all this consumer reads, in one contiguous block (else None)."""
        if len(self.layout) == 1 and self.layout[0].group is not None:
            return self.layout[0].group
        return None

    def pieces(self, group: str) -> list[tuple[int, int, int, int]]:
        """(tensor lo, tensor hi, group lo, group hi) of each block of `group`'s neurons it reads."""
        out, at = [], 0
        for s in self.layout:
            if s.group == group:
                out.append((at, at + s.width, s.lo, s.hi))
            at += s.width
        return out


def keep_of(layout: tuple, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The keep-mask of a tensor's features: each group's mask on its segments, True elsewhere."""
    parts = [masks[s.group][s.lo:s.hi] if s.group in masks else np.ones(s.width, bool) for s in layout]
    return np.concatenate(parts) if parts else np.ones(0, bool)


@dataclass
class NeuronGroup:
    """A set of neurons with one keep-mask: one producer's output features, or several producers'
    tied together by residual Adds, gating Muls, Concat and Split (a coupled group).

    Example: ``x -> Conv a -> BN -> Relu -> r -> Conv b -> s; y = Add(s, x') -> Relu -> Conv c`` where
    ``x'`` is the output of Conv p: Conv b's and Conv p's channels are one index space, so they form
    one group of ``producers`` [(p, 0, C), (b, 0, C)], read at two taps (``x'`` by Conv a, the Relu
    of ``y`` by Conv c); removing neuron j cuts output channel j of p and b, their biases and
    BatchNorm entries, and input channel j of a and c. Conv a alone is a plain group.
    """

    name: str                    # the (first) producer node's name (not unique in every model: see `id`)
    producer_op: str
    size: int | None             # number of neurons (output features of the first producer, or of the set)
    tap: str | None = None       # the first tensor a consumer reads: see `taps`
    region: list[str] = field(default_factory=list)     # pass-through node names
    region_ops: list[str] = field(default_factory=list)  # their op types
    consumers: list[str] = field(default_factory=list)  # consumer node names
    slices: list = field(default_factory=list)          # Placed: what the rewrite changes
    tensors: list[str] = field(default_factory=list)    # every tensor carrying the features
    producer_node: int = -1                              # node indices, for the rewriter
    consumer_nodes: list[int] = field(default_factory=list)
    consumer_info: dict[int, Consumer] = field(default_factory=dict, repr=False)
    features: Features | None = field(default=None, repr=False)
    reason: Skip | None = None   # why the group is not prunable; None if it is
    id: str = ""                 # unique in the model and stable across runs: statistics and masks are keyed by it
    producers: list[tuple[int, int, int]] = field(default_factory=list)  # (node, offset, size) of every producer
    producer_names: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)       # every tensor a consumer reads (statistics are taken there)
    nonempty: list[tuple[int, int]] = field(default_factory=list)  # neuron ranges that must keep one (a Split's part)
    kind: str = "neurons"        # "heads": attention heads, cut in whole units of `unit` neurons
    unit: int = 1                # neurons that go together: consecutive blocks of this many (a head's head_dim;
                                 # with grouped-query attention, the query heads of one key/value head)
    head_dim: int = 1
    attention: list[int] = field(default_factory=list)  # attention MatMuls (Q Kᵀ, P V) whose cost the heads share
    derived: list = field(default_factory=list)  # (node, layout): K/V producers of grouped-query attention, whose
                                                 # head g is the first head_dim neurons of unit g
    # sets of equal-width neuron ranges (lo, hi), one per channel block of a grouped Conv that writes or reads
    # the group: within a set every range keeps the same number of neurons, at least one
    balanced: list[tuple[tuple[int, int], ...]] = field(default_factory=list)
    # per tensor carrying the group's features, their layout (of Segment): which features of which groups
    # it holds, in order (a residual block's removal cuts its folded constant with the stream's masks)
    layouts: dict[str, tuple] = field(default_factory=dict, repr=False)

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1 or (bool(self.consumer_info) and self.single_tap is None)

    @property
    def axis(self) -> int:
        """The feature axis of the taps (negative: -1 for Gemm/MatMul, 1 - rank for Conv channels)."""
        return self.features.axis if self.features else -1

    @property
    def consumer_views(self) -> dict[int, ConstantView]:
        return {c: info.view for c, info in self.consumer_info.items()}

    @property
    def single_tap(self) -> str | None:
        """The tap, when every consumer reads one tensor that holds exactly this group's neurons in order."""
        if len(self.taps) != 1:
            return None
        whole = (Segment(self.id, 0, self.size),)
        return self.taps[0] if all(c.layout == whole for c in self.consumer_info.values()) else None

    def statistics(self, tap_stats: dict):
        """Per neuron, the statistics pooled over every tap that reads it (a neuron no consumer reads is
        reported as never active: removing it changes nothing)."""
        from ..stats import ActivationStats

        if self.single_tap is not None:
            return tap_stats[self.single_tap]
        n = self.size
        count, mean, m2 = np.zeros(n), np.zeros(n), np.zeros(n)
        zeros, max_abs = np.zeros(n), np.zeros(n)
        seen = set()
        for c in self.consumer_info.values():
            for t_lo, t_hi, g_lo, g_hi in c.pieces(self.id):
                if (c.tap, t_lo, g_lo) in seen:
                    continue
                seen.add((c.tap, t_lo, g_lo))
                s = tap_stats[c.tap]
                if not s.count:
                    continue
                k = slice(g_lo, g_hi)
                b_mean, b_m2 = s.mean[t_lo:t_hi], s.m2[t_lo:t_hi]
                total = count[k] + s.count
                delta = b_mean - mean[k]
                mean[k] = mean[k] + delta * (s.count / total)
                m2[k] = m2[k] + b_m2 + delta**2 * (count[k] * s.count / total)
                count[k] = total
                zeros[k] += s.zeros[t_lo:t_hi]
                max_abs[k] = np.maximum(max_abs[k], s.max_abs[t_lo:t_hi])
        common = int(count.max()) if n else 0
        scale = np.divide(common, count, out=np.zeros(n), where=count > 0)
        return ActivationStats(common, mean, m2 * scale, zeros * scale, max_abs)

    def neuron_costs(self, macs: dict[int, int]) -> np.ndarray:
        """Per neuron, the multiply-adds it costs: its share of every producer's and consumer's MACs."""
        cost = np.zeros(self.size)
        for node, offset, size in self.producers:
            cost[offset:offset + size] += macs.get(node, 0) / size
        for c in self.consumer_info.values():
            for _, _, g_lo, g_hi in c.pieces(self.id):
                cost[g_lo:g_hi] += macs.get(c.node, 0) / max(c.width, 1)
        for node in self.attention:
            cost += macs.get(node, 0) / max(self.size, 1)
        for node, _ in self.derived:  # K/V head g serves unit g: spread evenly, as every unit has one
            cost += macs.get(node, 0) / max(self.size, 1)
        return cost

    @property
    def units(self) -> int:
        return (self.size or 0) // self.unit

    def whole_units(self, mask: np.ndarray) -> np.ndarray:
        """The mask with every unit (head) that keeps any neuron kept whole."""
        if self.unit == 1:
            return mask
        return np.repeat(mask.reshape(-1, self.unit).any(axis=1), self.unit)

    def unit_scores(self, scores: np.ndarray, how: str = "mean") -> np.ndarray:
        """Per neuron, its unit's score (mean, or max for thresholds): neurons of a head rank together."""
        if self.unit == 1:
            return scores
        blocks = np.asarray(scores, np.float64).reshape(-1, self.unit)
        per_unit = blocks.max(axis=1) if how == "max" else blocks.mean(axis=1)
        return np.repeat(per_unit, self.unit)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "producer_op": self.producer_op,
            "neurons": self.size,
            "producers": self.producer_names,
            "tap": self.tap,
            "taps": self.taps,
            "region": self.region,
            "region_ops": self.region_ops,
            "consumers": self.consumers,
            "balanced_blocks": [[list(r) for r in blocks] for blocks in self.balanced],
            "prunable": self.prunable,
            "kind": self.kind,
            "unit": self.unit,
            "head_dim": self.head_dim,
            "reason": None if self.reason is None else str(self.reason),
            "skip": None if self.reason is None else self.reason.to_dict(),
        }

"""How a consumer reads its tap: the rows its weight multiplies, and their Gram matrices.

Every refittable consumer is Y = Z W + b over rows Z of its input, with W its weight as a matrix:
- a Gemm/MatMul (or a 1x1 Conv with unit strides and no padding) multiplies each position's features:
  Z is the tap with the features last, one row per position;
- a k x k Conv multiplies im2col patches: at each output position, the (dilated) kernel window of every
  input channel of its block, zeros where it overlaps the padding; Z has C/group x kh x kw columns,
  channel-major like the weight's [C_out, C/group, kh, kw], so W is that weight reshaped
  [C_out, C/group x kh x kw] and transposed;
- a Gemm behind a Flatten of [N, C, H, W] multiplies each sample's C x H x W values, channel-major.

A channel is `repeat` consecutive columns of Z (kh x kw, or H x W), removed together. A grouped Conv
reads channel block b with the weight columns of output block b only: each block is a problem of its
own, with a Gram matrix of its own. The compensation (compensate.py, refit.py) is the same closed form
in every case; this module says what Z is and accumulates [Z 1]^T [Z 1] over the data, on two folds of
the samples, in float64, without ever holding more than a piece of the patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import GraphIndex
from .ops.window import Window
from .refit import FoldGrams, Gram

MAX_GRAM_FEATURES = 8192  # columns of Z per block above which a consumer gets no Gram matrix (it folds)
# Bytes of every Gram matrix of a pass together (a FoldGrams is one (F+1)^2 float64 matrix): the smallest
# consumers get theirs first, the others fold. A ResNet-50's consumers need about 1.3 GiB.
MAX_GRAM_BYTES = 3 << 30
PATCH_BYTES = 32 << 20  # patches cut at once from a piece of the tap (samples at a time)


@dataclass(frozen=True)
class Reading:
    """What one consumer multiplies: `channels` features of tensor `tap` (on `axis`, negative), in `blocks`
    channel blocks, each channel `repeat` columns of Z: the kernel's (`window`) or a Flatten's positions
    (`flatten`); neither: the positions' features."""

    tap: str
    channels: int
    axis: int = -1
    blocks: int = 1
    repeat: int = 1
    window: Window | None = None
    flatten: bool = False

    @property
    def key(self) -> str:
        """Equal for consumers that read the same rows (their Gram matrices are one)."""
        if self.window is not None:
            how = f"conv {self.window.describe()}"
        elif self.flatten:
            how = f"flatten x{self.repeat}"
        else:
            how = ""
        if self.blocks > 1:
            how = f"{how} g{self.blocks}".strip()
        return f"{self.tap} [{how}]" if how else self.tap

    @property
    def block_features(self) -> int:
        """Columns of Z per block (without the bias's)."""
        return self.channels // self.blocks * self.repeat

    def block_keys(self) -> list[str]:
        return [self.key] if self.blocks == 1 else [f"{self.key} #{b}" for b in range(self.blocks)]

    def gram_bytes(self) -> int:
        return self.blocks * (self.block_features + 1) ** 2 * 8

    def rows(self, value: np.ndarray) -> np.ndarray:
        """Z of a piece of the tap: [samples, rows per sample..., columns], samples first."""
        value = np.asarray(value)
        if self.window is not None:
            return self.window.patches(value)
        if self.flatten:
            return value.reshape(len(value), -1)
        return value if self.axis == -1 else np.moveaxis(value, self.axis, -1)

    def step(self, value: np.ndarray) -> int:
        """Samples per piece of this tap value: all of them, or as many as make PATCH_BYTES of patches
        (im2col multiplies a tap by the kernel's size over its strides)."""
        n = len(value)
        if self.window is None or not n:
            return max(n, 1)
        per_sample = value[:1].nbytes * self.window.size / max(1, np.prod(self.window.strides))
        return max(1, int(PATCH_BYTES // max(per_sample, 1)))

    def pieces(self, value: np.ndarray):
        """Z by pieces of a few samples: (start, stop, rows)."""
        n, step = len(value), self.step(value)
        for start in range(0, n, step):
            yield start, min(n, start + step), self.rows(value[start:start + step])


def reading_of(index: GraphIndex, consumer, channel_first: bool) -> Reading | None:
    """How a consumer reads its tap, or None when the refit does not apply to it (ConvTranspose, a
    non-constant weight, a Flatten of features that are not channels, a quantised weight: new rows of it
    would need scales of their own)."""
    spec = consumer.spec
    if not spec.refittable or consumer.tap is None or consumer.view.dequant:
        return None
    node = index.nodes[consumer.node]
    if consumer.via is not None:  # a Flatten/Reshape of [N, C, ...] into [N, C x ...]: rows are samples
        return Reading(consumer.tap, consumer.width, repeat=consumer.repeat, flatten=True) if channel_first \
            else None
    window = spec.window(node, consumer.view.shape)
    if window is None or window.trivial:
        return Reading(consumer.tap, consumer.width, 1 - len(consumer.view.shape) if spec.channels_first else -1,
                       consumer.blocks)
    return Reading(consumer.tap, consumer.width, 1, consumer.blocks, window.size, window)


def consumer_readings(index: GraphIndex, groups) -> dict[int, Reading]:
    """Per consumer node of the prunable groups, how it reads its tap (consumers the refit cannot serve
    are left out)."""
    out = {}
    for g in groups:
        if not g.prunable:
            continue
        channel_first = g.features is not None and g.features.channel_first
        for node, c in g.consumer_info.items():
            if node not in out:
                r = reading_of(index, c, channel_first)
                if r is not None:
                    out[node] = r
    return out


def plan_grams(readings, max_features: int | None = None,
               max_bytes: int | None = None) -> tuple[dict[str, Reading], dict[str, str]]:
    """The readings that get Gram matrices (by key), and why each other one does not: a block wider than
    `max_features` columns, or past `max_bytes` of all of them together (the smallest go first)."""
    max_features = MAX_GRAM_FEATURES if max_features is None else max_features
    max_bytes = MAX_GRAM_BYTES if max_bytes is None else max_bytes
    unique = {r.key: r for r in readings}
    kept, notes, total = {}, {}, 0
    for key, r in sorted(unique.items(), key=lambda kv: (kv[1].gram_bytes(), kv[0])):
        if r.block_features > max_features:
            notes[key] = (f"its Gram matrix would have {r.block_features:,} columns per block (more than "
                          f"{max_features:,}: MAX_GRAM_FEATURES)")
        elif total + r.gram_bytes() > max_bytes:
            notes[key] = (f"its Gram matrices ({r.gram_bytes() / 2**20:,.0f} MiB) would take the pass past "
                          f"{max_bytes / 2**30:.1f} GiB (MAX_GRAM_BYTES)")
        else:
            kept[key] = r
            total += r.gram_bytes()
    return kept, notes


class ReadingGrams:
    """[Z 1]^T [Z 1] of one reading over the calibration samples, per channel block, on two folds of
    them (every second sample: see runtime)."""

    def __init__(self, reading: Reading):
        self.reading = reading
        self.pairs = [FoldGrams(reading.block_features) for _ in range(reading.blocks)]

    def update(self, value: np.ndarray, second: np.ndarray, mask: np.ndarray | None = None) -> "ReadingGrams":
        """Add a piece of the tap as fetched ([samples, ...]); `second` per sample, `mask` (padding positions,
        shaped like the features-last tap's leading axes) for position rows only."""
        width = self.reading.block_features
        for start, stop, rows in self.reading.pieces(value):
            plain = self.reading.window is None and not self.reading.flatten
            part = mask[start:stop] if plain and mask is not None and mask.shape == rows.shape[:-1] else None
            for b, pair in enumerate(self.pairs):
                block = rows if len(self.pairs) == 1 else rows[..., b * width:(b + 1) * width]
                pair.update(block, second[start:stop], part)
        return self

    def grams(self, scratch: str | None = None) -> dict[str, tuple[Gram, Gram]]:
        """Per block key: (Gram of both folds, Gram of the second), each moved to a file."""
        out = {}
        for key, pair in zip(self.reading.block_keys(), self.pairs):
            out[key] = tuple(g.offload(scratch) for g in pair.grams())
        self.pairs = []
        return out

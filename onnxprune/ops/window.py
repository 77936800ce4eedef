"""The windows a Conv cuts from its input, and the im2col patches they make (the rows a Conv multiplies)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """The windows a Conv cuts from its input: kernel shape, strides, pads (begins then ends, as ONNX
    writes them), dilations and auto_pad."""

    kernel: tuple
    strides: tuple
    pads: tuple
    dilations: tuple
    auto_pad: str = "NOTSET"

    @property
    def size(self) -> int:
        return int(np.prod(self.kernel, dtype=np.int64))

    @property
    def trivial(self) -> bool:
        """Every position is one row of the channels: a 1x1 kernel, unit strides, no padding."""
        return (self.size == 1 and all(s == 1 for s in self.strides)
                and (not any(self.pads) or self.auto_pad != "NOTSET"))

    def describe(self) -> str:
        def x(values):
            return "x".join(str(v) for v in values)

        pads = self.auto_pad if self.auto_pad != "NOTSET" else ",".join(str(p) for p in self.pads)
        return f"k{x(self.kernel)} s{x(self.strides)} p{pads} d{x(self.dilations)}"

    def padding(self, spatial: tuple) -> list[tuple[int, int]]:
        """(before, after) zeros per spatial axis, for an input of these spatial sizes."""
        r = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for n, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                small = total // 2
                out.append((small, total - small) if self.auto_pad == "SAME_UPPER" else (total - small, small))
            return out
        if self.auto_pad == "VALID":
            return [(0, 0)] * r
        return list(zip(self.pads[:r], self.pads[r:]))

    def patches(self, x: np.ndarray) -> np.ndarray:
        """[n, C, *spatial] -> [n, positions, C x prod(kernel)], channel-major (a copy)."""
        r = len(self.kernel)
        pads = self.padding(x.shape[2:])
        if any(p for pair in pads for p in pair):
            x = np.pad(x, [(0, 0), (0, 0), *pads])
        extent = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]
        w = np.lib.stride_tricks.sliding_window_view(x, extent, axis=tuple(range(2, 2 + r)))
        w = w[(slice(None), slice(None), *(slice(None, None, s) for s in self.strides),
               *(slice(None, None, d) for d in self.dilations))]  # [n, C, *out, *kernel]
        n, c = x.shape[:2]
        return np.moveaxis(w, 1, 1 + r).reshape(n, -1, c * self.size)

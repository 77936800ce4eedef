"""Streaming, mergeable per-neuron activation statistics.

Moments are kept in float64 and merged with Chan et al.'s pairwise formula, so one
pass over the data, or any split of it merged afterwards, gives the same result.
Memory depends on the number of neurons only, never on the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ActivationStats:
    """Per-feature count, mean, M2 (sum of squared deviations), zero count and max |a|."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    zeros: np.ndarray
    max_abs: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> "ActivationStats":
        return cls(0, np.zeros(n_features), np.zeros(n_features),
                   np.zeros(n_features, dtype=np.int64), np.zeros(n_features))

    @classmethod
    def of(cls, activations: np.ndarray, mask: np.ndarray | None = None,
           shift: np.ndarray | None = None) -> "ActivationStats":
        """Statistics of one batch, reduced over every axis but the last (the features).

        ``mask`` (shaped like the leading axes) selects the positions that count. Sums are
        taken in float64 around ``shift`` (a guess of the mean, e.g. the running one), so
        large offsets lose no precision while the batch itself stays in its own dtype.
        """
        a = np.asarray(activations)
        n_features = a.shape[-1]
        a = a.reshape(-1, n_features)
        if mask is not None:
            a = a[np.asarray(mask, bool).reshape(-1)]
        n = a.shape[0]
        if n == 0:
            return cls.empty(n_features)
        if a.dtype.kind != "f":
            a = a.astype(np.float64)
        if shift is None:
            shift = a[: min(n, 64)].mean(axis=0)
        y = a - shift.astype(a.dtype, copy=False)
        s1 = y.sum(axis=0, dtype=np.float64)
        np.multiply(y, y, out=y)
        s2 = y.sum(axis=0, dtype=np.float64)
        mean_y = s1 / n
        m2 = np.maximum(s2 - s1 * mean_y, 0.0)
        mean = shift.astype(np.float64) + mean_y
        max_abs = np.maximum(a.max(axis=0), -a.min(axis=0)).astype(np.float64)
        return cls(n, mean, m2, np.count_nonzero(a == 0, axis=0).astype(np.int64), max_abs)

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return ActivationStats(n, mean, m2, self.zeros + other.zeros,
                               np.maximum(self.max_abs, other.max_abs))

    def update(self, activations: np.ndarray, mask: np.ndarray | None = None) -> "ActivationStats":
        merged = self.merge(ActivationStats.of(activations, mask, shift=self.mean if self.count else None))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        self.zeros, self.max_abs = merged.zeros, merged.max_abs
        return self

    @property
    def n_features(self) -> int:
        return len(self.mean)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0)."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.mean)

    @property
    def zero_fraction(self) -> np.ndarray:
        return self.zeros / self.count if self.count else np.zeros_like(self.mean)

    @property
    def dead(self) -> np.ndarray:
        """Neurons that were exactly zero on every sample seen."""
        return (self.max_abs == 0) if self.count else np.zeros(self.n_features, bool)

    def summary(self) -> dict:
        q = [0.0, 0.25, 0.5, 0.75, 1.0]
        return {
            "count": int(self.count),
            "neurons": self.n_features,
            "dead": int(self.dead.sum()),
            "mean_quantiles": np.quantile(self.mean, q).tolist() if self.count else None,
            "std_quantiles": np.quantile(self.std, q).tolist() if self.count else None,
        }

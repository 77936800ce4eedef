"""Which neurons to keep: criteria map a group's statistics to a keep-mask.

A criterion is registered by name; the CLI's choices come from this registry.
Every criterion keeps at least one neuron per group, so no layer is emptied.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .stats import ActivationStats

Criterion = Callable[..., np.ndarray]
CRITERIA: dict[str, Criterion] = {}


def register(name: str):
    def wrap(fn: Criterion) -> Criterion:
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered")
        CRITERIA[name] = fn
        return fn

    return wrap


def never_empty(keep: np.ndarray, stats: ActivationStats) -> np.ndarray:
    """Keep the most varying neuron when a criterion would remove them all."""
    if not keep.any():
        keep = keep.copy()
        keep[int(np.argmax(stats.std + np.abs(stats.mean)))] = True
    return keep


@register("dead")
def dead(stats: ActivationStats, **_) -> np.ndarray:
    """Remove only neurons that were exactly zero on every sample: the outputs cannot change."""
    return never_empty(~stats.dead, stats)


@register("seed")
def seed(stats: ActivationStats, *, mean_threshold: float | None = None,
         std_threshold: float | None = None, **_) -> np.ndarray:
    """Remove a neuron when |mean| < mean_threshold and std < std_threshold.

    A threshold left out does not constrain (it is taken as infinite). The mean is
    taken in absolute value: "near zero" for activations that can be negative too.
    """
    mt = math.inf if mean_threshold is None else mean_threshold
    st = math.inf if std_threshold is None else std_threshold
    remove = (np.abs(stats.mean) < mt) & (stats.std < st)
    return never_empty(~remove, stats)


def keep_masks(stats: dict[str, ActivationStats], criterion: str = "dead", **settings) -> dict[str, np.ndarray]:
    """A keep-mask per group, by the named criterion."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    fn = CRITERIA[criterion]
    return {name: fn(s, **settings) for name, s in stats.items()}

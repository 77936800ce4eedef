"""Pictures for choosing: per-layer statistics and the size/metric trade-off (matplotlib, optional)."""

from __future__ import annotations

import math

from .errors import InputError
from .modelio import atomic_write_bytes


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'onnxprune[plot]' (or pip install matplotlib)") from None
    return plt


def _save(fig, path) -> None:
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def stats_plot(stats: dict, path) -> None:
    """One panel per layer: each neuron's |mean| against its std, dead neurons marked."""
    plt = require_matplotlib()
    n = len(stats)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4 * rows), squeeze=False)
    for ax, (name, s) in zip(axes.flat, stats.items()):
        alive = ~s.dead
        ax.scatter(abs(s.mean[alive]), s.std[alive], s=10, alpha=0.6, label=f"{int(alive.sum())} active")
        if s.dead.any():
            ax.scatter(abs(s.mean[s.dead]), s.std[s.dead], s=18, marker="x", color="red",
                       label=f"{int(s.dead.sum())} dead")
        ax.set_title(f"{name} ({s.n_features} neurons)", fontsize=9)
        ax.set_xlabel("|mean activation|")
        ax.set_ylabel("std of activation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def tradeoff_plot(result, path) -> None:
    """Parameter reduction against the primary metric's loss, with its upper confidence bound as an
    error bar, the budget line and the chosen candidate."""
    plt = require_matplotlib()
    before = result.parameters_before
    xs = [100 * (1 - c.parameters / before) for c in result.candidates]
    first = result.candidates[0].primary
    scale = 1.0 if first.unit else 100.0  # 1 - cosine and channel errors in percent of their range
    ys = [scale * c.drop for c in result.candidates]
    ups = [scale * c.bound - y if math.isfinite(c.bound) else 0.0 for c, y in zip(result.candidates, ys)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(xs, ys, yerr=[[0] * len(ys), ups], fmt="o-", capsize=3,
                label=f"{result.criterion}, {result.compensation}: observed, bar to "
                      f"{result.config.confidence:.0%} upper bound")
    failed = [(x, y) for x, y, c in zip(xs, ys, result.candidates) if not c.within_budget]
    if failed:
        ax.plot(*zip(*failed), "x", color="red", markersize=9, label="out of budget (some metric's bound)")
    budget = scale * first.budget
    ax.axhline(budget, color="red", linestyle="--", label=f"budget {first.budget:g}{' ' + first.unit if first.unit else ''}")
    ax.axhline(0, color="grey", linestyle=":", label="original")
    if result.chosen is not None:
        i = result.candidates.index(result.chosen)
        ax.plot([xs[i]], [ys[i]], "*", color="green", markersize=16, label=f"chosen: {result.chosen.label}")
    top = max(budget * 4, max(ys[i] + ups[i] for i in range(len(ys)) if xs[i] <= (xs[result.candidates.index(result.chosen)] if result.chosen else 0) + 20) if ys else 1)
    ax.set_ylim(min(min(ys), 0) - 0.05 * top, top)
    clipped = sum(y > top for y in ys)
    if clipped:
        ax.annotate(f"{clipped} candidate(s) above {top:.3g}", xy=(0.98, 0.02), xycoords="axes fraction",
                    ha="right", fontsize=8, color="grey")
    unit = f" ({first.unit})" if first.unit else " (x100)"
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel(f"{first.label}{unit}, held-out ({first.samples} samples)")
    ax.set_title("size / loss trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)

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
    """Parameter reduction against the metric, with the budget line and the chosen candidate."""
    plt = require_matplotlib()
    before = result.parameters_before
    xs = [100 * (1 - c.parameters / before) for c in result.candidates]
    ys = [c.value for c in result.candidates]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, ys, "o-", label=f"{result.criterion}, {result.compensation}")
    baseline = result.candidates[0].baseline
    unit = "" if result.metric == "cosine" else " (%)"
    if result.metric == "cosine":
        line = result.budget.min_cosine
        label = f"budget: cosine >= {line:g}"
    else:
        line = baseline - result.budget.max_drop
        label = f"budget: drop <= {result.budget.max_drop:g} pp"
    ax.axhline(line, color="red", linestyle="--", label=label)
    ax.axhline(baseline, color="grey", linestyle=":", label="original")
    if result.chosen is not None:
        i = result.candidates.index(result.chosen)
        ax.plot([xs[i]], [ys[i]], "*", color="green", markersize=16, label=f"chosen: {result.chosen.label}")
    if result.metric != "cosine":
        # Zoom on the region around the budget; candidates far below it are clipped, and said so.
        floor = baseline - 10 * max(result.budget.max_drop, 0.5)
        low = max(min(ys), floor)
        ax.set_ylim(low - 0.5, max(ys + [baseline]) + 0.5)
        clipped = sum(y < low for y in ys)
        if clipped:
            ax.annotate(f"{clipped} candidate(s) below {low:.1f}", xy=(0.98, 0.02), xycoords="axes fraction",
                        ha="right", fontsize=8, color="grey")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel(f"{result.metric}{unit} on held-out data")
    ax.set_title("size / accuracy trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)

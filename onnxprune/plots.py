"""Pictures for choosing: per-layer statistics and the size/metric trade-off (matplotlib, optional)."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import InputError
from .modelio import atomic_write_bytes
from .report import failure_text

GUARD_COLOUR, BUDGET_COLOUR = "darkorange", "red"


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


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


def layer_name(group_id: str, width: int = 48) -> str:
    """An exporter's node name as a short label: '/encoder/layer.0/intermediate/dense/MatMul' ->
    'encoder/layer.0/intermediate/dense (MatMul)', cut in the middle when longer than `width`."""
    path, _, op = group_id.strip("/").rpartition("/")
    if path.isdigit():  # torch's nn.Sequential names layers by index: '/0/Gemm'
        path = f"layer {path}"
    name = f"{path} ({op})" if path and op and op[:1].isupper() and op.isalnum() else group_id.strip("/") or group_id
    if len(name) > width:
        keep = width - 1
        name = name[:keep // 2] + "…" + name[-(keep - keep // 2):]
    return name


def stats_plot(stats: dict, path, *, title: str | None = None, groups=None) -> None:
    """One panel per layer: each neuron's |mean| against its std, dead neurons marked; `title` says what
    was measured on what, `groups` (the NeuronGroups measured) name the kind of each panel."""
    plt = require_matplotlib()
    kinds = {g.id: g.kind for g in groups or ()}
    n = len(stats)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4 * rows + (0.5 if title else 0)), squeeze=False)
    for i, (ax, (name, s)) in enumerate(zip(axes.flat, stats.items()), 1):
        alive = ~s.dead
        ax.scatter(abs(s.mean[alive]), s.std[alive], s=10, alpha=0.6, label=f"{int(alive.sum())} active")
        if s.dead.any():
            ax.scatter(abs(s.mean[s.dead]), s.std[s.dead], s=18, marker="x", color="red",
                       label=f"{int(s.dead.sum())} dead")
        unit = "features (heads)" if kinds.get(name) == "heads" else "neurons"
        ax.set_title(f"{i}. {layer_name(name)}\n{s.n_features} {unit}", fontsize=9)
        ax.set_xlabel("|mean activation|")
        ax.set_ylabel("std of activation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _failures(result) -> tuple[list[int], list[int]]:
    """Indices of the candidates over a budget (some budget metric's bound fails) and of those vetoed by
    a guard only."""
    over, vetoed = [], []
    for i, c in enumerate(result.candidates):
        failed = [f for f in c.figures if not f.passed]
        if any(not f.guard for f in failed):
            over.append(i)
        elif failed:
            vetoed.append(i)
    return over, vetoed


def tradeoff_plot(result, path) -> None:
    """Parameter reduction against the primary metric's loss, with its upper confidence bound as an
    error bar, the budget line and the chosen candidate; candidates over budget and those a guard
    vetoed are marked apart, each labelled with the check that failed first."""
    plt = require_matplotlib()
    before = result.parameters_before
    xs = [100 * (1 - c.parameters / before) for c in result.candidates]
    first = result.candidates[0].primary
    scale = 1.0 if first.unit else 100.0  # 1 - cosine and channel errors in percent of their range
    ys = [scale * c.drop for c in result.candidates]
    ups = [scale * c.bound - y if math.isfinite(c.bound) else 0.0 for c, y in zip(result.candidates, ys)]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.errorbar(xs, ys, yerr=[[0] * len(ys), ups], fmt="o-", capsize=3, zorder=2,
                label=f"{result.criterion}, {result.compensation}: observed, bar to "
                      f"{result.config.confidence:.0%} upper bound")
    over, vetoed = _failures(result)
    for indices, colour, marker, what in ((over, BUDGET_COLOUR, "x", "over budget (a bound)"),
                                          (vetoed, GUARD_COLOUR, "^", "vetoed by a guard (observed)")):
        if indices:
            ax.plot([xs[i] for i in indices], [ys[i] for i in indices], marker, color=colour, markersize=9,
                    linestyle="none", zorder=3, label=what)
    budget = scale * first.budget
    ax.axhline(budget, color=BUDGET_COLOUR, linestyle="--",
               label=f"budget {first.budget:g}{' ' + first.unit if first.unit else ''}")
    ax.axhline(0, color="grey", linestyle=":", label="original")
    chosen_x = 0.0
    if result.chosen is not None:
        i = result.candidates.index(result.chosen)
        chosen_x = xs[i]
        ax.plot([xs[i]], [ys[i]], "*", color="green", markersize=16, zorder=4, label=f"chosen: {result.chosen.label}")
    near = [ys[i] + ups[i] for i in range(len(ys)) if xs[i] <= chosen_x + 20]
    top = max([budget * 4, *near]) if ys else 1.0
    ax.set_ylim(min(min(ys), 0) - 0.05 * top, top)
    first_fail = min(over + vetoed, default=None)  # the walk's first failure: say which check, by how much
    if first_fail is not None:
        c = result.candidates[first_fail]
        text = "; ".join(failure_text(f) for f in c.figures if not f.passed)
        ax.annotate(f"{c.label}: {text}", xy=(xs[first_fail], min(ys[first_fail], 0.95 * top)),
                    xytext=(0.02, 0.96), textcoords="axes fraction", fontsize=8, va="top",
                    arrowprops={"arrowstyle": "->", "color": "grey"})
    clipped = sum(y > top for y in ys)
    if clipped:
        ax.annotate(f"{clipped} candidate(s) above {top:.3g}", xy=(0.98, 0.02), xycoords="axes fraction",
                    ha="right", fontsize=8, color="grey")
    unit = f" ({first.unit})" if first.unit else " (x100)"
    where = f"{first.samples} samples, {first.folds}-fold cross-fitted" if first.folds > 1 else \
        f"{first.samples} held-out samples"
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel(f"{first.label}{unit}\n{where}")
    model = Path(result.model).name if getattr(result, "model", None) else "model"
    ax.set_title(f"{model}: size against {first.label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)

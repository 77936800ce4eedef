"""Choosing how much to prune: candidates, their evaluation on held-out data, and the budget.

Statistics are gathered once. A candidate is a set of keep-masks (from a criterion's
scores and a global fraction or threshold) plus the consumers' compensation; evaluating
it costs one rewrite and one pass of the pruned model over the held-out data, compared
with the original's outputs kept from the statistics pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .criteria import GroupEvidence, align_masks, masks_below, masks_for_fraction, scores_of
from .data import Dataset
from .graph import GraphIndex
from .groups import NeuronGroup, consumer_effect
from .progress import Console
from .refit import DEFAULT_RIDGE, ConsumerUpdate, Gram, consumer_update
from .rewrite import apply_masks, parameter_count
from .runtime import tapped_model
from .session import RuntimeOptions, make_session, run
from .validate import Comparison, Reference, compare

METRICS = ("auto", "accuracy", "agreement", "cosine")
COMPENSATIONS = ("none", "fold", "refit")
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(20))
OBJECTIVES = ("parameters", "macs")
CONV_ALIGN = 8  # channels kept per Conv group are a multiple of this by default (see align_masks)


@dataclass
class Budget:
    """How much the metric may get worse: `max_drop` percentage points, or cosine >= `min_cosine`."""

    max_drop: float = 0.5
    min_cosine: float = 0.99


@dataclass
class Candidate:
    label: str
    masks: dict[str, np.ndarray]
    kept: dict[str, int]
    parameters: int
    metric: str
    value: float
    baseline: float
    within_budget: bool
    updates: dict[int, ConsumerUpdate] = field(default_factory=dict, repr=False)
    model: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def drop(self) -> float:
        """How much worse than the original: percentage points (accuracy, agreement) or 1 - cosine."""
        return self.baseline - self.value

    def to_dict(self, parameters_before: int) -> dict:
        return {"label": self.label, "kept": self.kept, "parameters": self.parameters,
                "parameter_reduction": 1 - self.parameters / parameters_before if parameters_before else 0.0,
                "metric": self.metric, "value": self.value, "drop": self.drop,
                "within_budget": self.within_budget,
                "refit_consumers": sum(u.method == "refit" for u in self.updates.values())}


def metric_of(comparison: Comparison, metric: str) -> float:
    if metric == "accuracy":
        return 100.0 * comparison.accuracy_after
    if metric == "agreement":
        return 100.0 * next(o.agreement for o in comparison.outputs if o.agreement is not None)
    return next(o.cosine for o in comparison.outputs if o.cosine is not None)


def baseline_of(comparison: Comparison, metric: str) -> float:
    if metric == "accuracy":
        return 100.0 * comparison.accuracy_before
    return 100.0 if metric == "agreement" else 1.0


def resolve_metric(requested: str, reference: Reference, data: Dataset) -> str:
    """`auto`: accuracy with labels, else top-1 agreement for classifiers, else cosine similarity."""
    probe = Comparison(reference.names)
    first = [o[: min(len(o), 8)] for o in reference.outputs]
    labels = None if data.labels is None else data.labels[: len(first[0]) if first and first[0].ndim else 0]
    probe.add(first, first, labels)
    available = []
    if probe.accuracy_output:
        available.append("accuracy")
    # top-1 agreement is the default only for [batch, classes] outputs; 3-D outputs are often
    # hidden states, for which cosine similarity is the meaningful measure (--metric overrides)
    shapes = [o.shape for o in first]
    if any(c.agreement is not None and len(s) == 2 for c, s in zip(probe.outputs, shapes)):
        available.append("agreement")
    elif requested == "agreement" and any(o.agreement is not None for o in probe.outputs):
        available.append("agreement")
    if any(o.cosine is not None for o in probe.outputs):
        available.append("cosine")
    if requested == "auto":
        if not available:
            raise ValueError("no output can be compared (neither classifier-like nor floating point)")
        return available[0]
    if requested not in available:
        from .errors import InputError

        why = {"accuracy": "needs labels and a classifier-like output",
               "agreement": "needs a classifier-like output", "cosine": "needs a floating-point output"}
        raise InputError(f"metric {requested!r} {why[requested]}")
    return requested


class Selector:
    """Builds and evaluates candidates for one model, one set of statistics and one criterion."""

    def __init__(self, model: onnx.ModelProto, index: GraphIndex, groups: list[NeuronGroup],
                 stats: dict, eval_data: Dataset, reference: Reference, *, criterion: str,
                 compensation: str = "refit", metric: str = "auto", budget: Budget | None = None,
                 calibration_grams: dict[str, Gram] | None = None, heldout_grams: dict[str, Gram] | None = None,
                 criterion_settings: dict | None = None, batch_size: int = 256, align: int = 0,
                 objective: str = "parameters", options: RuntimeOptions | None = None,
                 console: Console | None = None, calibration_data: Dataset | None = None,
                 mask: str | None = None, ridge: float = DEFAULT_RIDGE):
        self.model, self.index = model, index
        self.groups = [g for g in groups if g.prunable and g.name in stats]
        self.all_groups = groups
        self.eval_data, self.reference = eval_data, reference
        self.compensation = compensation
        self.budget = budget or Budget()
        self.cal_grams = calibration_grams or {}
        self.calibration_data, self.mask, self.ridge = calibration_data, mask, ridge
        self._original_taps = None
        self.held_grams = heldout_grams or {}
        self.batch_size, self.options = batch_size, options or RuntimeOptions()
        self.console = console or Console()
        # Without reference outputs nothing is evaluated here (thresholds and fractions are fixed).
        self.metric = resolve_metric(metric, reference, eval_data) if reference is not None else None
        effects = {g.name: [consumer_effect(index, g.consumer_info[c], g.size) for c in g.consumer_nodes]
                   for g in self.groups}
        self.weights = {name: [e[0] for e in pairs] for name, pairs in effects.items()}
        self.evidence = {g.name: GroupEvidence(g, stats[g.name], self.weights[g.name],
                                               [e[1] for e in effects[g.name]]) for g in self.groups}
        self.scores = scores_of(self.evidence, criterion, **(criterion_settings or {}))
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}")
        if objective == "macs" and criterion not in ("seed", "dead"):
            self.scores = self._per_cost(self.scores)
        self.parameters_before = parameter_count(model)
        self.multiples = {g.name: align or (CONV_ALIGN if g.producer_op == "Conv" else 1) for g in self.groups}
        self.evaluations = 0

    def _per_cost(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores per multiply-add a neuron costs (its producer's and consumers' MACs per feature),
        so that allocation removes first what buys the most compute for the least signal."""
        from .bench import data_feeds, node_macs

        macs = node_macs(self.model, data_feeds(self.eval_data, 1))
        if macs is None:
            self.console.log("objective macs: shapes unknown, ranking by parameters instead")
            return scores
        out = {}
        for g in self.groups:
            cost = (macs.get(g.producer_node, 0) + sum(macs.get(c, 0) for c in g.consumer_nodes)) / g.size
            out[g.name] = scores[g.name] / max(cost, 1.0)
        return out

    def aligned(self, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return align_masks(masks, self.scores, self.multiples)

    def updates_for(self, masks: dict[str, np.ndarray]) -> dict[int, ConsumerUpdate]:
        updates = {}
        for g in self.groups:
            keep = masks[g.name]
            for node, weight in zip(g.consumer_nodes, self.weights[g.name]):
                # Conv consumers and Flatten-ed channels are folded: the refit is closed-form
                # for plain Gemm/MatMul consumers only.
                mode = self.compensation
                if mode == "refit" and not g.consumer_info[node].refittable:
                    mode = "fold"
                updates[node] = consumer_update(
                    weight, keep, self.evidence[g.name].stats.mean, mode=mode,
                    calibration=self.cal_grams.get(g.name), heldout=self.held_grams.get(g.name))
        return updates

    def sequential_updates(self, masks: dict[str, np.ndarray]) -> dict[int, ConsumerUpdate]:
        """Refit layer by layer on the pruned model's own activations, in graph order.

        The independent refit maps the *original* activations of the kept neurons to the original
        outputs; once earlier layers are pruned the consumers see other activations. Here each
        refittable consumer is solved, in turn, from the activations the model pruned so far gives
        it (X~) to the original model's outputs (X W + b): theta = (X~'X~ + lambda I')^-1 X~'[X 1][W; 0],
        with both models run on the same calibration batches: one pass per refit layer.
        """
        updates = self.updates_for(masks)
        if self.calibration_data is None:
            return updates
        if self._original_taps is None:
            taps = sorted({g.tap for g in self.groups})
            self._original_taps = (taps, make_session(tapped_model(self.model, taps, self.index), self.options))
        taps, original = self._original_taps
        for g in sorted(self.groups, key=lambda g: g.producer_node):
            keep = masks[g.name]
            refit = [c for c in g.consumer_nodes if updates[c].method == "refit"]
            if keep.all() or not refit:
                continue
            current = apply_masks(self.model, self.all_groups, masks, updates=updates, index=self.index,
                                  check_shapes=False)
            # pruning changes the tap's width, not its dtype: the original index can type it
            pruned = make_session(tapped_model(current, [g.tap], self.index), self.options)
            k = int(keep.sum())
            g_tilde, cross = np.zeros((k + 1, k + 1)), np.zeros((k + 1, g.size + 1))
            for feeds in self.calibration_data.batches(self.batch_size):
                x = np.asarray(run(original, feeds, self.options, [g.tap], purpose="refit")[0])
                x_tilde = np.asarray(run(pruned, feeds, self.options, [g.tap], purpose="refit")[0])
                rows = None
                if self.mask is not None:
                    positions = np.asarray(feeds[self.mask]) != 0
                    rows = positions.reshape(-1) if positions.shape == x.shape[:-1] else None
                x, x_tilde = x.reshape(-1, g.size), x_tilde.reshape(-1, k)
                if rows is not None:
                    x, x_tilde = x[rows], x_tilde[rows]
                xa = np.c_[x.astype(np.float64), np.ones(len(x))]
                xta = np.c_[x_tilde.astype(np.float64), np.ones(len(x_tilde))]
                g_tilde += xta.T @ xta
                cross += xta.T @ xa
            diag = np.diag(g_tilde)[:-1]
            reg = np.append(np.full(k, self.ridge * (diag.mean() if diag.size and diag.mean() > 0 else 1.0)), 0.0)
            for node, weight in zip(g.consumer_nodes, self.weights[g.name]):
                if node not in refit:
                    continue
                rhs = cross @ np.vstack([weight, np.zeros((1, weight.shape[1]))])
                try:
                    theta = np.linalg.solve(g_tilde + np.diag(reg), rhs)
                except np.linalg.LinAlgError:
                    theta = np.linalg.lstsq(g_tilde + np.diag(reg), rhs, rcond=None)[0]
                updates[node] = ConsumerUpdate(theta[:-1], theta[-1], "refit")
        return updates

    def candidate(self, masks: dict[str, np.ndarray], label: str, settings: dict | None = None,
                  sequential: bool = False) -> Candidate:
        updates = self.sequential_updates(masks) if sequential else self.updates_for(masks)
        # Candidates skip the strict shape re-inference: only the chosen one is written, and it is
        # rebuilt with every check before validation.
        model = apply_masks(self.model, self.all_groups, masks, updates=updates, index=self.index,
                            settings=settings, check_shapes=False)
        session = make_session(model, self.options)
        comparison = compare(session, self.eval_data, reference=self.reference, batch_size=self.batch_size,
                             options=self.options)
        self.evaluations += 1
        value, baseline = metric_of(comparison, self.metric), baseline_of(comparison, self.metric)
        if self.metric == "cosine":
            ok = value >= self.budget.min_cosine
        else:
            ok = baseline - value <= self.budget.max_drop + 1e-9
        return Candidate(label, masks, {n: int(m.sum()) for n, m in masks.items()}, parameter_count(model),
                         self.metric, value, baseline, ok, updates, model)

    def at_fraction(self, fraction: float, settings: dict | None = None, sequential: bool = False) -> Candidate:
        label = f"remove {fraction:.1%}" + (" (sequential refit)" if sequential else "")
        return self.candidate(self.aligned(masks_for_fraction(self.scores, fraction)), label, settings, sequential)

    def at_threshold(self, threshold: float, settings: dict | None = None, *, inclusive=False) -> Candidate:
        return self.candidate(self.aligned(masks_below(self.scores, threshold, inclusive=inclusive)),
                              f"score < {threshold:g}", settings)

    def sweep(self, grid=DEFAULT_GRID, settings: dict | None = None) -> list[Candidate]:
        out = []
        for i, f in enumerate(grid):
            out.append(self.at_fraction(f, settings))
            self.console.progress("evaluating candidates", i + 1, len(grid))
        return out

    @property
    def can_refit_sequentially(self) -> bool:
        return self.compensation == "refit" and self.calibration_data is not None and any(
            info.refittable for g in self.groups for info in g.consumer_info.values())

    def choose(self, grid=DEFAULT_GRID, refine: int = 3, settings: dict | None = None,
               patience: int = 2) -> tuple[Candidate, list[Candidate]]:
        """The smallest candidate within budget: the grid in increasing order, then bisection above the best.

        The grid walk stops after `patience` consecutive candidates out of budget: removing more
        neurons seldom brings the metric back, and each candidate costs a held-out pass. When
        refitting, at most two more candidates use the sequential refit, which costs a calibration
        pass per layer: the smallest failing amount after bisection, then the grid's failing step.
        """
        tried, fractions, misses = [], [], 0
        ordered = sorted(grid)
        for i, f in enumerate(ordered):
            c = self.at_fraction(f, settings)
            tried.append(c)
            fractions.append(f)
            self.console.progress("evaluating candidates", i + 1, len(ordered))
            misses = 0 if c.within_budget else misses + 1
            if misses >= patience:
                self.console.progress("evaluating candidates", len(ordered), len(ordered))
                break
        best = smallest_within(tried)
        if best is None:
            return None, tried
        lo = fractions[tried.index(best)]
        above = [x for x in ordered if x > lo]
        hi = above[0] if above else None
        first_miss = hi
        for _ in range(refine if hi is not None else 0):
            mid = round((lo + hi) / 2, 4)
            c = self.at_fraction(mid, settings)
            tried.append(c)
            fractions.append(mid)
            if c.within_budget:
                lo = mid
            else:
                hi = mid
        if self.can_refit_sequentially and hi is not None:
            # The sequential refit (one calibration pass per layer) often rescues the smallest
            # amount the independent refit failed at: try it there, then at the grid's next step.
            for f in dict.fromkeys([hi, first_miss]):
                c = self.at_fraction(f, settings, sequential=True)
                tried.append(c)
                if not c.within_budget:
                    break
        return smallest_within(tried), tried


def smallest_within(candidates: list[Candidate]) -> Candidate | None:
    """The candidate with the fewest parameters within budget (the better metric on a tie); None if none is."""
    ok = [c for c in candidates if c.within_budget]
    return min(ok, key=lambda c: (c.parameters, -c.value)) if ok else None

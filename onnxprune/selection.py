"""Choosing how much to prune: candidates, their evaluation on held-out data, and the budget.

Statistics are gathered once. A candidate is a set of keep-masks (a criterion's scores and a
global fraction of the neurons) plus the consumers' compensation, both decided on calibration
data only; evaluating it costs one rewrite and one pass of the pruned model over the held-out
data, compared with the original's outputs kept from the statistics pass.

The choice is honest about noise. Every metric gives a one-sided upper confidence bound of its
loss from paired per-sample evidence (metrics.py), and a candidate passes only when every bound
is within its budget. Candidates are tested in an order fixed before any held-out result is seen
(fractions increasing) and the walk stops at the first failure: fixed-sequence testing, so the
chance that *any* accepted candidate is over budget stays at most 1 - confidence however many
are tested, without dividing the confidence among them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np
import onnx

from . import blockselect, quantize
from .compensate import COMPENSATIONS, Compensation
from .criteria import CRITERIA, align_masks, balance_blocks, keep_required, masks_below, scores_of, unit_scores
from .data import Dataset
from .errors import InputError
from .metrics import METRICS, Budget, Figure, Plan, plan_checks, resolvable
from .progress import Console
from .refit import DEFAULT_RIDGE, ConsumerUpdate
from .rewrite import apply_masks, parameter_count
from .session import RuntimeOptions, make_session, serialized
from .validate import compare

OBJECTIVES = ("parameters", "macs", "both")
RULES = ("bound", "estimate")
# what may be removed: neurons (features, channels), attention heads, whole residual branches (blocks)
STRUCTURES = ("neurons", "heads", "blocks")
DEFAULT_STRUCTURES = ("neurons", "heads")
DEFAULT_GRID = tuple(round(0.025 * i, 3) for i in range(40))
# When a search certifies nothing, it walks on for at most this many candidates while their bounds stay
# within this multiple of the budget, to say what a looser budget would certify.
EXPLORE_STEPS, EXPLORE_UP_TO = 16, 4.0
CONV_ALIGN = 8  # channels kept per Conv group are a multiple of this by default (see align_masks)
# The sequential refit costs a calibration pass per refit layer for every candidate (of the samples that give
# the layer enough rows: a Gemm/MatMul over the tokens of a 29 M parameter encoder takes them all), against one
# held-out pass. Above this size it is off unless asked for (a fixed rule, so that the same model is pruned the
# same way on any machine).
SEQUENTIAL_UP_TO = 5_000_000


@dataclass
class SelectionConfig:
    """Everything that decides which neurons go and how the result is judged (shared by prune and sweep).

    The mode follows from what is given: `criterion="dead"` removes only neurons that never fired,
    thresholds apply the seed's rule, a `fraction` removes that share of the neurons, and otherwise
    the smallest candidate of `grid` whose every metric is within `budget` is chosen."""

    criterion: str = "auto"
    mean_threshold: float | None = None
    std_threshold: float | None = None
    relative: bool = False
    fraction: float | None = None    # remove this fraction of all prunable neurons (no search)
    compensation: str = "refit"
    sequential: bool | None = None   # sequential refit (layer by layer on the pruned model's activations);
                                     # None: only for models of at most SEQUENTIAL_UP_TO parameters
    objective: str = "parameters"
    align: int = 0
    quantize: str = "none"           # none, dynamic or static: candidates are quantized before they are judged
    quantize_stem: bool = False      # static: quantize the convolutions of few input channels too (else float)
    metric: str | Callable = "auto"
    outputs: tuple | None = None     # the outputs compared (default: all)
    budget: Budget = field(default_factory=Budget)
    confidence: float = 0.95
    rule: str = "bound"              # "bound": upper confidence bounds; "estimate": observed loss (no guarantee)
    grid: tuple = DEFAULT_GRID
    ridge: float = DEFAULT_RIDGE
    structures: tuple = DEFAULT_STRUCTURES

    @classmethod
    def from_options(cls, **options) -> "SelectionConfig":
        """A config from keyword options (None: the default); budget fields (max_drop, min_cosine, ...)
        go into `budget`, thresholds imply the seed criterion, and list-like options may be strings."""
        given = {k: v for k, v in options.items() if v is not None}
        budget_keys = {f.name for f in fields(Budget)}
        unknown = set(given) - budget_keys - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown selection option(s): {', '.join(sorted(unknown))}")
        thresholds = [k for k in ("mean_threshold", "std_threshold") if k in given]
        if thresholds and given.get("criterion", "seed") != "seed":
            raise InputError("--mean-threshold/--std-threshold set the seed criterion; leave out --criterion "
                             "or use --criterion seed")
        if thresholds:
            given["criterion"] = "seed"
        for name in thresholds:
            given[name] = _non_negative(name.replace("_", " "), given[name])
        for name in ("outputs", "grid", "structures"):
            if name in given:
                given[name] = _as_tuple(given[name])
        if not given.get("outputs"):
            given.pop("outputs", None)
        budget = Budget(**{k: given.pop(k) for k in list(given) if k in budget_keys})
        return cls(budget=budget, **given)

    @property
    def mode(self) -> str:
        """dead, thresholds, fraction or budget: how the neurons to remove are chosen."""
        if self.criterion == "dead":
            return "dead"
        if self.mean_threshold is not None or self.std_threshold is not None:
            return "thresholds"
        return "fraction" if self.fraction is not None else "budget"

    def for_model(self, parameters: int) -> "SelectionConfig":
        """This config with the refit's order decided for a model of `parameters` parameters, when left open."""
        if self.sequential is not None:
            return self
        return replace(self, sequential=parameters <= SEQUENTIAL_UP_TO)

    def to_dict(self) -> dict:
        """The report's selection settings (the metric and budget only when a budget decides)."""
        settings = {"mode": self.mode, "criterion": self.criterion, "compensation": self.compensation,
                    "mean_threshold": self.mean_threshold, "std_threshold": self.std_threshold,
                    "relative": self.relative, "fraction": self.fraction, "align": self.align,
                    "objective": self.objective, "structures": list(self.structures),
                    "sequential_refit": self.sequential and self.compensation == "refit"}
        if self.quantize != "none":
            settings["quantize"] = self.quantize
        if self.quantize == "static":
            settings["quantize_stem"] = self.quantize_stem
        if self.mode == "budget":
            settings.update(metric=self.metric if isinstance(self.metric, str) else "custom",
                            **self.budget.to_dict(), confidence=self.confidence, rule=self.rule)
        return settings

    def check(self) -> None:
        if self.criterion not in CRITERIA:
            raise InputError(f"unknown criterion {self.criterion!r}; choose from {', '.join(CRITERIA)}")
        if self.compensation not in COMPENSATIONS:
            raise InputError(f"unknown compensation {self.compensation!r}; choose from {', '.join(COMPENSATIONS)}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if not self.structures or any(s not in STRUCTURES for s in self.structures):
            raise InputError(f"structures must be some of {', '.join(STRUCTURES)}, got {', '.join(self.structures)}")
        if self.rule not in RULES:
            raise InputError(f"unknown rule {self.rule!r}; choose from {', '.join(RULES)}")
        quantize.modes_check(self.quantize, self.quantize_stem)
        if not callable(self.metric) and self.metric != "auto" and self.metric not in METRICS:
            raise InputError(f"unknown metric {self.metric!r}; choose from auto, {', '.join(METRICS)}")
        if not 0.5 <= self.confidence < 1:
            raise InputError(f"confidence must be in [0.5, 1), got {self.confidence:g}")
        b = self.budget
        for name in ("max_drop", "max_class_drop", "max_channel_error", "max_score_change"):
            value = getattr(b, name)
            if value is None or not np.isfinite(value) or value < 0:
                raise InputError(f"{name.replace('_', ' ')} must be a non-negative number, got {value}")
        if not 0 <= b.min_cosine <= 1:
            raise InputError(f"min cosine must be in [0, 1], got {b.min_cosine:g}")
        if self.mode == "fraction" and not 0 <= self.fraction < 1:
            raise InputError(f"fraction must be in [0, 1), got {self.fraction:g}")


def _non_negative(name: str, value) -> float:
    value = float(value)
    if math.isnan(value) or value < 0:
        raise InputError(f"{name} must be a non-negative number, got {value:g}")
    return value


def _as_tuple(value) -> tuple:
    """A list option as a tuple; a string is comma-separated ("neurons,heads")."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


DEFAULT_CRITERION = SelectionConfig.criterion


@dataclass
class Candidate:
    label: str
    fraction: float | None
    masks: dict[str, np.ndarray]
    kept: dict[str, int]
    parameters: int
    figures: list[Figure]
    rule: str = "bound"
    updates: dict[int, ConsumerUpdate] = field(default_factory=dict, repr=False)

    def drop_weights(self) -> None:
        """Forget the refit weight rows (a candidate not chosen keeps each consumer's method and errors
        only: 8 consumers of an encoder's FFN refit hold about 60 MB)."""
        self.updates = {n: ConsumerUpdate(None, None, u.method, u.error_fold, u.error_refit)
                        for n, u in self.updates.items()}

    @property
    def within_budget(self) -> bool:
        if self.rule == "estimate":
            return all(f.loss <= f.budget + 1e-9 for f in self.figures)
        return all(f.passed for f in self.figures)

    @property
    def primary(self) -> Figure:
        return self.figures[0]

    @property
    def metric(self) -> str:
        return self.primary.metric

    @property
    def drop(self) -> float:
        """The primary metric's observed loss (pp, 1 - cosine, channel error)."""
        return self.primary.loss

    @property
    def bound(self) -> float:
        return self.primary.bound

    def to_dict(self, parameters_before: int) -> dict:
        return {"label": self.label, "fraction": self.fraction, "kept": self.kept, "parameters": self.parameters,
                "parameter_reduction": 1 - self.parameters / parameters_before if parameters_before else 0.0,
                "within_budget": self.within_budget, "figures": [f.to_dict() for f in self.figures],
                "refit_consumers": sum(u.method == "refit" for u in self.updates.values())}


@dataclass
class FoldJudge:
    """A cross-fitting fold: `builder` builds candidates from the other folds' statistics, and they are
    judged on this fold's samples (`data`) against the original's outputs on them (`reference`)."""

    builder: "Selector"
    data: Dataset
    reference: object


class Selector:
    """Builds and evaluates candidates for one model, one set of statistics (in `compensation`) and one
    configuration, judged on `eval_data` against the original's outputs on it (`reference`); with
    `folds`, a candidate at a fraction is judged by cross-fitting instead: on each fold, the same
    fraction built from the other folds' statistics, every fold's evidence pooled in one figure."""

    def __init__(self, compensation: Compensation, eval_data: Dataset | None, reference, config: SelectionConfig,
                 *, options: RuntimeOptions | None = None, console: Console | None = None, batch_size: int = 256,
                 macs: dict[int, int] | None = None, run_samples: int | None = None, probe=None):
        model = compensation.model
        self.model, self.index, self.config = model, compensation.index, config
        self.run_samples = run_samples  # samples per onnxruntime run when evaluating (memory, not figures)
        self.comp = compensation
        self.groups = compensation.groups
        self.all_groups = compensation.all_groups
        self.eval_data, self.reference = eval_data, reference
        self.batch_size, self.options = batch_size, options or RuntimeOptions()
        self.console = console or Console()
        self.plan: Plan | None = None
        if reference is not None and eval_data is not None:
            first = next(reference.batches(min(8, eval_data.n_samples), eval_data.n_samples))
            self.plan = plan_for(config, model, reference.names, first, eval_data.labels)
        self.parameters_before = parameter_count(model)
        self.multiples = {g.id: 1 if g.unit > 1 else config.align or quantize.default_align(g, config.quantize)
                          or (CONV_ALIGN if g.producer_op == "Conv" else 1) for g in self.groups}  # heads are whole units already
        self.scores = raw = scores_of(compensation.evidence, config.criterion,
                                      mean_threshold=config.mean_threshold, std_threshold=config.std_threshold,
                                      relative=config.relative)
        per_cost = config.objective in blockselect.COSTED and config.criterion not in ("seed", "dead")
        self.choice = None  # with criterion "auto": the ranking it took and why (autoselect.Choice)
        if config.criterion == "sensitivity" and probe is not None:
            from .sensitivity import sensitivity_scores

            self.scores = sensitivity_scores(compensation, probe, self.ranking_costs(macs))  # per cost already
        elif config.criterion == "auto":
            from .autoselect import choose

            self.scores, self.choice = choose(self, probe, macs,
                                              lambda s: self._per_cost(s, macs) if per_cost else s)
        elif per_cost:
            self.scores = self._per_cost(self.scores, macs)
        # whole residual branches ranked among the neurons (blockselect.py): only when asked for; with
        # calibration samples to probe (`calibration`, set by the run), by their measured exchange rate
        self.blocks = compensation.blocks if "blocks" in config.structures else []
        self._block_ranks = blockselect.rank_blocks(self.blocks, compensation.tap_stats, raw,
                                                    macs if per_cost else None)
        self.calibration = None  # a compensate.Replay of the samples that fed the statistics
        self._probed = False
        self.scores = unit_scores(self.scores, self.groups, config.criterion)
        compensation.priority = self.scores
        self.evaluations = 0
        self.folds: list[FoldJudge] = []
        self.quantizer = None  # with --quantize: what quantizes every candidate before it is judged (the run's)

    def ranking_costs(self, macs: dict[int, float] | None) -> dict[int, float]:
        """Per node, what a sensitivity score is per: the objective's costs (`macs`, run.objective_costs),
        or its parameters (objective parameters, or shapes unknown)."""
        from .sensitivity import node_parameters

        if self.config.objective in blockselect.COSTED and macs is not None:
            return macs
        return node_parameters(self.model)

    @property
    def ranking(self) -> str:
        """The criterion, and with "auto" the ranking it took ("auto: sensitivity"), for the log."""
        return self.config.criterion if self.choice is None else f"{self.config.criterion}: {self.choice.criterion}"

    @property
    def explanation(self) -> list[str]:
        return self.plan.explanation if self.plan else []

    def warnings(self) -> list[str]:
        """Budgets the held-out data cannot resolve, said before the search."""
        if self.plan is None or self.config.rule != "bound":
            return []
        return resolvable(self.plan, self.eval_data.n_samples)

    def _per_cost(self, scores: dict[str, np.ndarray], macs: dict[int, int] | None) -> dict[str, np.ndarray]:
        """Scores per multiply-add a neuron costs (its producer's and consumers' MACs per feature; with
        objective both, per parameter and multiply-add: run.objective_costs), so that allocation removes
        first what buys the most compute for the least signal."""
        if macs is None:
            self.console.log(f"objective {self.config.objective}: shapes unknown, ranking by parameters instead")
            return scores
        out = {}
        for g in self.groups:
            # every producer and consumer of a coupled group counts (Concat/Split: per neuron)
            out[g.id] = scores[g.id] / np.maximum(g.neuron_costs(macs), 1.0)
        return out

    def aligned(self, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.aligned_by(masks, self.scores)

    def aligned_by(self, masks: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`masks` kept to the groups' multiples, balanced blocks and required neurons, ties broken by `scores`."""
        masks = balance_blocks(align_masks(masks, scores, self.multiples), self.groups, scores)
        return keep_required(masks, self.groups, scores)

    def masks_at(self, fraction: float) -> dict[str, np.ndarray]:
        masks = self.aligned(blockselect.masks_for_fraction(self.scores, fraction, self.block_ranks))
        return blockselect.settle(masks, self.blocks)

    @property
    def block_ranks(self) -> list:
        if self._block_ranks and self.calibration is not None and not self._probed:
            self._block_ranks = blockselect.probed_ranks(self._block_ranks, self)
            self._probed = True
        return self._block_ranks

    def removals(self, masks: dict[str, np.ndarray]) -> list:
        """The edit records of the residual blocks these masks remove (their means from these statistics)."""
        return blockselect.removals(self.blocks, masks, self.comp.tap_stats)

    def masks_below(self, threshold: float) -> dict[str, np.ndarray]:
        return self.aligned(masks_below(self.scores, threshold, allow_empty=True))

    def updates(self, masks: dict[str, np.ndarray]) -> dict[int, ConsumerUpdate]:
        """Each consumer's compensation for these masks, per the configuration."""
        return self.comp.updates(masks, sequential=self.config.sequential)

    def build(self, masks: dict[str, np.ndarray], settings: dict | None = None, *, check_shapes: bool = True):
        """The pruned model for these masks, compensated per the configuration, and its updates."""
        updates = self.updates(masks)
        model = apply_masks(self.model, self.all_groups, masks, updates=updates, index=self.index,
                            settings=settings, check_shapes=check_shapes, blocks=self.removals(masks))
        return model, updates

    def evaluate(self, model) -> list[Figure]:
        """Every check of the plan for `model` (a ModelProto, its bytes or a session; None: the original
        model itself) on the held-out data."""
        checks = self.plan.start()
        self._judge(model, self.eval_data, self.reference, checks)
        self.evaluations += 1
        return [c.figure() for c in checks]

    def _judge(self, model, data: Dataset, reference, checks) -> None:
        session = model if model is None or hasattr(model, "get_outputs") else make_session(model, self.options)
        compare(session, data, reference=reference, batch_size=self.batch_size, options=self.options, checks=checks,
                run_samples=self.run_samples)

    def cross_fitted(self, fraction: float) -> list[Figure]:
        """Every check of the plan for the candidates at `fraction` built on each fold's complement, fed
        with that fold's samples: one figure per check, on every sample."""
        checks = self.plan.start()
        for fold in self.folds:
            masks = fold.builder.masks_at(fraction)
            model = None  # nothing removed: the original, whose outputs are the reference
            if not all(m.all() for m in masks.values()) or fold.builder.quantizer is not None:
                built = fold.builder.finished(fold.builder.build(masks, check_shapes=False)[0])
                model = serialized(built) or built
                del built
            self._judge(model, fold.data, fold.reference, checks)
        self.evaluations += 1
        figures = [c.figure() for c in checks]
        for f in figures:
            f.folds = len(self.folds)
        return figures

    def candidate(self, masks: dict[str, np.ndarray], label: str, fraction: float | None = None,
                  settings: dict | None = None) -> Candidate:
        # Candidates skip the strict shape re-inference: only the chosen one is written, and it is
        # rebuilt with every check before validation. The model itself is not kept (memory): its
        # proto goes before onnxruntime loads its bytes, and the bytes before it runs.
        if all(m.all() for m in masks.values()) and self.quantizer is None:
            # Nothing removed: the candidate is the original model, whose held-out outputs are the
            # reference itself (one held-out pass, a model copy and a session saved).
            return Candidate(label, fraction, masks, {n: int(m.sum()) for n, m in masks.items()},
                             self.parameters_before, self.evaluate(None), self.config.rule, self.updates(masks))
        model, updates = self.build(masks, settings, check_shapes=False)
        parameters = parameter_count(model)
        model = self.finished(model)
        blob = serialized(model)
        if blob is not None:
            del model
            model = blob
        session = make_session(model, self.options)
        del model, blob
        return Candidate(label, fraction, masks, {n: int(m.sum()) for n, m in masks.items()},
                         parameters, self.evaluate(session), self.config.rule, updates)

    def finished(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A built candidate as it would ship: quantized, with --quantize."""
        return model if self.quantizer is None else self.quantizer(model)

    def at_fraction(self, fraction: float, settings: dict | None = None) -> Candidate:
        label = f"remove {fraction:.1%}"
        if not self.folds:
            return self.candidate(self.masks_at(fraction), label, fraction, settings)
        # Judged by cross-fitting; described (kept neurons, parameters) as built from all the data, which
        # is the model written when it is chosen (its compensation is solved then).
        masks = self.masks_at(fraction)
        parameters = (self.parameters_before if all(m.all() for m in masks.values()) else
                      parameter_count(apply_masks(self.model, self.all_groups, masks, index=self.index,
                                                  check_shapes=False, blocks=self.removals(masks))))
        return Candidate(label, fraction, masks, {n: int(m.sum()) for n, m in masks.items()}, parameters,
                         self.cross_fitted(fraction), self.config.rule)

    def sweep(self, grid=None) -> list[Candidate]:
        grid = sorted(grid if grid is not None else self.config.grid)
        self._searching(len(grid) > 1)
        out = []
        for i, f in enumerate(grid):
            out.append(self.at_fraction(f))
            self.console.progress("evaluating candidates", i + 1, len(grid))
        return out

    def choose(self, grid=None, settings: dict | None = None) -> tuple[Candidate | None, list[Candidate]]:
        """Fixed-sequence testing: fractions in increasing order, stop at the first that fails.

        The chosen candidate is the last that passed; None when even the first fails. Only the chosen
        one keeps its consumers' refit weights (the others keep methods and errors). With the rule
        "estimate" (kept to measure what the bounds buy, not for use), observed losses stand in for
        bounds and the smallest candidate within budget is kept from a walk that stops after two
        failures in a row: selection on noise, as onnxprune 0.1 did.
        """
        grid = sorted(grid if grid is not None else self.config.grid)
        if self.quantizer is not None and grid[0] != 0:
            grid = [0.0, *grid]  # the original quantized alone comes first: if it fails, nothing can pass
        self._searching(len(grid) > 1)
        tried, chosen, misses = [], None, 0
        for i, f in enumerate(grid):
            c = self.at_fraction(f, settings)
            if f == 0 and self.quantizer is not None:
                quantize.require_quantized_original(c)
            tried.append(c)
            self.console.progress("evaluating candidates", i + 1, len(grid))
            misses = 0 if c.within_budget else misses + 1
            if misses >= (2 if self.config.rule == "estimate" else 1):
                c.drop_weights()
                if self.config.rule == "bound" and (chosen is None or not chosen.fraction):
                    tried += self._explore(grid[i + 1:], tried)
                self.console.progress("evaluating candidates", len(grid), len(grid))
                break
            if c.within_budget and (self.config.rule == "bound" or chosen is None
                                    or c.parameters <= chosen.parameters):
                if chosen is not None:
                    chosen.drop_weights()
                chosen = c  # bound: the last candidate before the first failure, as fixed-sequence testing says
            else:
                c.drop_weights()
        if chosen is not None and self.folds:  # the model written: compensated from all the data
            chosen.updates = self.updates(chosen.masks)
        return chosen, tried

    def _explore(self, fractions, tried: list[Candidate]) -> list[Candidate]:
        """When nothing could be certified, a few more steps of the walk (their bounds do not depend on the
        budget): enough to say what a looser budget certifies. Never chosen at this budget."""
        from .certify import walk_needs

        out, loosest = [], EXPLORE_UP_TO * tried[0].primary.budget
        for f in fractions[:EXPLORE_STEPS]:
            c = self.at_fraction(f)
            c.drop_weights()
            out.append(c)
            need = walk_needs(tried + out, self.parameters_before)[-1].needed
            if need is None or need > loosest:
                break
        return out

    def _searching(self, many: bool) -> None:
        """Many kept sets per consumer to come: worth one factorisation each. With cross-fitting, on every
        fold's statistics; the whole data's compensation is solved once, for the chosen candidate."""
        for selector in [f.builder for f in self.folds] or [self]:
            selector.comp.searching = many


def plan_for(config: SelectionConfig, model: onnx.ModelProto, names: list[str], probe: list[np.ndarray],
             labels: np.ndarray | None) -> Plan:
    """The metrics' checks `config` asks for, on the outputs `names` of `model` (`probe`: a few samples
    of the original's outputs)."""
    return plan_checks(config.metric, names, probe, labels, config.budget, config.confidence,
                       list(config.outputs) if config.outputs else None, declared_shapes(model, names))


def declared_shapes(model: onnx.ModelProto, names: list[str]) -> list[tuple | None]:
    """The model's declared output shapes (ints, or names for symbolic dimensions), by output name."""
    shapes = {}
    for out in model.graph.output:
        t = out.type.tensor_type
        if out.type.HasField("tensor_type") and t.HasField("shape"):
            shapes[out.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                     for d in t.shape.dim)
    return [shapes.get(n) for n in names]


def fixed_sequence_choice(candidates: list[Candidate]) -> Candidate | None:
    """The candidate fixed-sequence testing picks from an evaluated grid (in increasing fraction order):
    the last one before the first failure."""
    chosen = None
    for c in sorted(candidates, key=lambda c: c.fraction if c.fraction is not None else 0.0):
        if not c.within_budget:
            break
        chosen = c
    return chosen

"""The library API: load -> find groups -> measure -> choose -> rewrite -> validate -> write."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .bench import macs_per_sample
from .criteria import CRITERIA, keep_masks, masks_below, masks_for_fraction
from .data import DEFAULT_LABELS_KEY, Dataset, load_data
from .errors import InputError, ValidationFailed
from .graph import GraphIndex
from .groups import NeuronGroup, find_groups
from .modelio import StagedModel, check_output_path, file_uses_external_data, load_model, model_file_size
from .progress import Console
from .refit import ConsumerUpdate
from .report import GroupReport, Report
from .rewrite import apply_masks, parameter_count
from .runtime import StatisticsPass, collect_statistics, reference_pass
from .selection import (COMPENSATIONS, DEFAULT_GRID, METRICS, OBJECTIVES, Budget, Candidate, Selector,
                        smallest_within)
from .session import RuntimeOptions
from .stats import ActivationStats
from .validate import Tolerances, ValidationResult, validate

DEFAULT_BATCH_SIZE = 256
DEFAULT_CRITERION = "contribution"
DEFAULT_COMPENSATION = "refit"
DEFAULT_HOLDOUT = 0.5
MIN_SPLIT_SAMPLES = 20


@dataclass
class PruneResult:
    """The pruned model, its report and its validation result (truthy when it passed)."""

    model: onnx.ModelProto
    report: Report
    validation: ValidationResult
    stats: dict[str, ActivationStats]
    candidates: list[Candidate] = field(default_factory=list)


def default_output(model_path) -> Path:
    """model.onnx -> model.pruned.onnx beside it."""
    path = Path(model_path)
    return path.with_name(path.stem + ".pruned" + (path.suffix or ".onnx"))


def inspect(model) -> list[NeuronGroup]:
    """The neuron groups of a model (a path or ModelProto), prunable or with the reason why not."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model, load_external_data=False)
    return find_groups(model)


def statistics(model, data, *, batch_size: int = DEFAULT_BATCH_SIZE, labels: str | None = DEFAULT_LABELS_KEY,
               options: RuntimeOptions | None = None, console: Console | None = None,
               mask: str | None = None, workers: int = 1, cluster=None) -> dict[str, ActivationStats]:
    """Per-group activation statistics of a model on data, in one pass (split over `workers` processes,
    or over the shards of a Dask `cluster`: a Client or a scheduler address)."""
    console = console or Console()
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    dataset = load_data(data, proto, labels_key=labels)
    index = GraphIndex(proto)
    groups = find_groups(proto, index)
    return _measure(model, proto, groups, data, dataset, batch_size=batch_size, options=options or RuntimeOptions(),
                    index=index, mask=mask, labels=labels, workers=workers, cluster=cluster, console=console,
                    label="measuring activations").stats


def _check_workers(workers: int) -> int:
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    return workers


def _measure(model, proto, groups, data, dataset, *, batch_size, options, index, mask, labels, workers, cluster,
             console, label, calibration=None, grams=False) -> StatisticsPass:
    """One statistics pass: in this process, or sharded over worker processes or a cluster."""
    if _check_workers(workers) > 1 or cluster is not None:
        from .parallel import collect_statistics_sharded

        return collect_statistics_sharded(model, data, dataset, workers=workers, batch_size=batch_size,
                                          options=options, calibration=calibration, grams=grams, mask=mask,
                                          labels=labels, cluster=cluster, console=console)
    return collect_statistics(proto, groups, dataset, batch_size=batch_size, options=options, index=index,
                              calibration=calibration, grams=grams, mask=mask,
                              on_batch=lambda d, t: console.progress(label, d, t))


def calibration_split(n: int, holdout: float, seed: int = 0, multiple: int = 1) -> np.ndarray | None:
    """A deterministic, shuffled split: True for samples that feed the statistics.

    The held-out count is a multiple of `multiple` (a model's fixed batch size). None (no
    split) when there are too few samples to hold any out.
    """
    n_held = int(round(n * holdout / multiple)) * multiple
    if n < MIN_SPLIT_SAMPLES or n_held < 1 or n_held >= n:
        return None
    mask = np.ones(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_held]] = False
    return mask


def _check_threshold(name: str, value):
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or value < 0:
        raise InputError(f"{name} must be a non-negative number, got {value:g}")
    return value


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def _check_selection(metric, compensation, objective, max_drop, min_cosine) -> None:
    _check_choice("metric", metric, METRICS)
    _check_choice("compensation", compensation, COMPENSATIONS)
    _check_choice("objective", objective, OBJECTIVES)
    for name, value in (("max drop", max_drop), ("min cosine", min_cosine)):
        if value is None or math.isnan(value) or value < 0:
            raise InputError(f"{name} must be a non-negative number, got {value}")


class _Clock:
    def __init__(self):
        self.timings = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self._last, 4)
        self._last = now


@dataclass
class _Prepared:
    model_path: Path | None
    model: onnx.ModelProto
    index: GraphIndex
    groups: list[NeuronGroup]
    data: Dataset
    eval_data: Dataset | None
    calibration: np.ndarray | None
    measured: StatisticsPass | None
    eval_source: str

    @property
    def provenance(self) -> dict:
        """Which data fed the statistics and which judged the candidates and the final model."""
        n = self.data.n_samples
        used = f"{int(self.calibration.sum())} of {n} samples" if self.calibration is not None else f"all {n} samples"
        return {"statistics": f"{self.data.source} ({used})", "evaluation": self.eval_source}


def _prepare(model, data, *, eval_data, holdout, split: bool, grams: bool, batch_size, labels, options,
             console, clock, output=None, force=False, mask=None, workers=1, cluster=None) -> _Prepared:
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout:g}")
    model_path = None
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        model_path = Path(model)
        proto = load_model(model_path)
    if output is not None:
        check_output_path(output, model_path, force=force)
    dataset = load_data(data, proto, labels_key=labels)
    evaluation = load_data(eval_data, proto, labels_key=labels) if eval_data is not None else None
    if dataset.fixed_batch and dataset.fixed_batch != batch_size:
        console.log(f"the model's batch dimension is fixed to {dataset.fixed_batch}: "
                    f"feeding {dataset.fixed_batch} at a time")
    clock.lap("load")

    index = GraphIndex(proto)
    groups = find_groups(proto, index)
    n_prunable = sum(g.prunable for g in groups)
    console.log(f"{len(groups)} layer(s), {n_prunable} prunable neuron group(s)")
    clock.lap("groups")

    calibration = (calibration_split(dataset.n_samples, holdout, multiple=dataset.fixed_batch or 1)
                   if split and evaluation is None else None)
    measured = None
    eval_source = f"{dataset.source} (all {dataset.n_samples} samples, the same as the statistics)"
    if n_prunable:
        n_cal = dataset.n_samples if calibration is None else int(calibration.sum())
        console.log(f"measuring activations on {n_cal} samples"
                    + (f", holding out {dataset.n_samples - n_cal} for selection" if calibration is not None else ""))
        measured = _measure(model, proto, groups, data, dataset, batch_size=batch_size, options=options, index=index,
                            mask=mask, labels=labels, workers=workers, cluster=cluster, console=console,
                            label="measuring activations", calibration=calibration, grams=grams)
        if calibration is not None:
            eval_source = (f"{dataset.source} (held-out split: {dataset.n_samples - n_cal} of "
                           f"{dataset.n_samples} samples, not used for statistics)")
        if evaluation is not None:
            held = _measure(model, proto, groups, eval_data, evaluation, batch_size=batch_size, options=options,
                            index=index, mask=mask, labels=labels, workers=workers, cluster=cluster, console=console,
                            label="running held-out data", calibration=np.zeros(evaluation.n_samples, bool),
                            grams=grams)
            measured.heldout_grams, measured.reference = held.heldout_grams, held.reference
            eval_source = f"{evaluation.source} ({evaluation.n_samples} samples, --eval-data)"
        if split and measured.reference is None:
            # Too few samples to hold any out (or --holdout 0): candidates are judged on the statistics' data.
            measured.reference = reference_pass(proto, dataset, batch_size=batch_size, options=options)
    clock.lap("statistics")
    return _Prepared(model_path, proto, index, groups, dataset, evaluation, calibration, measured, eval_source)


def _calibration_dataset(p: _Prepared) -> Dataset:
    """The samples that fed the statistics (the sequential refit runs on them again)."""
    if p.calibration is not None:
        return p.data.subset(np.flatnonzero(p.calibration))
    return p.data


def _eval_dataset(p: _Prepared) -> Dataset:
    if p.eval_data is not None:
        return p.eval_data
    if p.calibration is not None:
        return p.data.subset(np.flatnonzero(~p.calibration))
    return p.data


def _mode(criterion, mean_threshold, std_threshold, fraction) -> tuple[str, str]:
    thresholds = mean_threshold is not None or std_threshold is not None
    if criterion is not None:
        _check_choice("criterion", criterion, CRITERIA)
    if thresholds and criterion not in (None, "seed"):
        raise InputError("--mean-threshold/--std-threshold set the seed criterion; leave out --criterion "
                         "or use --criterion seed")
    if thresholds and fraction is not None:
        raise InputError("give thresholds or a fraction, not both")
    if criterion == "dead":
        return "dead", "dead"
    if thresholds:
        return "thresholds", "seed"
    if fraction is not None:
        if not 0 <= fraction < 1:
            raise InputError(f"fraction must be in [0, 1), got {fraction:g}")
        return "fraction", criterion or DEFAULT_CRITERION
    return "budget", criterion or DEFAULT_CRITERION


def prune(model, data, *, output=None, eval_data=None, holdout: float = DEFAULT_HOLDOUT,
          criterion: str | None = None, mean_threshold: float | None = None, std_threshold: float | None = None,
          relative: bool = False, fraction: float | None = None, metric: str = "auto",
          max_drop: float = 0.5, min_cosine: float = 0.99, compensation: str = DEFAULT_COMPENSATION,
          grid=DEFAULT_GRID, batch_size: int = DEFAULT_BATCH_SIZE, labels: str | None = DEFAULT_LABELS_KEY,
          force: bool = False, threads: int = 0, tolerances: Tolerances | None = None, mask: str | None = None,
          align: int = 0, objective: str = "parameters", sequential: bool = True,
          console: Console | None = None, options: RuntimeOptions | None = None, workers: int = 1,
          cluster=None) -> PruneResult:
    """Prune `model` (a path or ModelProto) with statistics gathered on `data` (a .npz path or arrays).

    Modes, by the arguments given:
      - default: the smallest model whose metric drop on held-out data stays within the budget
        (`max_drop` percentage points, or `min_cosine`), neurons ranked by `criterion`;
      - `mean_threshold` / `std_threshold`: the seed's rule (criterion seed; `relative` scales
        the thresholds by each layer's activation RMS);
      - `fraction`: remove that fraction of all prunable neurons, lowest scores first;
      - `criterion="dead"`: only neurons exactly zero on every sample; outputs must not change.
    `compensation` is how consumers make up for removed neurons: "none" (the seed exactly),
    "fold" (mean into the bias) or "refit" (least squares, kept only where it helps on held-out data).
    The result is validated; with `output` it is written there atomically, only if validation passed.
    The statistics pass is split over `workers` processes, or over a Dask `cluster` (a
    `distributed.Client` or a scheduler address) when given; the results are the same.
    Raises InputError on bad input and ValidationFailed when the pruned model fails a check.
    """
    console = console or Console()
    clock = _Clock()
    options = options or RuntimeOptions(threads=threads)
    mean_threshold = _check_threshold("mean threshold", mean_threshold)
    std_threshold = _check_threshold("std threshold", std_threshold)
    _check_selection(metric, compensation, objective, max_drop, min_cosine)
    mode, criterion = _mode(criterion, mean_threshold, std_threshold, fraction)
    if mode == "dead":
        compensation = "none"
    output = Path(output) if output is not None else None

    p = _prepare(model, data, eval_data=eval_data, holdout=holdout, split=mode == "budget",
                 grams=compensation == "refit", batch_size=batch_size, labels=labels, options=options,
                 console=console, clock=clock, output=output, force=force, mask=mask, workers=workers,
                 cluster=cluster)
    stats = p.measured.stats if p.measured else {}
    eval_ds = _eval_dataset(p)
    reference = p.measured.reference if p.measured else None
    settings = {"mode": mode, "criterion": criterion, "compensation": compensation,
                "mean_threshold": mean_threshold, "std_threshold": std_threshold, "relative": relative,
                "fraction": fraction, "mask": mask, "align": align, "objective": objective,
                "sequential_refit": sequential and compensation == "refit",
                "batch_size": p.data.batch_size(batch_size),
                "data": Path(p.data.source).name, "samples": p.data.n_samples}
    if mode == "budget":
        settings.update(max_drop=max_drop, min_cosine=min_cosine)

    candidates: list[Candidate] = []
    chosen = None
    updates: dict[int, ConsumerUpdate] = {}
    if mode == "dead" or not stats:
        masks = keep_masks(stats, "dead")
        pruned = apply_masks(p.model, p.groups, masks, index=p.index, settings=settings)
    else:
        selector = Selector(
            p.model, p.index, p.groups, stats, eval_ds, reference, criterion=criterion, compensation=compensation,
            metric=metric if reference is not None else "auto", budget=Budget(max_drop, min_cosine),
            calibration_grams=p.measured.calibration_grams, heldout_grams=p.measured.heldout_grams,
            criterion_settings={"mean_threshold": mean_threshold, "std_threshold": std_threshold,
                                "relative": relative},
            batch_size=batch_size, align=align, objective=objective, options=options, console=console,
            calibration_data=_calibration_dataset(p) if sequential else None, mask=mask)
        if mode == "budget":
            console.log(f"searching for the smallest model within the budget ({criterion} criterion, "
                        f"{compensation}, metric {selector.metric})")
            chosen, candidates = selector.choose(grid, settings=settings)
            if chosen is None:  # a grid without 0 whose every amount breaks the budget: prune nothing
                chosen = selector.at_fraction(0.0, settings)
                candidates.append(chosen)
            settings["metric"] = selector.metric
            masks, updates = chosen.masks, chosen.updates
            # rebuilt with the strict shape checks that candidates skip
            pruned = apply_masks(p.model, p.groups, masks, updates=updates, index=p.index, settings=settings)
        else:
            masks = selector.aligned(masks_below(selector.scores, 1.0) if mode == "thresholds"
                                     else masks_for_fraction(selector.scores, fraction))
            updates = selector.sequential_updates(masks) if sequential else selector.updates_for(masks)
            pruned = apply_masks(p.model, p.groups, masks, updates=updates, index=p.index, settings=settings)
    clock.lap("selection")

    report = Report(
        model=str(p.model_path) if p.model_path else "<model>", output=str(output) if output else None,
        data=p.data.source, samples=p.data.n_samples, settings=settings,
        parameters_before=parameter_count(p.model), parameters_after=parameter_count(pruned),
        file_size_before=model_file_size(p.model_path) if p.model_path else p.model.ByteSize(),
    )
    one = next(eval_ds.batches(1))
    report.macs_before, report.macs_after = macs_per_sample(p.model, one), macs_per_sample(pruned, one)
    report.provenance = p.provenance
    if chosen is not None:
        report.chosen = chosen.label
        report.candidates = [c.to_dict(report.parameters_before) for c in candidates]
    methods = {}
    for g in p.groups:
        for c in g.consumer_nodes:
            if c in updates:
                methods.setdefault(g.name, []).append(updates[c].method)
    for g in p.groups:
        kept = int(masks[g.name].sum()) if g.name in masks else g.size
        dead = int(stats[g.name].dead.sum()) if g.name in stats else None
        report.groups.append(GroupReport(g.name, g.producer_op, g.size, kept if g.prunable else g.size,
                                         g.prunable, g.reason, g.tap, dead, methods.get(g.name)))

    with tempfile.TemporaryDirectory(prefix="onnxprune-") as scratch:
        destination = output if output is not None else Path(scratch) / "pruned.onnx"
        # Keep the input's storage form: external data in, external data out (and above 2 GiB).
        external = bool(p.model_path and file_uses_external_data(p.model_path)) or None
        staged = StagedModel(pruned, destination, external_data=external)
        try:
            report.file_size_after = model_file_size(staged.path)
            console.log("validating the pruned model")
            result = validate(p.model_path or p.model, staged.path, eval_ds, batch_size=batch_size,
                              options=options, exact=mode == "dead", tolerances=tolerances,
                              reference=reference, data_label=report.provenance["evaluation"])
            report.validation = result.to_dict()
            clock.lap("validation")
            if not result:
                report.timings = clock.timings
                raise ValidationFailed("pruned model failed validation: " + "; ".join(result.failures),
                                       result, report)
            if output is not None:
                staged.commit()
                report.written = True
        finally:
            staged.discard()
    clock.lap("write")
    report.timings = clock.timings
    return PruneResult(pruned, report, result, stats, candidates)


@dataclass
class SweepResult:
    candidates: list[Candidate]
    chosen: Candidate | None
    metric: str
    parameters_before: int
    criterion: str
    compensation: str
    provenance: dict
    timings: dict
    stats: dict[str, ActivationStats]
    groups: list[NeuronGroup]
    budget: Budget

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "compensation": self.compensation, "metric": self.metric,
                "budget": {"max_drop": self.budget.max_drop, "min_cosine": self.budget.min_cosine},
                "parameters_before": self.parameters_before, "provenance": self.provenance,
                "chosen": self.chosen.label if self.chosen else None,
                "candidates": [c.to_dict(self.parameters_before) for c in self.candidates],
                "timings": self.timings}


def sweep(model, data, *, eval_data=None, holdout: float = DEFAULT_HOLDOUT, criterion: str = DEFAULT_CRITERION,
          mean_threshold: float | None = None, std_threshold: float | None = None, relative: bool = False,
          compensation: str = DEFAULT_COMPENSATION, grid=DEFAULT_GRID, metric: str = "auto",
          max_drop: float = 0.5, min_cosine: float = 0.99, batch_size: int = DEFAULT_BATCH_SIZE,
          labels: str | None = DEFAULT_LABELS_KEY, threads: int = 0, mask: str | None = None, align: int = 0,
          objective: str = "parameters", console: Console | None = None,
          options: RuntimeOptions | None = None, workers: int = 1, cluster=None) -> SweepResult:
    """Evaluate a grid of fractions (statistics gathered once, one held-out pass per candidate)."""
    console = console or Console()
    clock = _Clock()
    options = options or RuntimeOptions(threads=threads)
    _check_choice("criterion", criterion, CRITERIA)
    _check_selection(metric, compensation, objective, max_drop, min_cosine)
    grid = sorted(set(float(f) for f in grid))
    if not grid or any(not 0 <= f < 1 for f in grid):
        raise InputError("grid fractions must be in [0, 1)")
    p = _prepare(model, data, eval_data=eval_data, holdout=holdout, split=True, grams=compensation == "refit",
                 batch_size=batch_size, labels=labels, options=options, console=console, clock=clock, mask=mask,
                 workers=workers, cluster=cluster)
    if p.measured is None:
        raise InputError("the model has no prunable neuron group (see `onnxprune inspect`)")
    selector = Selector(p.model, p.index, p.groups, p.measured.stats, _eval_dataset(p), p.measured.reference,
                        criterion=criterion, compensation=compensation, metric=metric,
                        budget=Budget(max_drop, min_cosine), calibration_grams=p.measured.calibration_grams,
                        heldout_grams=p.measured.heldout_grams,
                        criterion_settings={"mean_threshold": mean_threshold, "std_threshold": std_threshold,
                                            "relative": relative},
                        batch_size=batch_size, align=align, objective=objective, options=options, console=console)
    console.log(f"evaluating {len(grid)} candidates ({criterion}, {compensation}, metric {selector.metric})")
    candidates = selector.sweep(grid)
    chosen = smallest_within(candidates)
    clock.lap("candidates")
    return SweepResult(candidates, chosen, selector.metric, selector.parameters_before, criterion, compensation,
                       p.provenance, clock.timings, p.measured.stats, p.groups, selector.budget)

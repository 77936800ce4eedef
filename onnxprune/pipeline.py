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
from .criteria import keep_masks
from .data import DEFAULT_LABELS_KEY, Dataset, load_data
from .errors import InputError, ValidationFailed
from .graph import GraphIndex
from .groups import NeuronGroup, find_groups
from .modelio import (EXTERNAL_DATA_ABOVE, StagedModel, as_model, check_output_path, file_uses_external_data,
                      full_check_problem, load_model, model_file_size, writes_external_data)
from .progress import Console
from .compensate import Compensation
from .metrics import Budget
from .refit import ConsumerUpdate
from .report import GroupReport, Report
from .rewrite import apply_masks, parameter_count
from .runtime import StatisticsPass, collect_statistics, reference_pass
from .ops import Skip
from .selection import STRUCTURES, Candidate, SelectionConfig, Selector, fixed_sequence_choice
from .session import RuntimeOptions, check_loads, run_problem
from .stats import ActivationStats
from .unpack import split_packed_heads
from .validate import Tolerances, ValidationResult, validate

DEFAULT_BATCH_SIZE = 256
DEFAULT_CRITERION = SelectionConfig.criterion
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
    """The neuron groups of a model (a path or ModelProto), prunable or with the reason why not, as
    pruning sees them: packed Q/K/V projections split where that makes their heads prunable."""
    return inspect_split(model)[0]


def inspect_split(model) -> tuple[list[NeuronGroup], list[str]]:
    """`inspect`'s groups and a line per packed Q/K/V projection split to find them."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)  # with its weights: splitting a packed projection slices them
    _, _, groups, notes = split_packed_heads(model)
    return groups, notes


def statistics(model, data, *, batch_size: int = DEFAULT_BATCH_SIZE, labels: str | None = DEFAULT_LABELS_KEY,
               options: RuntimeOptions | None = None, console: Console | None = None,
               mask: str | None = None, batch_axes=None, constant_inputs=(), workers: int = 1,
               cluster=None) -> dict[str, ActivationStats]:
    """Per-group activation statistics of a model on data, in one pass (split over `workers` processes,
    or over the shards of a Dask `cluster`: a Client or a scheduler address)."""
    return _group_statistics(model, data, None, batch_size=batch_size, labels=labels, options=options,
                             console=console, mask=mask, batch_axes=batch_axes, constant_inputs=constant_inputs,
                             workers=workers, cluster=cluster)[0]


def head_scores(model, data, *, criterion: str = "contribution", batch_size: int = DEFAULT_BATCH_SIZE,
                labels: str | None = DEFAULT_LABELS_KEY, options: RuntimeOptions | None = None,
                console: Console | None = None, mask: str | None = None, batch_axes=None,
                constant_inputs=()) -> dict[str, np.ndarray]:
    """Per prunable head group (by id), one score per head (per key/value group with grouped-query
    attention): the sum of its neurons' scores under `criterion`. With "contribution" (the default
    ranking), a head's share of the variance its out-projection receives: the scores of a layer sum to 1."""
    from .compensate import Compensation
    from .criteria import scores_of

    stats, proto, index, groups = _group_statistics(
        model, data, lambda g: g.kind == "heads" and g.prunable, batch_size=batch_size, labels=labels,
        options=options, console=console, mask=mask, batch_axes=batch_axes, constant_inputs=constant_inputs,
        split=True)
    if not groups:
        return {}
    evidence = Compensation(proto, index, groups, stats, mode="fold").evidence
    scores = scores_of(evidence, criterion)
    return {g.id: scores[g.id].reshape(-1, g.unit).sum(axis=1) for g in groups if g.id in scores}


def _group_statistics(model, data, which, *, batch_size, labels, options, console, mask, batch_axes,
                      constant_inputs, workers=1, cluster=None, split=False):
    """(statistics, proto, index, groups) of the groups `which` picks (None: all) in one pass; with
    `split`, of the model with its packed Q/K/V projections split as pruning splits them."""
    console = console or Console()
    options = options or RuntimeOptions()
    proto, path = as_model(model)
    check_loads(proto, options, path)
    dataset = load_data(data, proto, labels_key=labels, batch_axes=batch_axes, constant_inputs=constant_inputs)
    if split:
        proto, index, groups = split_packed_heads(proto)[:3]
    else:
        index = GraphIndex(proto)
        groups = find_groups(proto, index)
    groups = [g for g in groups if which is None or which(g)]
    if not groups:
        return {}, proto, index, groups
    stats = _measure(model, proto, groups, data, dataset, batch_size=batch_size, options=options, index=index,
                     mask=mask, labels=labels, workers=workers, cluster=cluster, console=console,
                     label="measuring activations").stats
    return stats, proto, index, groups


def _check_workers(workers: int) -> int:
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    return workers


def _measure(model, proto, groups, data, dataset, *, batch_size, options, index, mask, labels, workers, cluster,
             console, label, calibration=None, grams=False) -> StatisticsPass:
    """One statistics pass: in this process, or sharded over worker processes or a cluster."""
    if _check_workers(workers) > 1 or cluster is not None:
        from .parallel import collect_statistics_sharded

        if dataset.constants or any(dataset.axes.values()):
            raise InputError("--workers and --dask do not support inputs batched off axis 0 or constant inputs yet",
                             field="--workers")
        # the checked proto, not the file: node names may have been made unique, and group ids follow them
        return collect_statistics_sharded(proto, data, dataset, workers=workers, batch_size=batch_size,
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
    original: onnx.ModelProto | None = None  # the input as loaded, when `model` has split packed projections
    unpacked: list = field(default_factory=list)  # a line per packed Q/K/V projection split

    @property
    def provenance(self) -> dict:
        """Which data fed the statistics and which judged the candidates and the final model."""
        n = self.data.n_samples
        used = f"{int(self.calibration.sum())} of {n} samples" if self.calibration is not None else f"all {n} samples"
        return {"statistics": f"{self.data.source} ({used})", "evaluation": self.eval_source}


def _prepare(model, data, *, eval_data, holdout, split: bool, grams: bool, batch_size, labels, options,
             console, clock, output=None, force=False, mask=None, batch_axes=None, constant_inputs=(),
             workers=1, cluster=None, structures=STRUCTURES) -> _Prepared:
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout:g}")
    proto, model_path = as_model(model)
    if output is not None:
        check_output_path(output, model_path, force=force, external_data=writes_external_data(proto, model_path))
    check_loads(proto, options, model_path)
    layout = {"batch_axes": batch_axes, "constant_inputs": constant_inputs}
    dataset = load_data(data, proto, labels_key=labels, **layout)
    evaluation = load_data(eval_data, proto, labels_key=labels, **layout) if eval_data is not None else None
    if dataset.fixed_batch and dataset.fixed_batch != batch_size:
        console.log(f"the model's batch dimension is fixed to {dataset.fixed_batch}: "
                    f"feeding {dataset.fixed_batch} at a time")
    clock.lap("load")

    original, unpacked = proto, []
    if "heads" in structures:  # packed Q/K/V projections are split where that makes their heads prunable
        proto, index, groups, unpacked = split_packed_heads(proto)
        for line in unpacked:
            console.log(line)
    else:
        index = GraphIndex(proto)
        groups = find_groups(proto, index)
    for g in groups:
        if g.prunable and g.kind not in structures:
            g.reason = Skip("excluded", f"{g.kind} are left out (structures: {', '.join(structures)})")
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
                            grams=False)
            measured.reference, measured.held_max = held.reference, held.held_max
            eval_source = f"{evaluation.source} ({evaluation.n_samples} samples, --eval-data)"
        if split and measured.reference is None:
            # Too few samples to hold any out (or --holdout 0): candidates are judged on the statistics' data.
            measured.reference = reference_pass(proto, dataset, batch_size=batch_size, options=options)
    clock.lap("statistics")
    return _Prepared(model_path, proto, index, groups, dataset, evaluation, calibration, measured, eval_source,
                     original if proto is not original else None, unpacked)


def _input_model(p: _Prepared) -> onnx.ModelProto:
    """The model as the user gave it (as loaded), before any packed projection was split."""
    return p.original if p.original is not None else p.model


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


def _mode(config: SelectionConfig, fraction) -> str:
    thresholds = config.mean_threshold is not None or config.std_threshold is not None
    if config.criterion == "dead":
        return "dead"
    if thresholds:
        return "thresholds"
    if fraction is not None:
        if not 0 <= fraction < 1:
            raise InputError(f"fraction must be in [0, 1), got {fraction:g}")
        return "fraction"
    return "budget"


# prune's and sweep's keyword arguments that make up a SelectionConfig (with its Budget)
SELECTION_ARGUMENTS = ("criterion", "mean_threshold", "std_threshold", "relative", "metric", "max_drop", "min_cosine",
                       "max_class_drop", "max_channel_error", "max_score_change", "decision_threshold", "max_loss",
                       "channel_axis", "confidence", "rule", "outputs", "compensation", "grid", "align", "objective",
                       "sequential", "structures")


def _selection_arguments(arguments: dict) -> dict:
    options = {k: arguments[k] for k in SELECTION_ARGUMENTS}
    options["outputs"] = tuple(options["outputs"]) if options["outputs"] else None
    options["grid"] = tuple(options["grid"]) if options["grid"] is not None else None
    structures = options["structures"]
    if isinstance(structures, str):
        structures = [s.strip() for s in structures.split(",") if s.strip()]
    options["structures"] = tuple(structures) if structures is not None else None
    return options


def _config(config: SelectionConfig | None, options: dict) -> SelectionConfig:
    """The selection config from an explicit one or the keyword options (not both)."""
    given = {k: v for k, v in options.items() if v is not None}
    if config is not None:
        if given:
            raise InputError(f"give either config= or the options {', '.join(sorted(given))}, not both")
        config.check()
        return config
    thresholds = given.get("mean_threshold") is not None or given.get("std_threshold") is not None
    criterion = given.get("criterion")
    if thresholds and criterion not in (None, "seed"):
        raise InputError("--mean-threshold/--std-threshold set the seed criterion; leave out --criterion "
                         "or use --criterion seed")
    if thresholds:
        given["criterion"] = "seed"
    for name in ("mean_threshold", "std_threshold"):
        if name in given:
            given[name] = _check_threshold(name.replace("_", " "), given[name])
    config = SelectionConfig.from_options(**given)
    config.check()
    return config


def _resolve_sequential(config: SelectionConfig, model: onnx.ModelProto) -> None:
    from .selection import SEQUENTIAL_UP_TO

    if config.sequential is None:
        config.sequential = parameter_count(model) <= SEQUENTIAL_UP_TO


def _settings(p: "_Prepared", config: SelectionConfig, mode: str, fraction, mask, batch_size) -> dict:
    b = config.budget
    settings = {"mode": mode, "criterion": config.criterion, "compensation": config.compensation,
                "mean_threshold": config.mean_threshold, "std_threshold": config.std_threshold,
                "relative": config.relative, "fraction": fraction, "mask": mask, "align": config.align,
                "objective": config.objective, "structures": list(config.structures),
                "sequential_refit": config.sequential and config.compensation == "refit",
                "batch_size": p.data.batch_size(batch_size), "data": Path(p.data.source).name,
                "samples": p.data.n_samples}
    if p.unpacked:
        settings["split_projections"] = list(p.unpacked)
    if mode == "budget":
        settings.update(metric=config.metric if isinstance(config.metric, str) else "custom",
                        max_drop=b.max_drop, min_cosine=b.min_cosine, max_class_drop=b.max_class_drop,
                        max_channel_error=b.max_channel_error,
                        max_score_change=b.max_score_change, confidence=config.confidence, rule=config.rule)
    return settings


def _macs(model, data: Dataset):
    from .bench import data_feeds, node_macs

    try:
        return node_macs(model, data_feeds(data, 1))
    except Exception:  # MACs only inform: unknown is reported as unknown
        return None


def _held_out(p: "_Prepared", mode: str) -> bool:
    """Whether the evaluation data is apart from the statistics' data."""
    return p.eval_data is not None or (p.calibration is not None and mode == "budget")


def _probe_plan(model, data: Dataset, config: SelectionConfig, options: RuntimeOptions):
    """The metrics' plan from the original's outputs on a few samples (modes that hold nothing out)."""
    from .metrics import plan_checks
    from .session import make_session, run
    from .validate import as_array

    feeds = next(data.batches(8))
    session = make_session(model, options)
    probe = [as_array(o) for o in run(session, feeds, options, purpose="original")]
    from .selection import declared_shapes

    names = [o.name for o in session.get_outputs()]
    return plan_checks(config.metric, names, probe, data.labels, config.budget, config.confidence,
                       list(config.outputs) if config.outputs else None, declared_shapes(model, names))


def _check_all_labels(p: "_Prepared", config: SelectionConfig) -> None:
    """Labels must fit the output they are compared with, in every sample (not only the held-out ones)."""
    from .metrics import labelled_output, n_classes

    reference, held = p.measured.reference, _eval_dataset(p)
    if reference is None or (p.data.labels is None and held.labels is None):
        return
    probe = next(reference.batches(min(8, held.n_samples), held.n_samples))
    k = labelled_output(reference.names, probe, list(config.outputs) if config.outputs else None)
    if k is None:
        return
    for ds in (p.data, p.eval_data):  # the held-out split is part of p.data
        if ds is not None:
            ds.check_labels(n_classes(probe[k]))


def _selector(p: "_Prepared", config: SelectionConfig, *, batch_size, options, console, mask,
              sequential_data: bool) -> Selector:
    compensation = Compensation(
        p.model, p.index, p.groups, p.measured.stats, mode=config.compensation,
        calibration_grams=p.measured.calibration_grams, fold_grams=p.measured.fold_grams,
        calibration_data=_calibration_dataset(p) if sequential_data else None, mask=mask, batch_size=batch_size,
        options=options, ridge=config.ridge, tap_stats=p.measured.tap_stats)
    macs = _macs(p.model, _eval_dataset(p)) if config.objective == "macs" else None
    _check_all_labels(p, config)
    return Selector(p.model, p.index, p.groups, p.measured.stats, _eval_dataset(p), p.measured.reference, config,
                    compensation=compensation, options=options, console=console, batch_size=batch_size, macs=macs,
                    run_samples=p.measured.samples_per_run(batch_size))


def prune(model, data, *, output=None, eval_data=None, holdout: float = DEFAULT_HOLDOUT,
          criterion: str | None = None, mean_threshold: float | None = None, std_threshold: float | None = None,
          relative: bool | None = None, fraction: float | None = None, metric=None,
          max_drop: float | None = None, min_cosine: float | None = None, max_class_drop: float | None = None,
          max_channel_error: float | None = None,
          max_score_change: float | None = None, decision_threshold: float | None = None,
          channel_axis: int | None = None,
          max_loss: float | None = None, confidence: float | None = None, rule: str | None = None,
          outputs=None, compensation: str | None = None, grid=None, batch_size: int = DEFAULT_BATCH_SIZE,
          labels: str | None = DEFAULT_LABELS_KEY, force: bool = False, threads: int = 0,
          tolerances: Tolerances | None = None, mask: str | None = None, align: int | None = None,
          objective: str | None = None, sequential: bool | None = None, structures=None,
          config: SelectionConfig | None = None, console: Console | None = None,
          options: RuntimeOptions | None = None, batch_axes=None, constant_inputs=(), workers: int = 1,
          cluster=None) -> PruneResult:
    """Prune `model` (a path or ModelProto) with statistics gathered on `data` (a .npz path or arrays).

    Modes, by the arguments given:
      - default: the smallest model whose every metric stays within its budget on held-out data
        at the given `confidence` (one-sided upper bounds, fixed-sequence testing of increasing
        fractions); `metric` is "auto", a registered name or a callable
        `fn(before, after, labels) -> per-sample losses` (with `max_loss`);
      - `mean_threshold` / `std_threshold`: the seed's rule (criterion seed; `relative` scales
        the thresholds by each layer's activation RMS);
      - `fraction`: remove that fraction of all prunable neurons, lowest scores first;
      - `criterion="dead"`: only neurons exactly zero on every sample; outputs must not change.
    Selection options can also come as one `config` (SelectionConfig). `compensation` is how
    consumers make up for removed neurons: "none" (the seed exactly), "fold" (mean into the bias)
    or "refit" (least squares, kept only where it beats folding out of sample on calibration data).
    `batch_axes` ({input: axis}) and `constant_inputs` (names) describe inputs whose samples are
    not along axis 0, or that are given once for all samples (see `onnxprune.data.input_layout`).
    The result is validated; with `output` it is written there atomically, only if validation passed.
    The statistics pass is split over `workers` processes, or over a Dask `cluster` (a
    `distributed.Client` or a scheduler address) when given; the results are the same.
    Raises InputError on bad input and ValidationFailed when the pruned model fails a check.
    """
    console = console or Console()
    clock = _Clock()
    options = options or RuntimeOptions(threads=threads)
    config = _config(config, _selection_arguments(locals()))
    mode = _mode(config, fraction)
    if mode == "dead":
        config.compensation = "none"
    output = Path(output) if output is not None else None

    p = _prepare(model, data, eval_data=eval_data, holdout=holdout, split=mode == "budget",
                 grams=config.compensation == "refit", batch_size=batch_size, labels=labels, options=options,
                 console=console, clock=clock, output=output, force=force, mask=mask, batch_axes=batch_axes,
                 constant_inputs=constant_inputs, workers=workers, cluster=cluster, structures=config.structures)
    stats = p.measured.stats if p.measured else {}
    eval_ds = _eval_dataset(p)
    held_out = _held_out(p, mode)
    _resolve_sequential(config, p.model)
    settings = _settings(p, config, mode, fraction, mask, batch_size)

    candidates: list[Candidate] = []
    chosen = None
    updates: dict[int, ConsumerUpdate] = {}
    notes: list[str] = []
    plan = None
    if mode == "dead" or not stats:
        masks = keep_masks(stats, "dead", p.groups)
        pruned = apply_masks(p.model, p.groups, masks, index=p.index, settings=settings)
    else:
        selector = _selector(p, config, batch_size=batch_size, options=options, console=console, mask=mask,
                             sequential_data=config.sequential)
        plan = selector.plan or _probe_plan(p.model, eval_ds, config, options)
        for line in plan.explanation:
            console.log(line)
        if mode == "budget":
            for warning in selector.warnings():
                console.log(f"warning: {warning}")
                notes.append(warning)
            console.log(f"searching for the smallest model within the budget ({config.criterion} criterion, "
                        f"{config.compensation}, {config.confidence:.0%} confidence)")
            chosen, candidates = selector.choose(settings=settings)
            if chosen is None:
                # Not even the first candidate could be shown within budget: remove only what is provably
                # lossless (exactly-dead neurons), checked exactly below.
                note = ("no candidate could be shown within the budget on this data: only exactly-dead neurons "
                        "were removed")
                console.log(note)
                notes.append(note)
                mode = settings["mode"] = "dead"
                # dead on every sample seen, held-out ones included: the exact check below runs on those
                masks, updates = keep_masks(p.measured.dead_everywhere(p.groups), "dead", p.groups), {}
            else:
                masks, updates = chosen.masks, chosen.updates
            # rebuilt with the strict shape checks that candidates skip
            pruned = apply_masks(p.model, p.groups, masks, updates=updates, index=p.index, settings=settings)
        else:
            masks = (selector.masks_below(1.0) if mode == "thresholds" else selector.masks_at(fraction))
            pruned, updates = selector.build(masks, settings)
        selector = None  # its consumer weights and evidence are not needed past here (memory)
    clock.lap("selection")

    report = Report(
        model=str(p.model_path) if p.model_path else "<model>", output=str(output) if output else None,
        data=p.data.source, samples=p.data.n_samples, settings=settings,
        parameters_before=parameter_count(p.model), parameters_after=parameter_count(pruned),
        file_size_before=model_file_size(p.model_path) if p.model_path else _input_model(p).ByteSize(),
    )
    report.notes = notes
    report.explanation = plan.explanation if plan is not None else []
    one = next(eval_ds.batches(1))
    axes = eval_ds.batch_axes
    report.macs_before, report.macs_after = macs_per_sample(p.model, one, axes), macs_per_sample(pruned, one, axes)
    report.provenance = p.provenance
    if chosen is not None or candidates:
        report.chosen = chosen.label if chosen is not None else None
        report.candidates = [c.to_dict(report.parameters_before) for c in candidates]
    methods = {}
    for g in p.groups:
        for c in g.consumer_nodes:
            if c in updates:
                methods.setdefault(g.id, []).append(updates[c].method)
    for g in p.groups:
        kept = int(masks[g.id].sum()) if g.id in masks else g.size
        dead = int(stats[g.id].dead.sum()) if g.id in stats else None
        report.groups.append(GroupReport(g.name, g.producer_op, g.size, kept if g.prunable else g.size,
                                         g.prunable, None if g.reason is None else str(g.reason), g.tap, dead,
                                         methods.get(g.id), id=g.id,
                                         skip=None if g.reason is None else g.reason.to_dict(),
                                         producers=g.producer_names, kind=g.kind, unit=g.unit,
                                         head_dim=g.head_dim))
    report.nothing_to_prune = _nothing_to_prune(p.groups, report, mode)
    if report.nothing_to_prune:
        console.log(f"nothing to prune: {report.nothing_to_prune}")

    with tempfile.TemporaryDirectory(prefix="onnxprune-") as scratch:
        destination = output if output is not None else Path(scratch) / "pruned.onnx"
        # Keep the input's storage form: external data in, external data out (and above 2 GiB).
        external = bool(p.model_path and file_uses_external_data(p.model_path)) or None
        staged = StagedModel(pruned, destination, external_data=external)
        try:
            report.file_size_after = model_file_size(staged.path)
            console.log("validating the pruned model")
            # The loaded proto, not the file: its node names were made unique for onnxruntime.
            source = _input_model(p)
            original = source if source.ByteSize() < EXTERNAL_DATA_ABOVE else p.model_path
            result = validate(original, staged.path, eval_ds, batch_size=batch_size,
                              options=options, exact=mode == "dead", tolerances=tolerances,
                              reference=p.measured.reference if p.measured else None,
                              data_label=report.provenance["evaluation"], plan=plan,
                              run_samples=p.measured.samples_per_run(batch_size) if p.measured else None)
            if not held_out:
                for figure in result.figures:
                    figure.held_out = False
            report.validation = result.to_dict()
            clock.lap("validation")
            if not result:
                report.timings = clock.timings
                problem = full_check_problem(p.model_path or p.model)
                if problem:  # no pruned form of such a model can pass; the fault is the input's
                    raise InputError(f"{p.model_path or 'the model'}: the input model itself fails onnx's full "
                                     f"check (shape and type inference): {problem}", path=p.model_path)
                problem = run_problem(p.model, next(eval_ds.batches(batch_size)), options)
                if problem:  # without a prunable group nothing ran the original before validation
                    raise InputError(f"{eval_ds.source}: onnxruntime cannot run the input model on the data: "
                                     f"{problem}", path=None if eval_ds.source.startswith("<") else eval_ds.source)
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


def _nothing_to_prune(groups: list[NeuronGroup], report: Report, mode: str) -> str | None:
    """Why no neuron was removed, or None when some were."""
    if not any(g.prunable for g in groups):
        return ("the model has no prunable neuron group" if groups else "the model has no Gemm/MatMul/Conv layer") + \
            " (see `onnxprune inspect`)"
    if report.neurons_removed:
        return None
    return {"dead": "no neuron was exactly zero on every sample",
            "thresholds": "no neuron was below the thresholds",
            "fraction": "the fraction is too small to remove a whole neuron",
            "budget": "every amount tried broke the budget"}.get(mode, "no neuron was removed")


@dataclass
class SweepResult:
    candidates: list[Candidate]
    chosen: Candidate | None
    config: SelectionConfig
    parameters_before: int
    provenance: dict
    timings: dict
    stats: dict[str, ActivationStats]
    groups: list[NeuronGroup]
    explanation: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.candidates[0].metric if self.candidates else ""

    @property
    def criterion(self) -> str:
        return self.config.criterion

    @property
    def compensation(self) -> str:
        return self.config.compensation

    @property
    def budget(self) -> Budget:
        return self.config.budget

    def to_dict(self) -> dict:
        b = self.config.budget
        return {"criterion": self.criterion, "compensation": self.compensation, "metric": self.metric,
                "confidence": self.config.confidence, "rule": self.config.rule,
                "budget": {"max_drop": b.max_drop, "min_cosine": b.min_cosine,
                           "max_channel_error": b.max_channel_error, "max_score_change": b.max_score_change},
                "parameters_before": self.parameters_before, "provenance": self.provenance,
                "explanation": self.explanation, "warnings": self.warnings,
                "chosen": self.chosen.label if self.chosen else None,
                "candidates": [c.to_dict(self.parameters_before) for c in self.candidates],
                "timings": self.timings}


def sweep(model, data, *, eval_data=None, holdout: float = DEFAULT_HOLDOUT, criterion: str | None = None,
          mean_threshold: float | None = None, std_threshold: float | None = None, relative: bool | None = None,
          compensation: str | None = None, grid=None, metric=None, max_drop: float | None = None,
          min_cosine: float | None = None, max_class_drop: float | None = None, max_channel_error: float | None = None,
          max_score_change: float | None = None, decision_threshold: float | None = None,
          channel_axis: int | None = None,
          max_loss: float | None = None, confidence: float | None = None, rule: str | None = None, outputs=None,
          batch_size: int = DEFAULT_BATCH_SIZE, labels: str | None = DEFAULT_LABELS_KEY, threads: int = 0,
          mask: str | None = None, align: int | None = None, objective: str | None = None,
          sequential: bool | None = None, structures=None, config: SelectionConfig | None = None,
          console: Console | None = None, options: RuntimeOptions | None = None, batch_axes=None,
          constant_inputs=(), workers: int = 1, cluster=None) -> SweepResult:
    """Evaluate a grid of fractions (statistics gathered once, one held-out pass per candidate).

    Every candidate gets the same figures as `prune` would give it; `chosen` is the one
    fixed-sequence testing picks (the last before the first failure). The statistics pass is
    split over `workers` processes or a Dask `cluster` when given."""
    console = console or Console()
    clock = _Clock()
    options = options or RuntimeOptions(threads=threads)
    config = _config(config, _selection_arguments(locals()))
    fractions = sorted(set(float(f) for f in config.grid))
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise InputError("grid fractions must be in [0, 1)")
    p = _prepare(model, data, eval_data=eval_data, holdout=holdout, split=True,
                 grams=config.compensation == "refit", batch_size=batch_size, labels=labels, options=options,
                 console=console, clock=clock, mask=mask, batch_axes=batch_axes, constant_inputs=constant_inputs,
                 workers=workers, cluster=cluster, structures=config.structures)
    if p.measured is None:
        raise InputError("the model has no prunable neuron group (see `onnxprune inspect`)")
    _resolve_sequential(config, p.model)
    selector = _selector(p, config, batch_size=batch_size, options=options, console=console, mask=mask,
                         sequential_data=config.sequential)
    warnings = selector.warnings()
    for line in selector.explanation:
        console.log(line)
    for warning in warnings:
        console.log(f"warning: {warning}")
    console.log(f"evaluating {len(fractions)} candidates ({config.criterion}, {config.compensation})")
    candidates = selector.sweep(fractions)
    chosen = fixed_sequence_choice(candidates)
    clock.lap("candidates")
    return SweepResult(candidates, chosen, config, selector.parameters_before, p.provenance, clock.timings,
                       p.measured.stats, p.groups, selector.explanation, warnings)

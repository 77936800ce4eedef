"""The library API: load -> find groups -> measure -> choose -> rewrite -> validate -> write."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .criteria import keep_masks
from .data import DEFAULT_LABELS_KEY, Dataset, load_data
from .errors import InputError, ValidationFailed
from .graph import GraphIndex
from .groups import NeuronGroup, find_groups
from .modelio import StagedModel, check_output_path, file_uses_external_data, load_model, model_file_size
from .report import GroupReport, Report
from .rewrite import apply_masks, parameter_count
from .runtime import RuntimeOptions, collect_statistics
from .stats import ActivationStats
from .validate import Tolerances, ValidationResult, validate

DEFAULT_BATCH_SIZE = 256


@dataclass
class PruneResult:
    """The pruned model, its report and its validation result (truthy when it passed)."""

    model: onnx.ModelProto
    report: Report
    validation: ValidationResult
    stats: dict[str, ActivationStats]


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
               options: RuntimeOptions | None = None) -> dict[str, ActivationStats]:
    """Per-group activation statistics of a model on data, in one pass."""
    model = model if isinstance(model, onnx.ModelProto) else load_model(model)
    dataset = load_data(data, model, labels_key=labels)
    index = GraphIndex(model)
    groups = find_groups(model, index)
    return collect_statistics(model, groups, dataset, batch_size=batch_size, options=options, index=index).stats


def _check_threshold(name: str, value):
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or value < 0:
        raise InputError(f"{name} must be a non-negative number, got {value:g}")
    return value


def prune(model, data, *, output=None, mean_threshold: float | None = None,
          std_threshold: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
          labels: str | None = DEFAULT_LABELS_KEY, force: bool = False, threads: int = 0,
          tolerances: Tolerances | None = None,
          log: Callable[[str], None] | None = None) -> PruneResult:
    """Prune `model` (a path or ModelProto) with statistics gathered on `data` (a .npz path or arrays).

    With no thresholds only exactly-dead neurons are removed, and the outputs must stay
    within `tolerances`. With thresholds, the seed's rule removes neurons whose |mean|
    and std are below them. The result is validated; if `output` is given it is written
    there atomically, and only when validation passed. Raises InputError on bad input and
    ValidationFailed when the pruned model fails a check.
    """
    log = log or (lambda message: None)
    timings = {}
    clock = time.perf_counter()

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 4)
        clock = now

    mean_threshold = _check_threshold("mean threshold", mean_threshold)
    std_threshold = _check_threshold("std threshold", std_threshold)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    model_path = None
    if isinstance(model, onnx.ModelProto):
        model_proto = model
    else:
        model_path = Path(model)
        model_proto = load_model(model_path)
    if output is not None:
        output = check_output_path(output, model_path, force=force)
    dataset = load_data(data, model_proto, labels_key=labels)
    if dataset.fixed_batch and dataset.fixed_batch != batch_size:
        log(f"the model's batch dimension is fixed to {dataset.fixed_batch}: feeding {dataset.fixed_batch} at a time")
    options = RuntimeOptions(threads=threads)
    lap("load")

    index = GraphIndex(model_proto)
    groups = find_groups(model_proto, index)
    n_prunable = sum(g.prunable for g in groups)
    log(f"{len(groups)} layer(s), {n_prunable} prunable neuron group(s)")
    lap("groups")

    stats = {}
    if n_prunable:
        log(f"measuring activations on {dataset.n_samples} samples")
        stats = collect_statistics(model_proto, groups, dataset, batch_size=batch_size,
                                   options=options, index=index).stats
    lap("statistics")

    thresholds = mean_threshold is not None or std_threshold is not None
    criterion = "seed" if thresholds else "dead"
    masks = keep_masks(stats, criterion, mean_threshold=mean_threshold, std_threshold=std_threshold)
    lap("selection")

    settings = {"criterion": criterion, "mean_threshold": mean_threshold, "std_threshold": std_threshold,
                "batch_size": dataset.batch_size(batch_size), "data": Path(dataset.source).name,
                "samples": dataset.n_samples}
    pruned = apply_masks(model_proto, groups, masks, index=index, settings=settings)
    lap("rewrite")

    report = Report(
        model=str(model_path) if model_path else "<model>", output=str(output) if output else None,
        data=dataset.source, samples=dataset.n_samples, settings=settings,
        parameters_before=parameter_count(model_proto), parameters_after=parameter_count(pruned),
        file_size_before=model_file_size(model_path) if model_path else model_proto.ByteSize(),
    )
    for g in groups:
        kept = int(masks[g.name].sum()) if g.name in masks else g.size
        dead = int(stats[g.name].dead.sum()) if g.name in stats else None
        report.groups.append(GroupReport(g.name, g.producer_op, g.size, kept if g.prunable else g.size,
                                         g.prunable, g.reason, g.tap, dead))

    with tempfile.TemporaryDirectory(prefix="onnxprune-") as scratch:
        destination = output if output is not None else Path(scratch) / "pruned.onnx"
        # Keep the input's storage form: external data in, external data out (and above 2 GiB).
        external = bool(model_path and file_uses_external_data(model_path)) or None
        staged = StagedModel(pruned, destination, external_data=external)
        try:
            report.file_size_after = model_file_size(staged.path)
            log("validating the pruned model")
            result = validate(model_path or model_proto, staged.path, dataset, batch_size=batch_size,
                              options=options, exact=criterion == "dead", tolerances=tolerances)
            report.validation = result.to_dict()
            lap("validation")
            if not result:
                raise ValidationFailed("pruned model failed validation: " + "; ".join(result.failures),
                                       result, report)
            if output is not None:
                staged.commit()
                report.written = True
        finally:
            staged.discard()
    lap("write")
    report.timings = timings
    return PruneResult(pruned, report, result, stats)

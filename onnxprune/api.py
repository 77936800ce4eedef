"""The library API: inspect, statistics, sweep and prune, each a few stages of a `run.Run`.

Every function takes its options as objects (`DataSpec`, `SelectionConfig`, `RuntimeOptions`,
`OutputOptions`; see options.py) or as keyword shortcuts named like their fields:

    prune("m.onnx", DataSpec("val.npz", eval_data="held.npz"), selection=SelectionConfig(fraction=0.3),
          runtime=RuntimeOptions(threads=2), output=OutputOptions("small.onnx", force=True))
    prune("m.onnx", "val.npz", eval_data="held.npz", fraction=0.3, threads=2, output="small.onnx", force=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .compensate import Compensation
from .criteria import scores_of
from .errors import InputError
from .groups import NeuronGroup, split_packed_heads
from .groups.blocks import find_blocks
from .modelio import load_model, model_file_size
from .options import OutputOptions, resolve
from .progress import Console
from .quantize import finish, provenance
from .report import Report, SweepResult, prune_report, run_settings
from .run import Run, measure_blocks, measure_groups
from .selection import Candidate, SelectionConfig, fixed_sequence_choice
from .session import RuntimeOptions
from .stats import ActivationStats
from .validate import ValidationResult


@dataclass
class PruneResult:
    """The pruned model, its report and its validation result (truthy when it passed)."""

    model: onnx.ModelProto
    report: Report
    validation: ValidationResult
    stats: dict[str, ActivationStats]
    candidates: list[Candidate] = field(default_factory=list)
    # with quantize: the four models compared (original, quantized only, pruned only, pruned + quantized)
    variants: dict[str, onnx.ModelProto] = field(default_factory=dict)


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


def inspect_blocks(model) -> list:
    """The residual blocks of a model (a path or ModelProto), removable as a whole or with the reason why not
    (groups.blocks.ResidualBlock), as pruning with the `blocks` structure sees them (from static shapes:
    `block_scores` also settles the shapes static inference leaves open, on the data)."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    model, index, groups, _ = split_packed_heads(model)
    return find_blocks(model, index, groups)


def block_scores(model, data, *, runtime: RuntimeOptions | None = None, console: Console | None = None,
                 **shortcuts) -> tuple[list, dict[str, float]]:
    """The residual blocks of a model and, per removable block (by id), its stream share on `data`: the
    variance its branch adds over the stream's (0: a constant branch, removed exactly with its mean folded).
    `data` and the keywords are as `statistics` takes them."""
    options = resolve("block_scores", data, shortcuts, kinds=("data", "runtime"), runtime=runtime)
    return measure_blocks(model, options, console)


def statistics(model, data, *, runtime: RuntimeOptions | None = None, console: Console | None = None,
               **shortcuts) -> dict[str, ActivationStats]:
    """Per-group activation statistics of a model on data, in one pass (split over `runtime.workers`
    processes, or over the shards of a Dask `runtime.cluster`: a Client or a scheduler address).
    `data` is a DataSpec, or a path or arrays with DataSpec's fields as keywords (batch_size, labels,
    mask, batch_axes, constant_inputs); RuntimeOptions' fields are keywords too (threads, workers, ...)."""
    options = resolve("statistics", data, shortcuts, kinds=("data", "runtime"), runtime=runtime)
    passed, _ = measure_groups(model, options, console)
    return passed.stats if passed is not None else {}


def head_scores(model, data, *, criterion: str = "contribution", runtime: RuntimeOptions | None = None,
                console: Console | None = None, **shortcuts) -> dict[str, np.ndarray]:
    """Per prunable head group (by id), one score per head (per key/value group with grouped-query
    attention): the sum of its neurons' scores under `criterion`. With "contribution" (a per-layer
    ranking), a head's share of the variance its out-projection receives: the scores of a layer sum to 1.
    `data` and the keywords are as `statistics` takes them."""
    options = resolve("head_scores", data, shortcuts, kinds=("data", "runtime"), runtime=runtime)
    passed, p = measure_groups(model, options, console, which=lambda g: g.kind == "heads" and g.prunable,
                               split_heads=True)
    if passed is None:
        return {}
    evidence = Compensation(p.model, p.index, p.groups, passed.stats, mode="fold").evidence
    scores = scores_of(evidence, criterion)
    return {g.id: scores[g.id].reshape(-1, g.unit).sum(axis=1) for g in p.groups if g.id in scores}


def prune(model, data, *, selection: SelectionConfig | None = None, runtime: RuntimeOptions | None = None,
          output: OutputOptions | str | Path | None = None, console: Console | None = None,
          **shortcuts) -> PruneResult:
    """Prune `model` (a path or ModelProto) with statistics gathered on `data`.

    `data` is a DataSpec, or what its `data` field takes (a .npz, .npy or shard directory path, or
    arrays) with its other fields as keywords (eval_data, holdout, labels, mask, batch_axes,
    constant_inputs, batch_size). `selection` (or `config`) decides which neurons go, by its mode:
      - default: the smallest model whose every metric stays within its budget on held-out data
        at the given `confidence` (one-sided upper bounds, fixed-sequence testing of increasing
        fractions); `metric` is "auto", a registered name or a callable
        `fn(before, after, labels) -> per-sample losses` (with `max_loss`);
      - `mean_threshold` / `std_threshold`: the seed's rule (criterion seed; `relative` scales
        the thresholds by each layer's activation RMS);
      - `fraction`: remove that fraction of all prunable neurons, lowest scores first;
      - `criterion="dead"`: only neurons exactly zero on every sample; outputs must not change.
    Instead of a config, its fields (and its Budget's: max_drop, min_cosine, ...) may come as keywords.
    `compensation` is how consumers make up for removed neurons: "none" (the seed exactly), "fold"
    (mean into the bias) or "refit" (least squares, kept only where it beats folding out of sample on
    calibration data). `runtime` (or `options`; or its fields threads, workers, cluster, ... as
    keywords) says how models run: the statistics pass is split over `workers` processes, or over a
    Dask `cluster`, when given; the results are the same. `output` (a path or OutputOptions; `force`
    and `tolerances` as keywords) is where the validated model is written atomically, only if
    validation passed. Raises InputError on bad input and ValidationFailed when the pruned model
    fails a check.
    """
    options = resolve("prune", data, shortcuts, selection=selection, runtime=runtime, output=output)
    if options.selection.mode == "dead":  # removing neurons that never fired changes nothing to make up for
        options.selection = replace(options.selection, compensation="none")
    run = Run(model, options, console)
    run.prepare()
    run.measure(split=options.selection.mode == "budget", grams=options.selection.compensation == "refit")
    run.settings = run_settings(run)
    selected = run.select()
    pruned = run.rewrite(selected)
    variants = []
    if run.quantizing:  # what is written is the pruned model quantized; the report compares all four
        pruned, variants = finish(run, selected, pruned)
    report = prune_report(run, selected, pruned)
    report.variants = [v.to_dict() for v in variants] or None
    if variants:
        report.provenance["quantization"] = provenance(run)
    if report.nothing_to_prune:
        run.console.log(f"nothing to prune: {report.nothing_to_prune}")
    with run.staged(pruned) as staged:
        report.file_size_after = model_file_size(staged.path)
        validation = run.validate(staged, selected, report)
        run.commit(staged, report)
    report.timings = run.clock.timings
    return PruneResult(pruned, report, validation, run.measured.stats, selected.candidates,
                       {v.name: v.model for v in variants})


def sweep(model, data, *, selection: SelectionConfig | None = None, runtime: RuntimeOptions | None = None,
          console: Console | None = None, **shortcuts) -> SweepResult:
    """Evaluate a grid of fractions (statistics gathered once, one held-out pass per candidate).

    Every candidate gets the same figures as `prune` would give it; `chosen` is the one
    fixed-sequence testing picks (the last before the first failure). `data`, `selection`,
    `runtime` and their keywords are as `prune` takes them; `grid` holds the fractions."""
    options = resolve("sweep", data, shortcuts, kinds=("data", "selection", "runtime"), selection=selection,
                      runtime=runtime)
    config = options.selection
    if config.fraction is not None:
        raise InputError("a sweep evaluates the fractions of grid=; fraction= is prune's")
    fractions = sorted(set(float(f) for f in config.grid))
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise InputError("grid fractions must be in [0, 1)")
    run = Run(model, options, console)
    run.prepare()
    measured = run.measure(split=True, grams=config.compensation == "refit")
    if measured.statistics is None:
        raise InputError("the model has no prunable neuron group (see `onnxprune inspect`)")
    selector = run.selector()
    warnings = selector.warnings()
    choice = [selector.choice.line()] if selector.choice is not None else []
    for line in [*choice, *selector.explanation, *(f"warning: {w}" for w in warnings)]:
        run.console.log(line)
    run.console.log(f"evaluating {len(fractions)} candidates ({selector.ranking}, {config.compensation})")
    candidates = selector.sweep(fractions)
    chosen = fixed_sequence_choice(candidates)
    run.clock.lap("candidates")
    return SweepResult(candidates, chosen, run.selection, selector.parameters_before, measured.provenance,
                       run.clock.timings, measured.stats, run.prepared.groups, selector.explanation, warnings,
                       model=str(run.prepared.model_path) if run.prepared.model_path else None, choice=selector.choice)

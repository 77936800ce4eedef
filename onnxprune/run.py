"""One run, stage by stage: prepare -> measure -> select -> rewrite -> validate -> commit.

A `Run` holds one call's options and each stage's result, a typed object the later stages read:
`prepare` loads the model and the data and finds the neuron groups (`Prepared`), `measure`
gathers their statistics and holds samples out for judging (`Measured`), `select` decides which
neurons go (`Selected`), `rewrite` builds the pruned model, `validate` checks it on the held-out
data and `commit` writes it. `prune` runs every stage; `sweep` stops after measuring to evaluate a
grid of candidates; `statistics` measures only.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path

import numpy as np
import onnx

from . import certify
from .compensate import Compensation, Replay
from .criteria import keep_masks
from .data import Dataset
from .errors import InputError, ValidationFailed
from .graph import GraphIndex
from .groups import NeuronGroup, find_groups, split_packed_heads
from .metrics import Plan, labelled_output, n_classes
from .modelio import (EXTERNAL_DATA_ABOVE, StagedModel, as_model, check_output_path, file_uses_external_data,
                      full_check_problem, writes_external_data)
from .ops import Skip
from .options import Options
from .parallel import collect_statistics_sharded
from .progress import Console
from .quantize import Quantizer, is_quantized
from .reference import Reference, as_array
from .refit import ConsumerUpdate
from .report import in_settings_order
from .rewrite import apply_masks, parameter_count
from .runtime import Shard, StatisticsPass, collect_statistics, reference_pass
from .scratch import directory as scratch_directory
from .blockselect import block_taps, residual_blocks, stream_share
from .selection import DEFAULT_STRUCTURES, Candidate, FoldJudge, Selector, plan_for
from .sensitivity import Probe
from .session import check_loads, make_session, run, run_problem
from .stats import ActivationStats
from .validate import ValidationResult, validate as validate_model

MIN_SPLIT_SAMPLES = 20


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


def crossfit_folds(n: int, folds: int, seed: int = 0, multiple: int = 1) -> list[np.ndarray] | None:
    """A deterministic shuffle of n samples cut into `folds` folds of about equal size (each a multiple of
    `multiple`, a model's fixed batch size): sorted sample indices per fold. None when there are too few
    samples for that many folds."""
    if n < MIN_SPLIT_SAMPLES or folds < 2 or n % multiple:
        return None
    size = (n // folds) // multiple * multiple
    if size < max(multiple, 2):
        return None
    order = np.random.default_rng(seed).permutation(n)
    edges = [k * size for k in range(folds)] + [n]
    return [np.sort(order[a:b]) for a, b in zip(edges[:-1], edges[1:])]


class Clock:
    """Seconds spent per stage, in the order the stages ran."""

    def __init__(self):
        self.timings = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self._last, 4)
        self._last = now


@dataclass
class Prepared:
    """The model and the data as loaded and checked, and the neuron groups found in the model."""

    model_path: Path | None
    model: onnx.ModelProto  # node names unique; packed Q/K/V projections split where that frees their heads
    index: GraphIndex
    groups: list[NeuronGroup]
    data: Dataset
    eval_data: Dataset | None
    original: onnx.ModelProto | None = None  # the input as loaded, when `model` has split packed projections
    unpacked: list[str] = field(default_factory=list)  # a line per packed Q/K/V projection split
    blocks: list = field(default_factory=list)  # residual blocks (groups.blocks), found when "blocks" is a structure

    @property
    def removable_blocks(self) -> list:
        return [b for b in self.blocks if b.removable]

    @property
    def input_model(self) -> onnx.ModelProto:
        """The model as the user gave it (as loaded), before any packed projection was split."""
        return self.original if self.original is not None else self.model

    @property
    def n_prunable(self) -> int:
        """Prunable groups, and removable residual blocks (a pass measures either)."""
        return sum(g.prunable for g in self.groups) + len(self.removable_blocks)


@dataclass
class Fold:
    """One cross-fitting fold: its samples (sorted indices into the data), the pass over them (their
    statistics, and the original's outputs on them) and the statistics of every other fold, from which
    the candidates this fold judges are built."""

    indices: np.ndarray
    data: Dataset
    statistics: StatisticsPass
    others: StatisticsPass | None = None


@dataclass
class Measured:
    """The statistics pass (None when no group is prunable) and which samples it held out; with
    cross-fitting, the folds (the pass is then all of them merged, and no sample is held out of it)."""

    data: Dataset
    eval_data: Dataset | None
    calibration: np.ndarray | None  # True for the samples of `data` that fed the statistics; None: all did
    statistics: StatisticsPass | None
    eval_source: str
    folds: list[Fold] | None = None

    @property
    def stats(self) -> dict[str, ActivationStats]:
        return self.statistics.stats if self.statistics else {}

    @property
    def calibration_data(self) -> Dataset:
        """The samples that fed the statistics (the sequential refit runs on them again)."""
        if self.calibration is not None:
            return self.data.subset(np.flatnonzero(self.calibration))
        return self.data

    @property
    def evaluation_data(self) -> Dataset:
        """The samples that judge candidates and the final model."""
        if self.eval_data is not None:
            return self.eval_data
        if self.calibration is not None:
            return self.data.subset(np.flatnonzero(~self.calibration))
        return self.data

    @property
    def held_out(self) -> bool:
        """Whether the evaluation data is apart from the statistics' data (the final model's: with
        cross-fitting only the candidates' judges are)."""
        return self.eval_data is not None or self.calibration is not None

    @property
    def provenance(self) -> dict:
        """Which data fed the statistics and which judged the candidates and the final model."""
        n = self.data.n_samples
        used = f"{int(self.calibration.sum())} of {n} samples" if self.calibration is not None else f"all {n} samples"
        out = {"statistics": f"{self.data.source} ({used})", "evaluation": self.eval_source}
        if self.folds:
            out["candidates"] = (f"{self.data.source} ({n} samples, {len(self.folds)}-fold cross-fitting: each fold "
                                 "judged the candidate built from the other folds' statistics)")
        return out


@dataclass
class Selected:
    """The neurons chosen to go (a keep-mask per group), each consumer's compensation, and how they
    were chosen: the mode (a search that finds nothing within budget falls back to dead neurons),
    the metrics' plan, the candidates a search evaluated and the one it chose."""

    mode: str
    masks: dict[str, np.ndarray]
    updates: dict[int, ConsumerUpdate] = field(default_factory=dict)
    plan: Plan | None = None
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    notes: list[str] = field(default_factory=list)  # warnings said before the search, and fallbacks
    blocks: list = field(default_factory=list)  # the removed residual branches' edit records (Selector.removals)


class Run:
    """One call's options and each stage's result, in the order the stages run."""

    def __init__(self, model, options: Options, console: Console | None = None):
        self.model = model  # as given: a path or a ModelProto
        self.data, self.selection = options.data, options.selection
        self.runtime, self.output = options.runtime, options.output
        self.console = console or Console()
        self.clock = Clock()
        self.prepared: Prepared | None = None
        self.measured: Measured | None = None
        self.settings: dict = {}  # what the report and the pruned model's metadata say was done
        self.certifiable: dict | None = None  # what a search's evaluations certify beyond its choice
        self.judge: Selector | None = None  # what built and judged the candidates (the last `selector()`)

    def prepare(self) -> Prepared:
        """Load and check the model and the data, and find the neuron groups."""
        self.data.check()
        proto, path, dataset, evaluation = self._load()
        if dataset.fixed_batch and dataset.fixed_batch != self.data.batch_size:
            self.console.log(f"the model's batch dimension is fixed to {dataset.fixed_batch}: "
                             f"feeding {dataset.fixed_batch} at a time")
        self.clock.lap("load")
        structures = self.selection.structures if self.selection is not None else DEFAULT_STRUCTURES
        # packed Q/K/V projections are split where that makes their heads prunable
        model, index, groups, unpacked = _find_groups(proto, split_heads="heads" in structures)
        for line in unpacked:
            self.console.log(line)
        if self.quantizing and is_quantized(proto):
            raise InputError("the model is already quantized: --quantize is for float models (pruning goes "
                             "through its quantization without it)", path=path, field="--quantize")
        for g in groups:
            if g.prunable and g.kind not in structures:
                g.reason = Skip("excluded", f"{g.kind} are left out (structures: {', '.join(structures)})")
        self.prepared = Prepared(path, model, index, groups, dataset, evaluation,
                                 proto if model is not proto else None, unpacked)
        if "blocks" in structures:
            self.prepared.blocks = residual_blocks(model, index, groups, dataset, self.runtime)
        blocks = self.prepared.removable_blocks
        self.console.log(f"{len(groups)} layer(s), {sum(g.prunable for g in groups)} prunable neuron group(s)"
                         + (f", {len(blocks)} removable residual block(s)" if "blocks" in structures else ""))
        self.clock.lap("groups")
        if self.selection is not None:
            self.selection = self.selection.for_model(parameter_count(model))
        return self.prepared

    def _load(self) -> tuple[onnx.ModelProto, Path | None, Dataset, Dataset | None]:
        proto, path = as_model(self.model)
        if self.output.path is not None:
            check_output_path(self.output.path, path, force=self.output.force,
                              external_data=writes_external_data(proto, path))
        check_loads(proto, self.runtime, path)
        dataset, evaluation = self.data.load(proto), self.data.load(proto, "eval_data")
        for warning in [*dataset.warnings, *(evaluation.warnings if evaluation is not None else ())]:
            self.console.log(f"warning: {warning}")
        return proto, path, dataset, evaluation

    def measure(self, *, split: bool, grams: bool) -> Measured:
        """The statistics pass (with the calibration Gram matrices when `grams`); with `split`, the data
        also judges candidates: by cross-fitting on its folds, or by holding a share out, unless
        held-out data was given."""
        p = self.prepared
        multiple = p.data.fixed_batch or 1
        k = self.data.crossfit_folds(parameter_count(p.model))
        folds = crossfit_folds(p.data.n_samples, k, multiple=multiple) if split and k > 1 else None
        calibration = (calibration_split(p.data.n_samples, self.data.holdout_share, multiple=multiple)
                       if split and p.eval_data is None and folds is None else None)
        self.measured = Measured(p.data, p.eval_data, calibration, None,
                                 f"{p.data.source} (all {p.data.n_samples} samples, the same as the statistics)")
        if p.n_prunable and folds is not None:
            self._measure_folds(folds, grams)
        elif p.n_prunable:
            self._measure(split, grams)
        self.clock.lap("statistics")
        return self.measured

    def _measure_folds(self, indices: list[np.ndarray], grams: bool) -> None:
        """A pass per fold, keeping the original's outputs on its samples; the run's statistics are their
        merge (as one pass over all the data), each fold's judges are built from the others'."""
        p, m = self.prepared, self.measured
        k = len(indices)
        self.console.log(f"measuring activations on {p.data.n_samples} samples in {k} folds (cross-fitting: "
                         "each fold judges the candidates built from the others)")
        folds = []
        for i, rows in enumerate(indices):
            subset = p.data.subset(rows)
            passed = self.statistics_pass(subset, self.data.data, f"measuring activations (fold {i + 1}/{k})",
                                          grams=grams, rows=rows)
            folds.append(Fold(rows, subset, passed))
        for fold in folds:
            fold.others = _merged([f.statistics for f in folds if f is not fold])
        m.folds = folds
        m.statistics = _merged([f.statistics for f in folds])
        m.statistics.reference = Reference.gathered([f.statistics.reference for f in folds], indices)
        m.eval_source = (f"{p.data.source} (all {p.data.n_samples} samples, the same as the statistics; the "
                         f"candidates were judged by {k}-fold cross-fitting)")

    def _measure(self, split: bool, grams: bool) -> None:
        p, m = self.prepared, self.measured
        n, calibration = p.data.n_samples, m.calibration
        n_cal = n if calibration is None else int(calibration.sum())
        self.console.log(f"measuring activations on {n_cal} samples"
                         + (f", holding out {n - n_cal} for selection" if calibration is not None else ""))
        m.statistics = self.statistics_pass(p.data, self.data.data, "measuring activations", calibration, grams)
        if calibration is not None:
            m.eval_source = (f"{p.data.source} (held-out split: {n - n_cal} of {n} samples, "
                             "not used for statistics)")
        if p.eval_data is not None:
            held = self.statistics_pass(p.eval_data, self.data.eval_data, "running held-out data",
                                        np.zeros(p.eval_data.n_samples, bool))
            m.statistics.reference, m.statistics.held_max = held.reference, held.held_max
            m.eval_source = f"{p.eval_data.source} ({p.eval_data.n_samples} samples, --eval-data)"
        if split and m.statistics.reference is None:
            # Too few samples to hold any out (or --holdout 0): candidates are judged on the statistics' data.
            m.statistics.reference = reference_pass(p.model, p.data, batch_size=self.data.batch_size,
                                                    options=self.runtime)

    def statistics_pass(self, dataset: Dataset, source, label: str, calibration: np.ndarray | None = None,
                        grams: bool = False, rows: np.ndarray | None = None) -> StatisticsPass:
        """One pass over `dataset` (loaded from `source`; with `rows`, those samples of it, whose outputs
        are all kept): in this process, or sharded over worker processes or a cluster."""
        p, spec = self.prepared, self.data
        if self.runtime.sharded:
            if p.removable_blocks:
                self.console.log("note: residual blocks are not measured by --workers/--dask passes yet: "
                                 "none will be removed")
            if dataset.constants or any(dataset.axes.values()):
                raise InputError("--workers and --dask do not support inputs batched off axis 0 or constant "
                                 "inputs yet", field="--workers")
            # the checked proto, not the file: node names may have been made unique, and group ids follow them
            return collect_statistics_sharded(p.model, source, dataset, batch_size=spec.batch_size,
                                              options=self.runtime, calibration=calibration, grams=grams,
                                              mask=spec.mask, labels=spec.labels, console=self.console, rows=rows)
        return collect_statistics(p.model, p.groups, dataset, batch_size=spec.batch_size, options=self.runtime,
                                  index=p.index, calibration=calibration, grams=grams, mask=spec.mask,
                                  on_batch=lambda d, t: self.console.progress(label, d, t),
                                  shard=Shard(routed=True) if rows is not None else None,
                                  taps=block_taps(p.removable_blocks))

    def selector(self) -> Selector:
        """What builds and judges candidates, from the measured statistics."""
        p, m, config, spec = self.prepared, self.measured, self.selection, self.data
        passed = m.statistics
        replay = Replay(m.calibration_data, spec.batch_size, spec.mask, self.runtime) if config.sequential else None
        compensation = Compensation(p.model, p.index, p.groups, passed.stats, mode=config.compensation,
                                    calibration_grams=passed.calibration_grams, fold_grams=passed.fold_grams,
                                    tap_stats=passed.tap_stats, replay=replay, ridge=config.ridge, blocks=p.blocks)
        for line in compensation.note_lines():
            self.console.log(line)
        macs = objective_costs(p.model, m.evaluation_data, config.objective)
        self._check_all_labels()
        selector = Selector(compensation, m.evaluation_data, passed.reference, config, options=self.runtime,
                            console=self.console, batch_size=spec.batch_size, macs=macs,
                            run_samples=passed.samples_per_run(spec.batch_size),
                            probe=Probe(m.calibration_data, self.runtime, spec.batch_size))
        selector.folds = [self._fold_judge(fold, macs) for fold in m.folds or ()]
        selector.quantizer = self.quantizer(m.calibration_data)
        self.judge = selector
        if "blocks" in config.structures:  # blocks are ranked by probes on the statistics' own samples
            selector.calibration = Replay(m.calibration_data, spec.batch_size, spec.mask, self.runtime)
        return selector

    @property
    def quantizing(self) -> bool:
        return self.selection is not None and self.selection.quantize != "none"

    def quantizer(self, calibration: Dataset) -> Quantizer | None:
        """With --quantize: onnxruntime's quantizer, calibrated (static) on `calibration`."""
        return (Quantizer(self.selection.quantize, calibration, quantize_stem=self.selection.quantize_stem)
                if self.quantizing else None)

    def _fold_judge(self, fold: Fold, macs) -> FoldJudge:
        """What judges candidates on `fold`: built from the statistics (and refit) of the other folds."""
        p, m, config, spec = self.prepared, self.measured, self.selection, self.data
        others = fold.others
        rest = np.setdiff1d(np.arange(p.data.n_samples), fold.indices)
        replay = Replay(p.data.subset(rest), spec.batch_size, spec.mask, self.runtime) if config.sequential else None
        compensation = Compensation(p.model, p.index, p.groups, others.stats, mode=config.compensation,
                                    calibration_grams=others.calibration_grams, fold_grams=others.fold_grams,
                                    tap_stats=others.tap_stats, replay=replay, ridge=config.ridge, blocks=p.blocks)
        builder = Selector(compensation, None, None, config, options=self.runtime, console=self.console,
                           batch_size=spec.batch_size, macs=macs,
                           probe=Probe(p.data.subset(rest), self.runtime, spec.batch_size))
        # quantized on the samples its statistics came from: the other folds'
        builder.quantizer = self.quantizer(p.data.subset(rest))
        if "blocks" in config.structures:
            builder.calibration = Replay(p.data.subset(rest), spec.batch_size, spec.mask, self.runtime)
        return FoldJudge(builder, fold.data, fold.statistics.reference)

    def _check_all_labels(self) -> None:
        """Labels must fit the output they are compared with, in every sample (not only the held-out ones)."""
        p, m = self.prepared, self.measured
        reference, held = m.statistics.reference, m.evaluation_data
        if reference is None or (p.data.labels is None and held.labels is None):
            return
        probe = next(reference.batches(min(8, held.n_samples), held.n_samples))
        k = labelled_output(reference.names, probe, list(self.selection.outputs) if self.selection.outputs else None)
        if k is None:
            return
        for ds in (p.data, p.eval_data):  # the held-out split is part of p.data
            if ds is not None:
                ds.check_labels(n_classes(probe[k]))

    def select(self) -> Selected:
        """Choose the neurons to remove, as the selection's mode says."""
        mode, stats, groups = self.selection.mode, self.measured.stats, self.prepared.groups
        measured = stats or (self.measured.statistics is not None and self.prepared.removable_blocks)
        if mode == "dead" or not measured:
            return Selected(mode, keep_masks(stats, "dead", groups))
        selector = self.selector()
        if selector.choice is not None:  # criterion auto: which ranking, and the evidence from calibration samples
            self._report_choice(selector)
        plan = selector.plan or self._probe_plan()
        for line in plan.explanation:
            self.console.log(line)
        if mode == "budget":
            return self._search(selector, plan)
        masks = selector.masks_below(1.0) if mode == "thresholds" else selector.masks_at(self.selection.fraction)
        return Selected(mode, masks, selector.updates(masks), plan, blocks=selector.removals(masks))

    def _report_choice(self, selector: Selector) -> None:
        """Criterion auto's choice in the log and the settings (right after the criterion); with cross-fitting
        each fold's builder chose on its own samples: how many folds took each ranking."""
        chosen = selector.choice.to_dict()
        line = selector.choice.line()
        folds = [f.builder.choice.criterion for f in selector.folds if f.builder.choice is not None]
        if folds:
            chosen["folds"] = {name: folds.count(name) for name in sorted(set(folds))}
            line += "; folds: " + ", ".join(f"{n} of {len(folds)} {name}" for name, n in chosen["folds"].items())
        self.console.log(line)
        ordered = in_settings_order({**self.settings, "criterion_chosen": chosen})
        self.settings.clear()  # in place: the settings dict is shared with what reports them
        self.settings.update(ordered)

    def _search(self, selector: Selector, plan: Plan) -> Selected:
        """Fixed-sequence testing of increasing amounts; exactly-dead neurons only when none passes."""
        config, notes = self.selection, []
        for warning in selector.warnings():
            self.console.log(f"warning: {warning}")
            notes.append(warning)
        self.console.log(f"searching for the smallest model within the budget ({selector.ranking} criterion, "
                         f"{config.compensation}, {config.confidence:.0%} confidence)")
        chosen, candidates = selector.choose(settings=self.settings)
        # what the walk certifies beyond its choice: at looser budgets, and what stopped it
        self.certifiable = certify.summary(candidates, chosen, selector.parameters_before, 1 - config.confidence)
        for line in certify.lines(self.certifiable, chosen.label if chosen is not None else None):
            self.console.log(line)
            notes.append(line)
        if chosen is not None:
            return Selected("budget", chosen.masks, chosen.updates, plan, candidates, chosen, notes,
                            selector.removals(chosen.masks))
        # Not even the first candidate could be shown within budget: remove only what is provably
        # lossless (exactly-dead neurons), checked exactly by validation.
        note = "no candidate could be shown within the budget on this data: only exactly-dead neurons were removed"
        self.console.log(note)
        notes.append(note)
        self.settings["mode"] = "dead"
        # dead on every sample seen, held-out ones included: the exact check runs on those
        groups = self.prepared.groups
        masks = keep_masks(self.measured.statistics.dead_everywhere(groups), "dead", groups)
        return Selected("dead", masks, {}, plan, candidates, None, notes)

    def _probe_plan(self) -> Plan:
        """The metrics' plan from the original's outputs on a few samples (modes that hold nothing out)."""
        model, data = self.prepared.model, self.measured.evaluation_data
        feeds = next(data.batches(8))
        session = make_session(model, self.runtime)
        probe = [as_array(o) for o in run(session, feeds, self.runtime, purpose="original")]
        return plan_for(self.selection, model, [o.name for o in session.get_outputs()], probe, data.labels)

    def rewrite(self, selected: Selected) -> onnx.ModelProto:
        """The pruned model, rebuilt with the strict shape checks that candidates skip."""
        p = self.prepared
        pruned = apply_masks(p.model, p.groups, selected.masks, updates=selected.updates, index=p.index,
                             settings=self.settings, blocks=selected.blocks)
        self.clock.lap("selection")  # the rewrite counts as the selection's, as reports have always said
        return pruned

    @contextmanager
    def staged(self, pruned: onnx.ModelProto):
        """The pruned model written under a temporary name beside the output (or in a scratch directory
        when there is none), removed on leaving unless committed."""
        with tempfile.TemporaryDirectory(prefix="onnxprune-", dir=scratch_directory()) as scratch:
            destination = Path(self.output.path) if self.output.path is not None else Path(scratch) / "pruned.onnx"
            path = self.prepared.model_path
            # Keep the input's storage form: external data in, external data out (and above 2 GiB).
            external = bool(path and file_uses_external_data(path)) or None
            staged = StagedModel(pruned, destination, external_data=external)
            try:
                yield staged
            finally:
                staged.discard()

    def validate(self, staged: StagedModel, selected: Selected, report) -> ValidationResult:
        """Check the staged model against the original on the evaluation data; the result goes into
        `report`. Raises ValidationFailed when it fails (InputError when the input is at fault)."""
        p, m, spec = self.prepared, self.measured, self.data
        self.console.log("validating the pruned model")
        # The loaded proto, not the file: its node names were made unique for onnxruntime.
        source = p.input_model
        original = source if source.ByteSize() < EXTERNAL_DATA_ABOVE else p.model_path
        passed = m.statistics
        result = validate_model(original, staged.path, m.evaluation_data, batch_size=spec.batch_size,
                                options=self.runtime, exact=selected.mode == "dead" and not self.quantizing,
                                tolerances=self.output.tolerances,
                                reference=passed.reference if passed else None,
                                data_label=m.provenance["evaluation"], plan=selected.plan,
                                run_samples=passed.samples_per_run(spec.batch_size) if passed else None)
        if not m.held_out:
            for figure in result.figures:
                figure.held_out = False
        report.validation = result.to_dict()
        self.clock.lap("validation")
        if not result:
            report.timings = self.clock.timings
            self._blame_input()
            raise ValidationFailed("pruned model failed validation: " + "; ".join(result.failures), result, report)
        return result

    def _blame_input(self) -> None:
        """Raise InputError when the failure is the input model's, not the pruning's."""
        p, data = self.prepared, self.measured.evaluation_data
        problem = full_check_problem(p.model_path or p.model)
        if problem:  # no pruned form of such a model can pass
            raise InputError(f"{p.model_path or 'the model'}: the input model itself fails onnx's full "
                             f"check (shape and type inference): {problem}", path=p.model_path)
        problem = run_problem(p.model, next(data.batches(self.data.batch_size)), self.runtime)
        if problem:  # without a prunable group nothing ran the original before validation
            raise InputError(f"{data.source}: onnxruntime cannot run the input model on the data: {problem}",
                             path=None if data.source.startswith("<") else data.source)

    def commit(self, staged: StagedModel, report) -> None:
        """Move the validated model into place, when there is an output."""
        if self.output.path is not None:
            staged.commit()
            report.written = True
        self.clock.lap("write")


def _merged(passes: list[StatisticsPass]) -> StatisticsPass:
    """The statistics of several folds' passes as one pass over all their samples (no reference outputs:
    each fold keeps its own)."""
    if len(passes) == 1:
        return replace(passes[0], reference=None)
    merged = reduce(StatisticsPass.merge, [replace(q, reference=None) for q in passes])
    for gram in (*merged.calibration_grams.values(), *merged.fold_grams.values()):
        gram.offload()  # a consumer's refit reads its own; the rest wait on disk
    return merged


def _find_groups(proto: onnx.ModelProto, split_heads: bool):
    """(model, index, groups, notes); with `split_heads`, of the model with its packed Q/K/V projections
    split where that makes their heads prunable (a note per split)."""
    if split_heads:
        return split_packed_heads(proto)
    index = GraphIndex(proto)
    return proto, index, find_groups(proto, index), []


def _macs(model, data: Dataset):
    from .bench import data_feeds, node_macs

    try:
        return node_macs(model, data_feeds(data, 1))
    except Exception:  # MACs only inform: unknown is reported as unknown
        return None


def objective_costs(model, data: Dataset, objective: str) -> dict[int, float] | None:
    """Per node, what the ranking divides a neuron's score by (None: nothing, objective parameters, or
    shapes unknown): its MACs per sample; for objective both, its parameters plus its MACs scaled so that
    the model's MACs weigh as much as its parameters (each node's share of both totals, in parameters)."""
    if objective == "parameters":
        return None
    macs = _macs(model, data)
    if objective == "macs" or macs is None:
        return macs
    from .sensitivity import node_parameters

    params = node_parameters(model)
    scale = sum(params.values()) / max(sum(macs.values()), 1)
    return {n: params.get(n, 0) + scale * macs.get(n, 0) for n in set(params) | set(macs)}


def measure_groups(model, options: Options, console: Console | None = None, *, which=None,
                   split_heads: bool = False) -> tuple[StatisticsPass | None, Prepared]:
    """One pass over `options.data` measuring the groups `which` picks (None: all), without holding any
    sample out; with `split_heads`, of the model with its packed projections split as pruning splits
    them. The pass is None when no group was picked."""
    r = Run(model, options, console)
    proto, path, dataset, _ = r._load()
    proto, index, groups, _ = _find_groups(proto, split_heads)
    groups = [g for g in groups if which is None or which(g)]
    r.prepared = Prepared(path, proto, index, groups, dataset, None)
    if not groups:
        return None, r.prepared
    return r.statistics_pass(dataset, options.data.data, "measuring activations"), r.prepared


def measure_blocks(model, options: Options, console: Console | None = None) -> tuple[list, dict[str, float]]:
    """The model's residual blocks (of the model with its packed projections split, as pruning sees it) and,
    from one pass over `options.data`, each removable block's stream share (blockselect.stream_share)."""
    r = Run(model, options, console)
    proto, path, dataset, _ = r._load()
    proto, index, groups, _ = _find_groups(proto, True)
    blocks = residual_blocks(proto, index, groups, dataset, r.runtime)
    r.prepared = Prepared(path, proto, index, [], dataset, None, blocks=blocks)
    if not r.prepared.removable_blocks:
        return blocks, {}
    passed = r.statistics_pass(dataset, options.data.data, "measuring residual blocks")
    return blocks, {b.id: stream_share(b, passed.tap_stats) for b in r.prepared.removable_blocks}

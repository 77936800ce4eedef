"""What a run reports, and every table the CLI prints.

The prune `Report` (built from a run by `prune_report`) and the sweep's `SweepResult`, each shown as
a table for people or JSON for pipelines; and the tables of `stats`, `inspect` and `bench`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from .bench import BenchRow, macs_per_sample, node_macs
from .blockselect import block_macs, removed_with, stream_share
from .data import model_inputs
from .metrics import Budget, Figure
from .modelio import model_file_size
from .rewrite import parameter_count
from .selection import Candidate, SelectionConfig
from .stats import ActivationStats


@dataclass
class GroupReport:
    name: str
    producer_op: str
    neurons_before: int | None
    neurons_after: int | None
    prunable: bool
    reason: str | None = None
    tap: str | None = None
    dead: int | None = None
    compensation: list[str] | None = None  # per consumer: none, fold or refit
    id: str | None = None  # unique in the model (node names need not be)
    skip: dict | None = None  # why not prunable, structured: kind, message, node, tensor
    producers: list[str] | None = None  # every producer sharing the neurons (a coupled group has several)
    kind: str = "neurons"  # "heads": attention heads, cut in whole units of `unit` neurons
    unit: int = 1          # head_dim, or with grouped-query attention the query heads of one key/value head
    head_dim: int = 1
    removed_with: str | None = None  # the id of the removed residual block its neurons went with

    @property
    def heads_before(self) -> int | None:
        return self.neurons_before // self.head_dim if self.kind == "heads" and self.neurons_before else None

    @property
    def heads_after(self) -> int | None:
        return self.neurons_after // self.head_dim if self.kind == "heads" and self.neurons_after is not None else None

    @property
    def kv_groups(self) -> tuple | None:
        """(before, after) key/value heads of grouped-query attention; None for plain heads."""
        if self.kind != "heads" or self.unit == self.head_dim or not self.neurons_before:
            return None
        return self.neurons_before // self.unit, (self.neurons_after or 0) // self.unit


@dataclass
class Report:
    model: str
    output: str | None
    data: str
    samples: int
    settings: dict
    groups: list[GroupReport] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    file_size_before: int | None = 0  # None: unknown (informative only, never fails a run)
    file_size_after: int | None = 0
    macs_before: int | None = None  # multiply-adds per sample of Gemm/MatMul/Conv
    macs_after: int | None = None
    validation: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    written: bool = False
    provenance: dict = field(default_factory=dict)  # which data each number came from
    chosen: str | None = None
    candidates: list[dict] = field(default_factory=list)
    bench: list[dict] | None = field(default_factory=list)  # with --bench: timings (None: timing failed)
    nothing_to_prune: str | None = None  # why no neuron was removed, when none was
    explanation: list[str] = field(default_factory=list)  # which metrics judge the model, and why
    notes: list[str] = field(default_factory=list)  # warnings said before the search, and fallbacks
    # the chosen candidate's figures when candidates were judged by cross-fitting: what the search certified
    certified: list[dict] = field(default_factory=list)
    # what the search's evaluations certify at looser budgets, and what stopped it (certify.summary)
    certifiable: dict | None = None
    # with --quantize: original, quantized only, pruned only, pruned + quantized (quantize.Variant.to_dict)
    variants: list[dict] | None = None
    blocks: list[dict] = field(default_factory=list)  # residual blocks, when they were a structure (block_reports)

    @property
    def neurons_removed(self) -> int:
        return sum((g.neurons_before or 0) - (g.neurons_after or 0) for g in self.groups if g.prunable)

    def to_dict(self) -> dict:
        d = asdict(self)
        for g, entry in zip(self.groups, d["groups"]):
            if g.kind == "heads":
                entry["heads_before"], entry["heads_after"] = g.heads_before, g.heads_after
                entry["kv_heads"] = list(g.kv_groups) if g.kv_groups else None
        d["neurons_removed"] = self.neurons_removed
        d["parameter_reduction"] = _fraction(self.parameters_before, self.parameters_after)
        d["file_size_reduction"] = (_fraction(self.file_size_before, self.file_size_after)
                                    if self.file_size_before and self.file_size_after is not None else None)
        d["macs_reduction"] = (_fraction(self.macs_before, self.macs_after)
                               if self.macs_before and self.macs_after is not None else None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def format_table(self) -> str:
        lines = [f"model      {self.model}", f"output     {self.output or '(not written)'}",
                 f"data       {self.data} ({self.samples} samples)",
                 f"method     {describe_settings(self.settings)}"]
        for key, where in self.provenance.items():
            lines.append(f"{key + ':':<10} {where}" if len(key) < 10 else f"{key}: {where}")
        if self.chosen:
            lines.append(f"chosen     {self.chosen} (of {len(self.candidates)} candidates evaluated)")
        for line in self.explanation:  # which metrics judge the model, and why ("metric: ...", "guard: ...")
            lines.append(f"checks     {line}")
        for note in self.notes:
            lines.append(f"note       {note}")
        if self.nothing_to_prune:
            lines.append(f"result     nothing to prune: {self.nothing_to_prune}")
        lines.append("")
        width = max([len(g.id or g.name) for g in self.groups] + [5])
        lines.append(f"{'layer':<{width}}  {'op':<6}  {'neurons':>15}  note")
        for g in self.groups:
            if g.prunable:
                neurons = (f"{g.heads_before} -> {g.heads_after} heads" if g.kind == "heads"
                           else f"{g.neurons_before} -> {g.neurons_after}")
                if g.kv_groups:
                    neurons += f" ({g.kv_groups[0]} -> {g.kv_groups[1]} KV)"
                note = f"{g.dead} dead" if g.dead else ""
                refit = (g.compensation or []).count("refit")
                if refit:
                    note += f"{', ' if note else ''}{refit} consumer(s) refit"
            else:
                neurons = "-" if g.neurons_before is None else str(g.neurons_before)
                note = f"skipped: {g.reason}"
            if g.removed_with:
                neurons, note = f"{g.neurons_before} -> 0", f"removed with {g.removed_with}"
            lines.append(f"{g.id or g.name:<{width}}  {g.producer_op:<6}  {neurons:>15}  {note}".rstrip())
        lines += block_lines(self.blocks)
        lines.append("")
        lines.append(f"parameters {self.parameters_before:,} -> {self.parameters_after:,} "
                     f"({_percent(self.parameters_before, self.parameters_after)})")
        lines.append(f"file size  {_size(self.file_size_before)} -> {_size(self.file_size_after)} "
                     f"({_percent(self.file_size_before, self.file_size_after)})")
        if self.macs_before and self.macs_after is not None:
            lines.append(f"MACs       {self.macs_before:,} -> {self.macs_after:,} per sample "
                         f"({_percent(self.macs_before, self.macs_after)})")
        v = self.validation
        for o in v.get("outputs", []):  # the model's outputs compared (`output` above is the file written)
            agreement = "" if o["top1_agreement"] is None else f", top-1 agreement {o['top1_agreement']:.2%}"
            lines.append(f"difference {o['name']}: max |diff| {o['max_abs_diff']:.3g}, "
                         f"mean |diff| {o['mean_abs_diff']:.3g}{agreement}")
        acc = v.get("accuracy")
        if acc:
            drop = (acc["before"] - acc["after"]) * 100
            lines.append(f"accuracy   {acc['before']:.2%} -> {acc['after']:.2%} "
                         f"(drop {drop:.2f} pp, output {acc['output']!r})")
        mode = self.settings.get("mode")
        unenforced = {"dead": "bound over the budget; not enforced: only exactly-dead neurons were removed, "
                              "outputs checked exactly",
                      "thresholds": "over the budget; not enforced: fixed rule",
                      "fraction": "over the budget; not enforced: fixed amount"}
        for f in self.certified:
            lines.append(f"certified  {figure_text(f)} [{'within budget' if f['passed'] else 'OVER BUDGET'}]")
        for f in v.get("figures", []):
            if self.certified:  # the written model on the data it was built from: a check, not the evidence
                mark = "in-sample, observed within budget" if f["loss"] <= f["budget"] else "in-sample, OVER BUDGET"
            else:
                mark = "within budget" if f["passed"] else ("OVER BUDGET" if mode == "budget" else unenforced.get(
                    mode, "over the budget; not enforced"))
            lines.append(f"metric     {figure_text(f)} [{mark}]")
        if v:
            status = "passed" if v["passed"] else "FAILED: " + "; ".join(v["failures"])
            lines.append(f"validation {status}")
        if self.timings:
            lines.append("time       " + ", ".join(f"{k} {t:.2f}s" for k, t in self.timings.items()))
        if self.variants:
            lines += ["", format_variants(self.variants).rstrip("\n")]
        return "\n".join(lines) + "\n"


def format_variants(variants: list[dict]) -> str:
    """The four models of a run with --quantize side by side: size, parameters, and the primary metric's
    loss and bound (as the candidates were judged; the guards' verdicts in the last column)."""
    first = next((v["figures"][0] for v in variants if v["figures"]), None)
    unit = f" ({first['unit']})" if first and first.get("unit") else ""
    label = (first["label"] if first else "loss") + unit
    width = max(len(v["name"]) for v in variants)
    lines = [f"{'variant':<{width}}  {'file':>9}  {'parameters':>11}  {label:>24}  {'bound':>8}  budget"]
    for v in variants:
        size = _size(v["file_size"])
        figures = v["figures"]
        if figures:
            f = figures[0]
            mark = "within" if all(g["passed"] for g in figures) else "OVER (" + ", ".join(
                dict.fromkeys(g["metric"] for g in figures if not g["passed"])) + ")"
            loss, bound = f"{f['loss']:.3g}", f"{f['bound']:.3g}"
        else:
            loss, bound, mark = "-", "-", ""
        lines.append(f"{v['name']:<{width}}  {size:>9}  {v['parameters']:>11,}  {loss:>24}  {bound:>8}  "
                     f"{mark}{'  ' + v['note'] if v.get('note') else ''}".rstrip())
    if first:
        lines.append(f"(bounds at {first['confidence']:.0%} from {first['samples']} samples"
                     + (f", {first['folds']}-fold cross-fitted" if first.get("folds", 0) > 1 else "") + ")")
    return "\n".join(lines) + "\n"


# what a failed check is called in a sweep's table and plot
CHECK_NAMES = {"score": "score guard", "balanced_accuracy": "balanced accuracy", "agreement": "decisions",
               "channel": "channel error"}


def failure_text(f: Figure) -> str:
    """A failed check, short, with the figure that failed and its limit: `score guard: 6.1 % > 5 %`
    (a guard judges what it observed), `accuracy: bound 2.09 pp > 2 pp`, `cosine: bound 0.985 < 0.99`."""
    name = CHECK_NAMES.get(f.metric, f.metric.replace("_", " "))
    if f.guard and not name.endswith("guard"):
        name += " guard"
    unit = f" {f.unit}" if f.unit else ""
    if f.metric == "cosine":
        return f"{name}: bound {1 - f.bound:.4g} < {1 - f.budget:g}"
    value = f"{f.loss:.3g}" if f.guard else f"bound {f.bound:.3g}"
    return f"{name}: {value}{unit} > {f.budget:g}{unit}"


def figure_text(f: dict) -> str:
    """A metrics.Figure (as a dict) in words: loss, its bound, the samples and the budget."""
    keys = Figure.__dataclass_fields__
    return Figure(**{k: v for k, v in f.items() if k in keys}).text()


def describe_settings(settings: dict) -> str:
    text = _describe_pruning(settings)
    if settings.get("quantize"):
        text += f"; then quantized ({settings['quantize']}, onnxruntime), each candidate before it was judged"
    return text


def _describe_pruning(settings: dict) -> str:
    mode = settings.get("mode", settings.get("criterion"))
    comp = {"none": "no compensation", "fold": "bias folding", "refit": "least-squares refit"}.get(
        settings.get("compensation"), "")
    if mode == "dead":
        return "dead: remove neurons that are exactly zero on every sample"
    if mode == "thresholds":
        parts = []
        unit = " x layer RMS" if settings.get("relative") else ""
        if settings.get("mean_threshold") is not None:
            parts.append(f"|mean| < {settings['mean_threshold']:g}{unit}")
        if settings.get("std_threshold") is not None:
            parts.append(f"std < {settings['std_threshold']:g}{unit}")
        return "seed: remove neurons with " + " and ".join(parts) + f"; {comp}"
    criterion = settings.get("criterion")
    if settings.get("criterion_chosen"):  # criterion auto: the ranking it took
        criterion = f"{criterion} ({settings['criterion_chosen']['criterion']})"
    if mode == "fraction":
        return f"{criterion}: remove {settings['fraction']:.0%} of the neurons; {comp}"
    confidence = settings.get("confidence", 0.95)
    return f"{criterion}: smallest model whose every metric is within budget at {confidence:.0%} confidence; {comp}"


def _fraction(before: int, after: int) -> float:
    return 0.0 if not before else (before - after) / before


def _percent(before: int | None, after: int | None) -> str:
    """A change as a signed percentage: -23.4% for a reduction, +404% for growth, ? when unknown."""
    if before is None or after is None or (not before and after):
        return "?"
    change = -_fraction(before, after) * 100
    if change == 0:
        return "0%"
    digits = 0 if abs(change) >= 100 else 1
    text = f"{change:+.{digits}f}%"
    return "0%" if text in ("+0.0%", "-0.0%") else text


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# The settings' keys in the order reports have always listed them; keys not named here follow.
SETTINGS_ORDER = ("mode", "criterion", "criterion_chosen", "compensation", "mean_threshold", "std_threshold", "relative", "fraction",
                  "mask", "align", "objective", "structures", "sequential_refit", "batch_size", "data", "samples",
                  "split_projections")


def run_settings(run) -> dict:
    """What a run does, for the report and the pruned model's metadata: from its options' own
    `to_dict()` (the selection's, and the data's as loaded), and the projections it split."""
    settings = {**run.selection.to_dict(), **run.data.to_dict(run.prepared.data)}
    if run.prepared.unpacked:
        settings["split_projections"] = list(run.prepared.unpacked)
    return in_settings_order(settings)


def in_settings_order(settings: dict) -> dict:
    """The settings with SETTINGS_ORDER's keys first, in that order; the others after, as they came."""
    first = {k: settings[k] for k in SETTINGS_ORDER if k in settings}
    return {**first, **{k: v for k, v in settings.items() if k not in first}}


def prune_report(run, selected, pruned) -> Report:
    """The report of a run (`run.Run`) whose selection (`run.Selected`) gave the `pruned` model; its
    validation, written flag and timings are filled in by the stages that follow."""
    p, m, output = run.prepared, run.measured, run.output.path
    report = Report(
        model=str(p.model_path) if p.model_path else "<model>", output=str(Path(output)) if output else None,
        data=p.data.source, samples=p.data.n_samples, settings=run.settings,
        parameters_before=parameter_count(p.model), parameters_after=parameter_count(pruned),
        file_size_before=model_file_size(p.model_path) if p.model_path else p.input_model.ByteSize(),
    )
    report.notes = [*p.data.warnings, *(p.eval_data.warnings if p.eval_data is not None else ()), *selected.notes]
    report.explanation = selected.plan.explanation if selected.plan is not None else []
    evaluation = m.evaluation_data
    one, axes = next(evaluation.batches(1)), evaluation.batch_axes
    report.macs_before, report.macs_after = macs_per_sample(p.model, one, axes), macs_per_sample(pruned, one, axes)
    report.provenance = m.provenance
    if selected.chosen is not None or selected.candidates:
        report.chosen = selected.chosen.label if selected.chosen is not None else None
        report.candidates = [c.to_dict(report.parameters_before) for c in selected.candidates]
    if selected.chosen is not None and m.folds:
        report.certified = [f.to_dict() for f in selected.chosen.figures]
    report.certifiable = run.certifiable
    report.groups = group_reports(p.groups, selected.masks, selected.updates, m.stats)
    report.blocks = block_reports(p.blocks, selected.masks, m.statistics.tap_stats if m.statistics else {},
                                  node_macs(p.model, one, axes) if p.blocks else None)
    went = removed_with(p.blocks, selected.masks)
    for g in report.groups:
        if g.id in went:
            g.neurons_after, g.removed_with = 0, went[g.id]
    removed = any(b["removed"] for b in report.blocks)
    report.nothing_to_prune = None if removed else nothing_to_prune(p.groups, report, selected.mode)
    return report


def block_reports(blocks, masks: dict, tap_stats: dict, macs: dict | None = None) -> list[dict]:
    """Per residual block: what it is, what it costs, whether it was removed (or with which block), its
    stream share on the calibration data (blockselect.stream_share), or why it cannot be removed."""
    went = removed_with(blocks, masks)
    out = []
    for b in blocks:
        d = b.to_dict()
        d["macs"] = block_macs(b, macs)
        d["stream_share"] = stream_share(b, tap_stats) if b.removable else None
        d["removed"] = b.removable and (b.id in went or (b.id in masks and not masks[b.id].all()))
        d["removed_with"] = went.get(b.id)
        out.append(d)
    return out


def block_lines(blocks: list[dict]) -> list[str]:
    """The residual blocks under the layer table: removed (block removed), kept, or skipped with the reason."""
    if not blocks:
        return []
    width = max(len(b["id"]) for b in blocks)
    lines = ["", f"residual blocks ({sum(b['prunable'] for b in blocks)} of {len(blocks)} removable; "
                 "share: the branch's variance over the stream's, on the calibration data)"]
    for b in blocks:
        what = f"{b['branch_kind']} branch{', ' + b['norm'] + '-norm' if b['norm'] else ''}, {b['nodes']} nodes"
        cost = f"{b['parameters']:,} parameters" + (f", {b['macs']:,} MACs" if b.get("macs") is not None else "")
        if not b["prunable"]:
            state = f"skipped: {b['reason']}"
        elif b["removed"]:
            state = "block removed" + (f" with {b['removed_with']}" if b.get("removed_with") else "")
        else:
            state = "kept"
        share = b.get("stream_share")
        if share is not None:
            state += f" (share {share:.3g})"
        lines.append(f"{b['id']:<{width}}  {what}; {cost}; {state}")
    return lines


def group_reports(groups, masks: dict, updates: dict, stats: dict) -> list[GroupReport]:
    """Per neuron group: neurons before and after, why it was skipped, and how its consumers compensated."""
    methods = {}
    for g in groups:
        for c in g.consumer_nodes:
            if c in updates:
                methods.setdefault(g.id, []).append(updates[c].method)
    out = []
    for g in groups:
        kept = int(masks[g.id].sum()) if g.id in masks else g.size
        dead = int(stats[g.id].dead.sum()) if g.id in stats else None
        out.append(GroupReport(g.name, g.producer_op, g.size, kept if g.prunable else g.size, g.prunable,
                               None if g.reason is None else str(g.reason), g.tap, dead, methods.get(g.id), id=g.id,
                               skip=None if g.reason is None else g.reason.to_dict(), producers=g.producer_names,
                               kind=g.kind, unit=g.unit, head_dim=g.head_dim))
    return out


def nothing_to_prune(groups, report: Report, mode: str) -> str | None:
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
    """The candidates a sweep evaluated, and the one fixed-sequence testing picks."""

    candidates: list[Candidate]
    chosen: Candidate | None
    config: SelectionConfig
    parameters_before: int
    provenance: dict
    timings: dict
    stats: dict[str, ActivationStats]
    groups: list
    explanation: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    model: str | None = None  # the model's path, for the plot's title
    choice: object | None = None  # with criterion auto: the ranking it took (autoselect.Choice)

    @property
    def metric(self) -> str:
        return self.candidates[0].metric if self.candidates else ""

    @property
    def criterion(self) -> str:
        return self.config.criterion if self.choice is None else f"{self.config.criterion} ({self.choice.criterion})"

    @property
    def compensation(self) -> str:
        return self.config.compensation

    @property
    def budget(self) -> Budget:
        return self.config.budget

    def to_dict(self) -> dict:
        budget = self.config.budget.to_dict()
        del budget["max_class_drop"]  # a sweep's JSON has never listed it
        return {"criterion": self.config.criterion,
                **({"criterion_chosen": self.choice.to_dict()} if self.choice is not None else {}),
                "compensation": self.compensation, "metric": self.metric, "confidence": self.config.confidence, "rule": self.config.rule, "budget": budget,
                "parameters_before": self.parameters_before, "provenance": self.provenance,
                "explanation": self.explanation, "warnings": self.warnings,
                "chosen": self.chosen.label if self.chosen else None,
                "candidates": [c.to_dict(self.parameters_before) for c in self.candidates],
                "timings": self.timings}

    def format_table(self) -> str:
        names = [g.id for g in self.groups if g.id in self.stats]
        head_dim = {g.id: g.head_dim for g in self.groups if g.kind == "heads"}  # heads are counted as heads
        first = self.candidates[0].primary if self.candidates else None
        unit = f" ({first.unit})" if first is not None and first.unit else ""
        label = (first.label if first is not None else "loss") + unit
        lines = [f"criterion {self.criterion}, {self.compensation}; {self.config.confidence:.0%} upper bounds",
                 *self.explanation, *(f"warning: {w}" for w in self.warnings),
                 f"statistics: {self.provenance['statistics']}", f"evaluation: {self.provenance['evaluation']}",
                 f"samples: {_judged_on(first)}; a candidate passes when every metric's bound (a guard: what it "
                 "observed) is within its limit", "",
                 f"{'candidate':<14} {'kept per layer (h=heads)':<24} {'parameters':>11} {'reduction':>9} "
                 f"{label:>24} {'bound':>8}  within budget?"]
        for c in self.candidates:
            kept = "/".join(f"{c.kept[n] // head_dim[n]}h" if n in head_dim else str(c.kept[n]) for n in names)
            mark = "ok" if c.within_budget else "; ".join(dict.fromkeys(failure_text(f) for f in c.figures
                                                                        if not f.passed))
            if self.chosen is c:
                mark = "ok  <- chosen"
            lines.append(f"{c.label:<14} {kept:<24} {c.parameters:>11,} "
                         f"{1 - c.parameters / self.parameters_before:>9.1%} {c.drop:>24.3g} {c.bound:>8.3g}  {mark}")
        return "\n".join(lines) + "\n"


def _judged_on(figure: Figure | None) -> str:
    if figure is None:
        return "none"
    if figure.folds > 1:
        return f"{figure.samples}, {figure.folds}-fold cross-fitted (each judged by samples its build did not see)"
    return f"{figure.samples} held-out" if figure.held_out else f"{figure.samples}, not held out"


def stats_summary(stats: dict[str, ActivationStats]) -> dict[str, dict]:
    """Per group: neurons, dead ones and the quantiles of mean and std (`stats --json`)."""
    return {name: s.summary() for name, s in stats.items()}


def format_stats(stats: dict[str, ActivationStats]) -> str:
    table = stats_summary(stats)
    width = max(len(n) for n in table)
    lines = [f"{'layer':<{width}}  {'neurons':>7}  {'dead':>5}  {'mean: min / median / max':>28}  "
             f"{'std: min / median / max':>28}"]
    for name, t in table.items():
        m, sd = t["mean_quantiles"], t["std_quantiles"]
        lines.append(f"{name:<{width}}  {t['neurons']:>7}  {t['dead']:>5}  "
                     f"{m[0]:>8.3g} / {m[2]:>8.3g} / {m[4]:>8.3g}  {sd[0]:>8.3g} / {sd[2]:>8.3g} / {sd[4]:>8.3g}")
    return "\n".join(lines) + "\n"


def inspect_records(groups, scores: dict) -> list[dict]:
    """The groups as `inspect --json` lists them, with each head group's head counts and scores."""
    out = []
    for g in groups:
        d = g.to_dict()
        if g.kind == "heads":
            d["heads"], d["kv_heads"] = g.size // g.head_dim, (g.size // g.unit if g.unit != g.head_dim else None)
            d["head_scores"] = scores[g.id].tolist() if g.id in scores else None
        out.append(d)
    return out


def format_signature(model) -> str:
    """The model's inputs (what a .npz must hold, one array per input under its name) and outputs."""
    def shape(dims) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]" if dims is not None else "[?]"

    inputs = [f"{s.name} {s.dtype} {shape(s.shape)}" for s in model_inputs(model)]
    outputs = []
    for o in model.graph.output:
        t = o.type.tensor_type
        if not o.type.HasField("tensor_type"):
            outputs.append(f"{o.name} (not a tensor)")
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else "?"
        outputs.append(f"{o.name} {dtype} {shape(dims if t.HasField('shape') else None)}")
    return (f"inputs     {', '.join(inputs) or 'none'}  (the .npz: one array per input, under its name)\n"
            f"outputs    {', '.join(outputs) or 'none'}\n\n")


def format_inspect(groups, split: list[str], scores: dict) -> str:
    """The groups, one line each with its path or the reason it is skipped; the projections split for
    their heads; the attention heads per layer (with their scores, when measured)."""
    if not groups:
        return "no Gemm/MatMul layers found\n"
    width = max(len(g.id) for g in groups)
    lines = [_inspect_line(g, width) for g in groups]
    lines += [f"split for its heads: {line}" for line in split]
    heads = [g for g in groups if g.kind == "heads"]
    if heads:
        lines.append("\nattention heads per layer" + (" (score: share of the out-projection's input variance)"
                                                      if scores else ""))
        for g in heads:
            count = f"{g.size // g.head_dim} heads of {g.head_dim}"
            if g.unit != g.head_dim:
                count += f", {g.size // g.unit} key/value heads"
            line = f"  {g.id:<{width}}  {count}  {'prunable' if g.prunable else 'skipped'}"
            if g.id in scores:
                unit = "key/value group" if g.unit != g.head_dim else "head"
                line += f"; per {unit}: " + " ".join(f"{v:.3f}" for v in scores[g.id])
            lines.append(line)
    n = sum(g.prunable for g in groups)
    lines.append(f"{n} of {len(groups)} group(s) prunable, {sum(g.size for g in groups if g.prunable)} neurons")
    return "\n".join(lines) + "\n"


def block_records(blocks, shares: dict) -> list[dict]:
    """The residual blocks as `inspect --json` lists them (after the groups, "kind": "blocks"), with each
    removable block's stream share when measured."""
    return [{**b.to_dict(), "stream_share": shares.get(b.id)} for b in blocks]


def inspect_block_lines(blocks, shares: dict) -> str:
    """`inspect`'s residual blocks: what each branch is and costs, removable or why not, its share (--data)."""
    if not blocks:
        return ""
    width = max(len(b.id) for b in blocks)
    lines = ["", "residual blocks (removable as a whole with --structures ...,blocks)"
             + (" (share: the branch's variance over the stream's)" if shares else "")]
    for b in blocks:
        state = "removable" if b.removable else f"skipped: {b.reason}"
        if b.id in shares and shares[b.id] is not None:
            state += f", share {shares[b.id]:.3g}"
        goes = f"; with it {b.neurons} neurons of {len(b.groups)} group(s)" if b.groups else ""
        lines.append(f"  {b.id:<{width}}  {b.describe()}, {b.parameters:,} parameters{goes}; {state}")
    lines.append(f"{sum(b.removable for b in blocks)} of {len(blocks)} residual block(s) removable")
    return "\n".join(lines) + "\n"


def _inspect_line(g, width: int) -> str:
    size = "?" if g.size is None else str(g.size)
    if not g.prunable:
        kind = getattr(g.reason, "kind", None)  # as `inspect --json` gives it in `skip`
        return f"{g.id:<{width}}  {size:>6} neurons  skipped   " + (f"{kind}: " if kind else "") + str(g.reason)
    path = " -> ".join([g.producer_op, *g.region_ops, f"[{', '.join(g.consumers)}]"])
    if g.balanced:  # grouped Convs: say that blocks keep equal counts
        path += "; equal kept counts in " + ", ".join(f"{len(b)} blocks of {b[0][1] - b[0][0]}" for b in g.balanced)
    if len(g.producers) > 1 or len(g.taps) > 1:  # coupled: say what shares the neurons
        path = f"coupled: producers {', '.join(g.producer_names)}; taps {', '.join(g.taps)}; {path}"
        return f"{g.id:<{width}}  {size:>6} neurons  prunable  {path}"
    return f"{g.id:<{width}}  {size:>6} neurons  prunable  tap {g.tap!r}: {path}"


def format_bench(rows: list[BenchRow]) -> str:
    width = max(len(Path(r.model).name) for r in rows)
    # throughput and speed-up both from the median run: the speed-up is the ratio of the throughputs
    lines = [f"{'model':<{width}}  {'batch':>5}  {'p50 ms':>9}  {'p90 ms':>9}  {'samples/s':>10}  {'speed-up':>8}  "
             f"{'parameters':>11}  {'MACs/sample':>12}  {'file':>9}  {'runs':>7}"]
    for r in rows:
        macs = "?" if r.macs_per_sample is None else f"{r.macs_per_sample:,}"
        size = "?" if r.file_size is None else f"{r.file_size / 1000:.1f}kB"
        lines.append(f"{Path(r.model).name:<{width}}  {r.batch_size:>5}  {r.p50_ms:>9.3f}  {r.p90_ms:>9.3f}  "
                     f"{r.throughput:>10.0f}  {r.speedup:>7.2f}x  {r.parameters:>11,}  {macs:>12}  "
                     f"{size:>9}  {r.runs:>7,}")
    return "\n".join(lines) + "\n"

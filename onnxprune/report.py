"""The prune report: one object, shown as a table for people or JSON for pipelines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


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
        for line in self.explanation:
            lines.append(line)
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
            lines.append(f"{g.id or g.name:<{width}}  {g.producer_op:<6}  {neurons:>15}  {note}".rstrip())
        lines.append("")
        lines.append(f"parameters {self.parameters_before:,} -> {self.parameters_after:,} "
                     f"({_percent(self.parameters_before, self.parameters_after)})")
        lines.append(f"file size  {_size(self.file_size_before)} -> {_size(self.file_size_after)} "
                     f"({_percent(self.file_size_before, self.file_size_after)})")
        if self.macs_before and self.macs_after is not None:
            lines.append(f"MACs       {self.macs_before:,} -> {self.macs_after:,} per sample "
                         f"({_percent(self.macs_before, self.macs_after)})")
        v = self.validation
        for o in v.get("outputs", []):
            agreement = "" if o["top1_agreement"] is None else f", top-1 agreement {o['top1_agreement']:.2%}"
            lines.append(f"output     {o['name']}: max |diff| {o['max_abs_diff']:.3g}, "
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
        for f in v.get("figures", []):
            mark = "within budget" if f["passed"] else ("OVER BUDGET" if mode == "budget" else unenforced.get(
                mode, "over the budget; not enforced"))
            lines.append(f"metric     {figure_text(f)} [{mark}]")
        if v:
            status = "passed" if v["passed"] else "FAILED: " + "; ".join(v["failures"])
            lines.append(f"validation {status}")
        if self.timings:
            lines.append("time       " + ", ".join(f"{k} {t:.2f}s" for k, t in self.timings.items()))
        return "\n".join(lines) + "\n"


def figure_text(f: dict) -> str:
    """A metrics.Figure (as a dict) in words: loss, its bound, the samples and the budget."""
    from .metrics import Figure

    keys = Figure.__dataclass_fields__
    return Figure(**{k: v for k, v in f.items() if k in keys}).text()


def describe_settings(settings: dict) -> str:
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
    if mode == "fraction":
        return f"{settings['criterion']}: remove {settings['fraction']:.0%} of the neurons; {comp}"
    confidence = settings.get("confidence", 0.95)
    return (f"{settings.get('criterion')}: smallest model whose every metric is within budget on held-out data "
            f"at {confidence:.0%} confidence; {comp}")


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

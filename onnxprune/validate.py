"""Compare a pruned model with its original on data; say pass or fail, and why.

`Comparison` accumulates, batch by batch, per output max/mean |difference|, top-1 agreement
and cosine similarity, plus accuracy before and after when labels exist; the metrics' checks
(metrics.py), fed in the same pass, give the figures with confidence bounds that the budget
judges. Validation adds the structural checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .data import UNLABELED, Dataset
from .reference import Reference, as_array
from .session import RuntimeOptions, make_session, run


@dataclass
class Tolerances:
    """|pruned - original| <= atol + rtol * |original|, enforced when outputs must not change."""

    atol: float = 1e-5
    rtol: float = 1e-4


def predictions(array: np.ndarray) -> np.ndarray | None:
    """Top-1 predictions of a classifier-like output, or None for other outputs."""
    if array.ndim >= 2 and array.shape[-1] > 1 and array.dtype.kind in "fc":
        return array.argmax(axis=-1)
    if array.ndim == 1 and array.dtype.kind in "iub":
        return array
    return None


@dataclass
class OutputComparison:
    name: str
    max_abs_diff: float = 0.0
    abs_diff_sum: float = 0.0
    elements: int = 0
    agree: int = 0
    rows: int = 0
    cosine_sum: float = 0.0
    cosine_min: float = 1.0
    samples: int = 0

    @property
    def mean_abs_diff(self) -> float:
        return self.abs_diff_sum / self.elements if self.elements else 0.0

    @property
    def agreement(self) -> float | None:
        """Top-1 agreement with the original (classifier-like outputs only)."""
        return self.agree / self.rows if self.rows else None

    @property
    def cosine(self) -> float | None:
        """Mean over samples of the cosine similarity between original and pruned outputs."""
        return self.cosine_sum / self.samples if self.samples else None

    def to_dict(self) -> dict:
        return {"name": self.name, "max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "top1_agreement": self.agreement, "cosine_mean": self.cosine,
                "cosine_min": self.cosine_min if self.samples else None}


@dataclass
class Comparison:
    """Streaming comparison of original and pruned outputs (and labels)."""

    names: list[str]
    exact: bool = False
    tolerances: Tolerances = field(default_factory=Tolerances)
    outputs: list[OutputComparison] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    samples: int = 0
    accuracy_output: str | None = None
    correct_before: int = 0
    correct_after: int = 0
    labeled: int = 0

    def __post_init__(self):
        self.outputs = [OutputComparison(n) for n in self.names]

    def add(self, before: list, after: list, labels: np.ndarray | None = None) -> None:
        before = [as_array(b) for b in before]
        after = [as_array(a) for a in after]
        n = len(before[0]) if before and before[0].ndim else 0
        self.samples += n
        for c, b, a in zip(self.outputs, before, after):
            failure = self._compare(c, b, a)
            if failure and failure not in self.failures:
                self.failures.append(failure)
        if labels is not None:
            if self.accuracy_output is None:
                self.accuracy_output = next(
                    (name for name, b in zip(self.names, before) if _label_predictions(b, labels) is not None), "")
            if self.accuracy_output:
                k = self.names.index(self.accuracy_output)
                known = labels != UNLABELED  # samples without a label have no accuracy
                self.labeled += int(known.sum())
                self.correct_before += int(((_label_predictions(before[k], labels) == labels) & known).sum())
                p_after = _label_predictions(after[k], labels)
                if p_after is not None:
                    self.correct_after += int(((p_after == labels) & known).sum())

    @property
    def accuracy_before(self) -> float | None:
        return self.correct_before / self.labeled if self.accuracy_output and self.labeled else None

    @property
    def accuracy_after(self) -> float | None:
        return self.correct_after / self.labeled if self.accuracy_output and self.labeled else None

    def _compare(self, c: OutputComparison, before: np.ndarray, after: np.ndarray) -> str | None:
        if before.shape != after.shape:
            return f"output {c.name!r} has shape {after.shape}, the original {before.shape}"
        if before.dtype.kind in "fc":
            finite = np.isfinite(before)
            if not np.array_equal(finite, np.isfinite(after)):
                return f"output {c.name!r} has NaN or infinite values where the original has none"
            all_finite = bool(finite.all())
            # Differences and dot products in the outputs' own precision, sums in float64.
            diff = np.abs(after - before)
            if not all_finite:
                diff = diff[finite]
            if diff.size:
                c.max_abs_diff = max(c.max_abs_diff, float(diff.max()))
                c.abs_diff_sum += float(diff.sum(dtype=np.float64))
                c.elements += diff.size
            if before.ndim >= 1 and len(before) and all_finite:
                flat_b, flat_a = before.reshape(len(before), -1), after.reshape(len(after), -1)
                nb = np.sqrt(np.einsum("ij,ij->i", flat_b, flat_b).astype(np.float64))
                na = np.sqrt(np.einsum("ij,ij->i", flat_a, flat_a).astype(np.float64))
                dots = np.einsum("ij,ij->i", flat_b, flat_a).astype(np.float64)
                norms = nb * na
                same = (np.abs(flat_b - flat_a).max(axis=1) == 0).astype(float)
                cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), same)
                cos = np.clip(cos, -1.0, 1.0)
                c.cosine_sum += float(cos.sum())
                c.cosine_min = min(c.cosine_min, float(cos.min()))
                c.samples += len(cos)
            if self.exact and diff.size:
                b = before[finite] if not all_finite else before.reshape(-1)
                limit = self.tolerances.atol + self.tolerances.rtol * np.abs(b.astype(np.float64))
                if (diff.reshape(-1).astype(np.float64) > limit).any():
                    return (f"output {c.name!r} changed by up to {c.max_abs_diff:.3g} although only "
                            f"exactly-dead neurons were removed")
        elif not np.array_equal(before, after):
            if before.dtype.kind in "iub":
                c.max_abs_diff = max(c.max_abs_diff, float(np.abs(after.astype(np.float64) - before).max()))
            if self.exact:
                return f"output {c.name!r} changed although only exactly-dead neurons were removed"
        p_before, p_after = predictions(before), predictions(after)
        if p_before is not None and p_after is not None:
            c.agree += int((p_before == p_after).sum())
            c.rows += p_before.size
        return None


def _label_predictions(array: np.ndarray, labels: np.ndarray):
    p = predictions(array)
    if p is None or p.shape != labels.shape:
        return None
    return p


COMPARE_BYTES = 16 << 20  # original outputs compared at a time (the pruned model's as many again)


def compare(session, data: Dataset, *, reference: Reference | None = None, original_session=None,
            batch_size: int = 256, options: RuntimeOptions | None = None, exact: bool = False,
            tolerances: Tolerances | None = None, purpose: str = "candidate", checks=(),
            run_samples: int | None = None) -> Comparison:
    """Run `session` on `data` and compare with the reference outputs (or the original session's).

    `checks` (metrics.Check) are fed every batch as well. `run_samples` caps the samples per run
    (a model with a fixed batch dimension takes its own): the figures do not depend on it.
    `session` None stands for the original model itself: its outputs are the reference's."""
    options = options or RuntimeOptions()
    if run_samples:
        batch_size = min(batch_size, run_samples)
    if session is None and reference is None:
        raise ValueError("the original's outputs need a reference to compare with")
    names = [o.name for o in session.get_outputs()] if session is not None else list(reference.names)
    comparison = Comparison(names, exact=exact, tolerances=tolerances or Tolerances())
    size = data.batch_size(batch_size)
    ref_batches = reference.batches(size, data.n_samples) if reference is not None else None
    start = 0
    for feeds in data.batches(batch_size):
        before = (next(ref_batches) if ref_batches is not None
                  else run(original_session, feeds, options, purpose="original"))
        after = run(session, feeds, options, purpose=purpose) if session is not None else before
        n = data.samples_in(feeds)
        labels = None if data.labels is None else data.labels[start:start + n]
        before, after = [as_array(b) for b in before], [as_array(a) for a in after]
        # The comparison's and the checks' temporaries (float64 copies, differences) scale with the
        # rows they are given: feed them pieces of about COMPARE_BYTES, so memory does not grow with
        # the batch (outputs batched on another axis than the first go whole).
        step = n
        if n > 1 and all(x.ndim and len(x) == n for x in before + after):
            step = max(1, COMPARE_BYTES // max(1, sum(x.nbytes for x in before) // n))
        for lo in range(0, n, step):
            part = slice(lo, min(n, lo + step))
            b, a = ([x[part] for x in before], [x[part] for x in after]) if step < n else (before, after)
            part_labels = None if labels is None else labels[part]
            comparison.add(b, a, part_labels)
            if not comparison.failures:  # a shape or NaN mismatch already fails; metrics cannot read it
                for check in checks:
                    check.update(b, a, part_labels)
        start += n
    return comparison


@dataclass
class ValidationResult:
    """Checks run on a pruned model; truthy when every check passed."""

    failures: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    data: str = ""
    figures: list = field(default_factory=list)  # metrics.Figure of every check, with confidence bounds

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    @property
    def outputs(self) -> list[OutputComparison]:
        return self.comparison.outputs if self.comparison else []

    @property
    def samples(self) -> int:
        return self.comparison.samples if self.comparison else 0

    @property
    def accuracy_before(self):
        return self.comparison.accuracy_before if self.comparison else None

    @property
    def accuracy_after(self):
        return self.comparison.accuracy_after if self.comparison else None

    def to_dict(self) -> dict:
        c = self.comparison
        return {
            "passed": self.passed,
            "failures": self.failures,
            "checks": self.checks,
            "data": self.data,
            "samples": self.samples,
            "outputs": [o.to_dict() for o in self.outputs],
            "figures": [f.to_dict() for f in self.figures],
            "accuracy": None if self.accuracy_before is None else {
                "output": c.accuracy_output, "before": self.accuracy_before, "after": self.accuracy_after},
        }


def validate(original, pruned_path, data: Dataset, *, batch_size: int = 256,
             options: RuntimeOptions | None = None, exact: bool = False,
             tolerances: Tolerances | None = None, reference: Reference | None = None,
             data_label: str = "", plan=None, run_samples: int | None = None) -> ValidationResult:
    """Check `pruned_path` structurally, then run it on `data` and compare with the original.

    `original` is a ModelProto or a path (used for its signature, and for its outputs
    unless a `reference` of them on `data` is given). With `exact`, any output further
    from the original than the tolerances is a failure (removing exactly-dead neurons).
    `plan` (metrics.Plan) gives the checks whose figures the result reports.
    """
    options = options or RuntimeOptions()
    result = ValidationResult(data=data_label or data.source)
    try:
        onnx.checker.check_model(str(pruned_path), full_check=True)
        result.checks.append("onnx.checker full check")
    except Exception as e:
        result.failures.append(f"onnx.checker rejects the pruned model: {_first_line(e)}")
        return result

    def signature(session):
        return ([(i.name, i.type) for i in session.get_inputs()],
                [(o.name, o.type) for o in session.get_outputs()])

    original_session = make_session(original, options)
    original_signature = signature(original_session)
    if reference is not None:  # its outputs are on disk: one model in memory at a time
        original_session = None
    try:
        pruned_session = make_session(pruned_path, options)
        result.checks.append("loads in onnxruntime")
    except Exception as e:
        result.failures.append(f"onnxruntime cannot load the pruned model: {_first_line(e)}")
        return result

    if original_signature != signature(pruned_session):
        result.failures.append("inputs or outputs differ from the original model's (names or types)")
        return result
    checks = plan.start() if plan is not None else []
    try:
        result.comparison = compare(pruned_session, data, reference=reference, original_session=original_session,
                                    batch_size=batch_size, options=options, exact=exact, tolerances=tolerances,
                                    purpose="validation", checks=checks, run_samples=run_samples)
    except Exception as e:
        result.failures.append(f"onnxruntime fails running the pruned model: {_first_line(e)}")
        return result
    if not result.comparison.failures:
        result.figures = [c.figure() for c in checks]
    result.failures += result.comparison.failures
    result.checks.append(f"ran on {result.samples} samples")
    if exact and not result.failures:
        t = result.comparison.tolerances
        result.checks.append(f"outputs unchanged within atol={t.atol:g}, rtol={t.rtol:g}")
    return result


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

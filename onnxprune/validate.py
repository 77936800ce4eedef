"""Compare a pruned model with its original on data; say pass or fail, and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .data import Dataset
from .runtime import RuntimeOptions, make_session, run


@dataclass
class Tolerances:
    """|pruned - original| <= atol + rtol * |original|, enforced when outputs must not change."""

    atol: float = 1e-5
    rtol: float = 1e-4


@dataclass
class OutputComparison:
    name: str
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    agreement: float | None = None  # top-1 agreement (classifier-like outputs only)
    _sum: float = field(default=0.0, repr=False)
    _n: int = field(default=0, repr=False)
    _agree: int = field(default=0, repr=False)
    _rows: int = field(default=0, repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "max_abs_diff": self.max_abs_diff,
                "mean_abs_diff": self.mean_abs_diff, "top1_agreement": self.agreement}


@dataclass
class ValidationResult:
    """Checks run on a pruned model; truthy when every check passed."""

    failures: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    outputs: list[OutputComparison] = field(default_factory=list)
    samples: int = 0
    accuracy_output: str | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "checks": self.checks,
            "samples": self.samples,
            "outputs": [o.to_dict() for o in self.outputs],
            "accuracy": None if self.accuracy_before is None else {
                "output": self.accuracy_output, "before": self.accuracy_before, "after": self.accuracy_after},
        }


def as_array(value) -> np.ndarray:
    """An output as an array; sequences of maps (scikit-learn's ZipMap) become [n, classes]."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float64)
    return np.asarray(value)


def predictions(array: np.ndarray) -> np.ndarray | None:
    """Top-1 predictions of a classifier-like output, or None for other outputs."""
    if array.ndim >= 2 and array.shape[-1] > 1 and array.dtype.kind in "fc":
        return array.argmax(axis=-1)
    if array.ndim == 1 and array.dtype.kind in "iub":
        return array
    return None


def validate(original, pruned_path, data: Dataset, *, batch_size: int = 256,
             options: RuntimeOptions | None = None, exact: bool = False,
             tolerances: Tolerances | None = None) -> ValidationResult:
    """Check `pruned_path` structurally, then run both models on `data` and compare outputs.

    `original` is a ModelProto or a path. With `exact`, any output further from the
    original than the tolerances is a failure (removing exactly-dead neurons).
    """
    options = options or RuntimeOptions()
    tolerances = tolerances or Tolerances()
    result = ValidationResult()
    try:
        onnx.checker.check_model(str(pruned_path), full_check=True)
        result.checks.append("onnx.checker full check")
    except Exception as e:
        result.failures.append(f"onnx.checker rejects the pruned model: {_first_line(e)}")
        return result
    try:
        pruned_session = make_session(pruned_path, options)
        result.checks.append("loads in onnxruntime")
    except Exception as e:
        result.failures.append(f"onnxruntime cannot load the pruned model: {_first_line(e)}")
        return result
    original_session = make_session(original, options)

    def signature(session):
        return ([(i.name, i.type) for i in session.get_inputs()],
                [(o.name, o.type) for o in session.get_outputs()])

    if signature(original_session) != signature(pruned_session):
        result.failures.append("inputs or outputs differ from the original model's (names or types)")
        return result
    names = [o.name for o in original_session.get_outputs()]
    result.outputs = [OutputComparison(n) for n in names]
    correct_before = correct_after = 0
    for feeds in data.batches(batch_size):
        try:
            before = run(original_session, feeds, options)
            after = run(pruned_session, feeds, options)
        except Exception as e:
            result.failures.append(f"onnxruntime fails running the pruned model: {_first_line(e)}")
            return result
        start = result.samples
        result.samples += len(next(iter(feeds.values())))
        for comparison, b, a in zip(result.outputs, before, after):
            failure = _compare(comparison, as_array(b), as_array(a), exact, tolerances)
            if failure and failure not in result.failures:
                result.failures.append(failure)
        if data.labels is not None:
            labels = data.labels[start:result.samples]
            if result.accuracy_output is None:
                result.accuracy_output = next(
                    (n for n, b in zip(names, before) if _label_predictions(as_array(b), labels) is not None), "")
            if result.accuracy_output:
                k = names.index(result.accuracy_output)
                correct_before += int((_label_predictions(as_array(before[k]), labels) == labels).sum())
                correct_after += int((_label_predictions(as_array(after[k]), labels) == labels).sum())
    for c in result.outputs:
        c.mean_abs_diff = c._sum / c._n if c._n else 0.0
        c.agreement = c._agree / c._rows if c._rows else None
    if result.accuracy_output:
        result.accuracy_before = correct_before / result.samples
        result.accuracy_after = correct_after / result.samples
    else:
        result.accuracy_output = None
    result.checks.append(f"ran both models on {result.samples} samples")
    if exact and not result.failures:
        result.checks.append(f"outputs unchanged within atol={tolerances.atol:g}, rtol={tolerances.rtol:g}")
    return result


def _label_predictions(array: np.ndarray, labels: np.ndarray):
    p = predictions(array)
    if p is None or p.shape != labels.shape:
        return None
    return p


def _compare(c: OutputComparison, before: np.ndarray, after: np.ndarray, exact: bool,
             tol: Tolerances) -> str | None:
    if before.shape != after.shape:
        return f"output {c.name!r} has shape {after.shape}, the original {before.shape}"
    if before.dtype.kind in "fc":
        finite = np.isfinite(before)
        if not np.array_equal(finite, np.isfinite(after)):
            return f"output {c.name!r} has NaN or infinite values where the original has none"
        diff = np.abs(after.astype(np.float64) - before.astype(np.float64))[finite]
        if diff.size:
            c.max_abs_diff = max(c.max_abs_diff, float(diff.max()))
            c._sum += float(diff.sum())
            c._n += diff.size
            if exact:
                limit = tol.atol + tol.rtol * np.abs(before.astype(np.float64)[finite])
                if (diff > limit).any():
                    return (f"output {c.name!r} changed by up to {c.max_abs_diff:.3g} although only "
                            f"exactly-dead neurons were removed")
    elif not np.array_equal(before, after):
        diff = np.abs(after.astype(np.float64) - before.astype(np.float64)) if before.dtype.kind in "iub" else None
        if diff is not None:
            c.max_abs_diff = max(c.max_abs_diff, float(diff.max()))
        if exact:
            return f"output {c.name!r} changed although only exactly-dead neurons were removed"
    p_before, p_after = predictions(before), predictions(after)
    if p_before is not None and p_after is not None:
        c._agree += int((p_before == p_after).sum())
        c._rows += p_before.size
    return None


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

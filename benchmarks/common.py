"""Shared helpers for the benchmark scripts: the machine they ran on, the digits data split."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
sys.path.insert(0, str(SAMPLES))


def machine() -> str:
    import numpy
    import onnx
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {numpy.__version__}, "
            f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")


def digits_sets():
    """Calibration (600 training images), selection (597 other training images), test (the 600 in digits_val.npz)."""
    from build_samples import digits_split

    x_train, y_train, x_val, y_val = digits_split()
    cal = {"input": x_train[:600], "labels": y_train[:600]}
    sel = {"input": x_train[600:], "labels": y_train[600:]}
    test = {"input": x_val, "labels": y_val}
    stored = np.load(SAMPLES / "digits_val.npz")
    assert np.array_equal(stored["input"], x_val), "digits_val.npz is not the split build_samples.py makes"
    return cal, sel, test

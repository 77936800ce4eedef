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
    """Calibration (600 digits), selection (the other 597) of the 1,197 outside digits_val.npz (training and
    test digits of build_samples.py), test (the 600 in digits_val.npz)."""
    from build_samples import digits_split

    x_train, y_train, x_val, y_val = digits_split()
    cal = {"input": x_train[:600], "labels": y_train[:600]}
    sel = {"input": x_train[600:], "labels": y_train[600:]}
    test = {"input": x_val, "labels": y_val}
    stored = np.load(SAMPLES / "digits_val.npz")
    assert np.array_equal(stored["input"], x_val), "digits_val.npz is not the split build_samples.py makes"
    return cal, sel, test


def encoder_model(directory, *, layers=6, hidden=384, heads=6, ffn=1536, vocab=1000, seq=64, n=256, seed=0):
    """A transformer-sized encoder exported from PyTorch with random weights, and token data for it."""
    sys.path.insert(0, str(ROOT / "tests"))
    import warnings

    import torch
    from torch_models import encoder, encoder_inputs, export

    warnings.filterwarnings("ignore")
    net = encoder(seed=seed, vocab=vocab, hidden=hidden, heads=heads, ffn=ffn, layers=layers, max_len=seq)
    ids, mask = encoder_inputs(n=n, seq=seq, vocab=vocab, seed=seed)
    path = Path(directory) / "encoder.onnx"
    with torch.no_grad():
        export(net, (ids[:2], mask[:2]), path, dynamo=False, opset=17,
               names=(["input_ids", "attention_mask"], ["hidden"]),
               dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return path, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


class Timer:
    def __init__(self):
        import time

        self._time = time.perf_counter
        self.seconds = 0.0

    def __enter__(self):
        self._start = self._time()
        return self

    def __exit__(self, *exc):
        self.seconds += self._time() - self._start

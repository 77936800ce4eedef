"""A sweep of K candidates: total time / (one statistics pass + K plain inference passes) (goal <= 1.2).

    python benchmarks/sweep_overhead.py

The baseline is what a sweep cannot avoid: one statistics pass over the data and, for each
candidate, creating an onnxruntime session for the pruned model and running it over the
held-out data. Everything else a sweep does (rewriting each candidate, comparing outputs,
choosing) is overhead. Both are measured in the same run, with the same settings.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np

from common import SAMPLES, Timer, encoder_model, machine

import onnxprune
from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.modelio import load_model
from onnxprune.run import calibration_split
from onnxprune.rewrite import apply_masks
from onnxprune.runtime import collect_statistics
from onnxprune.session import make_session


def measure(model, feeds, grid, compensation, batch_size):
    with Timer() as total:
        result = onnxprune.sweep(model, feeds, grid=grid, compensation=compensation, batch_size=batch_size)
    proto = load_model(model) if not hasattr(model, "graph") else model
    data = load_data(feeds, proto)
    index = GraphIndex(proto)
    groups = find_groups(proto, index)
    calibration = calibration_split(data.n_samples, 0.5)
    held = data.subset(np.flatnonzero(~calibration))
    # The candidates' models are not kept by a sweep (memory): the baseline rebuilds them from their
    # masks, untimed (weights do not change inference time), and times their sessions and passes.
    pruned = [apply_masks(proto, groups, c.masks, index=index).SerializeToString() for c in result.candidates]
    with Timer() as base:
        collect_statistics(proto, groups, data, batch_size=batch_size, index=index, calibration=calibration,
                           grams=compensation == "refit")
        for blob in pruned:
            session = make_session(blob)
            for batch in held.batches(batch_size):
                session.run(None, batch)
    return total.seconds, base.seconds, len(result.candidates)


def main() -> int:
    print(f"machine: {machine()}")
    print(f"{'model':<30} {'compensation':<12} {'K':>3} {'sweep s':>8} {'baseline s':>10} {'ratio':>6}")
    digits = SAMPLES / "digits_mlp_gemm.onnx"
    digits_data = dict(np.load(SAMPLES / "digits_val.npz"))
    grid20 = [round(0.05 * i, 2) for i in range(20)]
    with tempfile.TemporaryDirectory() as tmp:
        path, feeds = encoder_model(tmp, n=256)
        cases = [("digits MLP (600 samples)", digits, digits_data, grid20, 256),
                 ("encoder 6x384 (256 x 64 tok)", path, feeds, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 32)]
        for name, model, data, grid, batch in cases:
            for compensation in ("fold", "refit"):
                total, base, k = measure(model, data, grid, compensation, batch)
                print(f"{name:<30} {compensation:<12} {k:>3} {total:>8.2f} {base:>10.2f} {total / base:>6.2f}")
    print("goal: sweep / (statistics pass + K plain passes) <= 1.2")
    return 0


if __name__ == "__main__":
    sys.exit(main())

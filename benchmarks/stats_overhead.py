"""Statistics pass time / plain onnxruntime inference over the same data and batch size (goal <= 1.15).

    python benchmarks/stats_overhead.py

Both sides create their session and run every batch; the baseline runs the original model
and fetches its outputs, the statistics pass runs the tapped model and accumulates moments.
Each is timed several times, alternating, and the medians are compared. Also printed: the
pass with Gram matrices (what --refit needs), which is extra arithmetic by design.
"""

from __future__ import annotations

import statistics as st
import sys
import tempfile

from common import SAMPLES, Timer, encoder_model, machine

from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.modelio import load_model
from onnxprune.runtime import collect_statistics
from onnxprune.session import RuntimeOptions, make_session


def plain_pass(model, data, batch_size):
    session = make_session(model, RuntimeOptions())
    for feeds in data.batches(batch_size):
        session.run(None, feeds)


def measure(model, data, batch_size, repeats=5):
    index = GraphIndex(model)
    groups = find_groups(model, index)
    times = {"plain": [], "stats": [], "stats+gram": []}
    for _ in range(repeats):
        with Timer() as t:
            plain_pass(model, data, batch_size)
        times["plain"].append(t.seconds)
        with Timer() as t:
            collect_statistics(model, groups, data, batch_size=batch_size, index=index)
        times["stats"].append(t.seconds)
        with Timer() as t:
            collect_statistics(model, groups, data, batch_size=batch_size, index=index, grams=True)
        times["stats+gram"].append(t.seconds)
    return {k: st.median(v) for k, v in times.items()}


def main() -> int:
    print(f"machine: {machine()}")
    print(f"{'model':<34} {'batch':>5} {'plain s':>8} {'stats s':>8} {'ratio':>6} {'+gram s':>8} {'ratio':>6}")
    digits = load_model(SAMPLES / "digits_mlp_gemm.onnx")
    big = {k: v.repeat(50, axis=0) for k, v in __import__("numpy").load(SAMPLES / "digits_val.npz").items()}
    cases = [("digits MLP, 30,000 samples", digits, load_data(big, digits), 256)]
    with tempfile.TemporaryDirectory() as tmp:
        path, feeds = encoder_model(tmp)
        encoder = load_model(path)
        cases.append(("encoder 6x384, 256 x 64 tokens", encoder, load_data(feeds, encoder), 32))
        for name, model, data, batch in cases:
            r = measure(model, data, batch, repeats=5 if "MLP" in name else 3)
            print(f"{name:<34} {batch:>5} {r['plain']:>8.3f} {r['stats']:>8.3f} {r['stats'] / r['plain']:>6.2f} "
                  f"{r['stats+gram']:>8.3f} {r['stats+gram'] / r['plain']:>6.2f}")
    print("goal: statistics pass / plain inference <= 1.15")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end wall time of the default command, and where the time goes.

    python benchmarks/e2e.py

Runs `onnxprune MODEL --data DATA --json` as a user would (a fresh process: the total
includes starting Python and importing onnx/onnxruntime) on the sample models and on a
transformer-sized encoder (6 layers, 384 wide, FFN 1536, 256 sequences of 64 tokens,
random weights, exported from PyTorch), and prints the report's per-stage timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import SAMPLES, encoder_model, machine

STAGES = ("load", "groups", "statistics", "selection", "validation", "write")


def run(model, data, out, *extra):
    cmd = [sys.executable, "-m", "onnxprune", str(model), "--data", str(data), "-o", str(out), "--force",
           "--json", "-q", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(done.stdout)


def main() -> int:
    print(f"machine: {machine()}")
    print(f"{'model':<28} {'total s':>8} " + " ".join(f"{s:>10}" for s in STAGES) + f" {'removed':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, feeds = encoder_model(tmp, n=256)
        np.savez(tmp / "tokens.npz", **feeds)
        cases = [("digits MLP (gemm)", SAMPLES / "digits_mlp_gemm.onnx", SAMPLES / "digits_val.npz", ()),
                 ("digits MLP (matmul)", SAMPLES / "digits_mlp_matmul.onnx", SAMPLES / "digits_val.npz", ()),
                 ("encoder 6x384, 256x64 tok", path, tmp / "tokens.npz", ("--mask", "attention_mask",
                                                                          "--batch-size", "32"))]
        for name, model, data, extra in cases:
            total, report = run(model, data, tmp / "out.onnx", *extra)
            t = report["timings"]
            print(f"{name:<28} {total:>8.2f} " + " ".join(f"{t.get(s, 0):>10.2f}" for s in STAGES)
                  + f" {report['parameter_reduction']:>8.1%}")
    print("(selection includes evaluating every candidate on the held-out data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

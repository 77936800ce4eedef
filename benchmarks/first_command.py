"""The README's first command, measured on digits it never saw (a benchmark, not a test).

    python benchmarks/first_command.py [--max-drop 2]

Runs `onnxprune sample_models/digits_mlp_gemm.onnx --data sample_models/digits_val.npz --max-drop 2`
(the 600 validation digits: statistics, refit and the cross-fitted choice) and measures the written
model on the 300 digits of sample_models/digits_test.npz, which neither training nor the command saw:

- the test accuracy of the original and of the written model, and the drop against the budget;
- the oracle: `onnxprune.sweep` builds every grid candidate from the same statistics (all 600
  validation digits, as the written model is) and judges it on the test digits; the oracle is the
  largest parameter reduction whose observed test drop is within the budget, what a tool that knew
  the test data could have picked from the same candidates. "default ÷ oracle" is issue 20's measure.

300 test digits resolve a drop to 0.33 pp per digit, so the oracle is itself a noisy figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import SAMPLES, machine

import onnxprune
from onnxprune import DataSpec

MODEL, DATA, TEST = SAMPLES / "digits_mlp_gemm.onnx", SAMPLES / "digits_val.npz", SAMPLES / "digits_test.npz"


def test_accuracy(model_path: Path) -> float:
    with np.load(TEST) as z:
        x, y = z["input"], z["labels"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(axis=1) == y).mean())


def measure(max_drop: float) -> dict:
    """The written model's test figures, and the oracle's."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "digits_small.onnx"
        result = onnxprune.prune(MODEL, DATA, max_drop=max_drop, output=out)
        before, after = test_accuracy(MODEL), test_accuracy(out)
    report = result.report
    reduction = 1 - report.parameters_after / report.parameters_before
    swept = onnxprune.sweep(MODEL, DataSpec(DATA, eval_data=TEST), max_drop=max_drop)
    within = [1 - c.parameters / swept.parameters_before for c in swept.candidates if c.primary.loss <= max_drop]
    oracle = max(within, default=0.0)
    return {"chosen": report.chosen, "reduction": reduction, "test_before": before, "test_after": after,
            "test_drop_pp": 100 * (before - after), "oracle": oracle,
            "ratio": reduction / oracle if oracle else float("nan"), "test_samples": 300}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-drop", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(machine())
    m = measure(args.max_drop)
    print(f"onnxprune {MODEL.name} --data {DATA.name} --max-drop {args.max_drop:g}: chose {m['chosen']}, "
          f"{100 * m['reduction']:.1f} % fewer parameters")
    print(f"test accuracy ({m['test_samples']} unseen digits): {100 * m['test_before']:.2f} % -> "
          f"{100 * m['test_after']:.2f} %, drop {m['test_drop_pp']:.2f} pp (budget {args.max_drop:g} pp)")
    print(f"oracle (largest grid candidate within budget on test): {100 * m['oracle']:.1f} %; "
          f"default / oracle {m['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

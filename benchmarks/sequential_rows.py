"""What the sequential refit's row stop saves, and what it costs in fit (a benchmark, not a test).

    python benchmarks/mnist.py                          # the MNIST models, once
    python benchmarks/sequential_rows.py [--models cnn,resnext] [--n 3000] [--fractions 0.4,0.6] [--search]

The sequential refit replays the calibration samples in 8 interleaved parts and stops a layer's pass once it
has `sequential.ROWS_PER_UNKNOWN` rows per unknown (see docs/method.md). This script prunes the MNIST models of
`benchmarks/quantize.py` at fixed amounts (statistics and refit on the first --n samples of the shuffled pool, no
holdout) three ways: the row stop (the default), every part read (ROWS_PER_UNKNOWN set past any data: the
behaviour before the stop, the original's taps kept only when they fit the cache), and the independent refit;
each judged on the unseen rest of the pool (test accuracy, agreement with the original's argmax, mean squared
change of the logits), with its wall time. `--search` also times the default budget search (1 pp) with the
row stop and with the independent refit (the search with every part read took more than 20 minutes on
ResNeXt; it is not run).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ROOT, machine  # noqa: E402

sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,resnext")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--fractions", default="0.4,0.6")
    parser.add_argument("--search", action="store_true", help="also time the default budget search (1 pp)")
    args = parser.parse_args()
    import onnx

    import onnxprune
    import onnxprune.sequential as sequential
    from quantize import build, outputs, split

    print(f"# {machine()}")
    stop = sequential.ROWS_PER_UNKNOWN
    ways = (("row stop", dict(sequential=True), stop), ("every part", dict(sequential=True), 10 ** 12),
            ("independent", dict(sequential=False), stop))
    for name in args.models.split(","):
        path, pool, input_name, _ = build(name)
        data, test = split(pool, args.n)
        original = onnx.load(str(path))
        reference = outputs(original, {input_name: test[input_name]})
        accuracy = (reference.argmax(1) == test["labels"]).mean()
        print(f"\n## {name}: {args.n} samples seen, {len(test['labels'])} unseen; original test accuracy "
              f"{100 * accuracy:.2f} %\n")
        print("| amount | refit | seconds | test accuracy | agreement | logit MSE |")
        print("|---|---|---|---|---|---|")
        for fraction in (float(f) for f in args.fractions.split(",")):
            for label, options, rows in ways:
                sequential.ROWS_PER_UNKNOWN = rows
                started = time.perf_counter()
                result = onnxprune.prune(original, data, fraction=fraction, holdout=0, **options)
                seconds = time.perf_counter() - started
                sequential.ROWS_PER_UNKNOWN = stop
                out = outputs(result.model, {input_name: test[input_name]})
                print(f"| {fraction:.0%} | {label} | {seconds:.1f} | {100 * (out.argmax(1) == test['labels']).mean():.2f} % "
                      f"| {100 * (out.argmax(1) == reference.argmax(1)).mean():.2f} % | "
                      f"{float(((out - reference) ** 2).mean()):.4f} |", flush=True)
        if args.search:
            for label, options in (("row stop", dict(sequential=True)), ("independent", dict(sequential=False))):
                started = time.perf_counter()
                result = onnxprune.prune(original, data, max_drop=1.0, **options)
                out = outputs(result.model, {input_name: test[input_name]})
                print(f"| search 1 pp | {label} | {time.perf_counter() - started:.1f} | "
                      f"{100 * (out.argmax(1) == test['labels']).mean():.2f} % | "
                      f"{100 * (out.argmax(1) == reference.argmax(1)).mean():.2f} % | "
                      f"{float(((out - reference) ** 2).mean()):.4f} ({result.report.chosen}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

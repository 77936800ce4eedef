"""Do int8 layers run faster at widths that are multiples of 4, 8, 16 or 32? The measurement behind `--align`'s
default for quantized layers (onnxprune/quantize.py QUANTIZED_ALIGN).

    python benchmarks/quantize_align.py [--rounds 7] [--threads 1]

Two layers around the width being pruned, quantized by onnxruntime's own quantizer as `--quantize` does:
- matmul: x [B, 512] -> MatMul 512 x w -> Relu -> MatMul w x 512, static QDQ and dynamic;
- conv:   x [B, 32, 14, 14] -> Conv 3x3 32 -> w -> Relu -> Conv 3x3 w -> 32, static QDQ;
- cnn conv2: the MNIST CNN's second layer, x [B, 16, 14, 14] -> Conv 5x5 16 -> w -> Relu (output channels only);
for every width w in a window around 128 (matmul), 64 (conv) and 32 (cnn conv2), at batch 1 and 64, one
onnxruntime thread.
Each round times every width once, in a shuffled order, so load drift on a shared machine spreads over all
widths; a width's latency is the median over rounds of its per-round median.

What `--align m` does to a layer is keep ceil(k / m) * m neurons instead of the k the budget allows: it
pays off only when the rounded-up width runs faster than k itself. For each m the script reports, over
every k of the window, the median and the worst of latency(ceil(k/m)*m) / latency(k): below 1 is a free
speed-up, above 1 is time lost to neurons kept for nothing. The default for quantized layers is the
smallest m whose median ratio (the larger of the two batch sizes') is within 0.02 of the lowest, if the
lowest is clearly below 1 (at most 0.97), else no alignment: a larger multiple at the same median speed
only keeps more neurons, and its worst case is worse. Times are the CPU time of the calling thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402

sys.path.insert(0, str(ROOT))
MULTIPLES = (4, 8, 16, 32)
CLEARLY = 0.97
TIE = 0.02  # medians this close to the best are the same speed: the smallest such multiple keeps fewest


def matmul_model(width: int, outer: int = 512):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    w1 = (rng.standard_normal((outer, width)) / np.sqrt(outer)).astype(np.float32)
    w2 = (rng.standard_normal((width, outer)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", outer])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outer])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (outer,)


def conv_model(width: int, outer: int = 32, side: int = 14):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    w1 = (rng.standard_normal((width, outer, 3, 3)) / np.sqrt(9 * outer)).astype(np.float32)
    w2 = (rng.standard_normal((outer, width, 3, 3)) / np.sqrt(9 * width)).astype(np.float32)
    b1, b2 = np.zeros(width, np.float32), np.zeros(outer, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", outer, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outer, side, side])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                                          (b2, "b2"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (outer, side, side)


def cnn_conv_model(width: int, inner: int = 16, side: int = 14):
    """The MNIST CNN's second layer alone (benchmarks/mnist.py): Conv 5x5 16 -> w on 14x14, then Relu: the
    width is the layer's output channels only."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    w = (rng.standard_normal((width, inner, 5, 5)) / np.sqrt(25 * inner)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "cnn_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inner, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width, side, side])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.zeros(width, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (inner, side, side)


CASES = {  # name: (builder, widths, quantization)
    "matmul static": (matmul_model, range(112, 145), "static"),
    "matmul dynamic": (matmul_model, range(112, 145), "dynamic"),
    "conv static": (conv_model, range(48, 81), "static"),
    "cnn conv2 static": (cnn_conv_model, range(16, 49), "static"),
}


def sessions(case: str, threads: int, scratch: Path) -> dict:
    import onnxruntime as ort

    from onnxprune.data import Dataset
    from onnxprune.quantize import Quantizer

    build, widths, mode = CASES[case]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    out = {}
    for w in widths:
        model, shape = build(w)
        rng = np.random.default_rng(0)
        calibration = Dataset({"x": np.maximum(rng.standard_normal((64, *shape)), 0).astype(np.float32)}, None)
        quantized = Quantizer(mode, calibration)(model)
        path = scratch / f"{case.replace(' ', '_')}_{w}.onnx"
        path.write_bytes(quantized.SerializeToString())
        out[w] = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), shape)
    return out


def timed(session, feeds: dict, seconds: float) -> float:
    """Median CPU time (s) of runs over about `seconds` (at least 10 runs, after 3 warm-up runs). With one
    intra-op thread onnxruntime computes in the calling thread, so its CPU time is the run's work without
    the time it waited for a core (this machine is shared)."""
    for _ in range(3):
        session.run(None, feeds)
    times, start = [], time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < seconds:
        t0 = time.thread_time()
        session.run(None, feeds)
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def measure(case: str, batch: int, rounds: int, threads: int, seconds: float, scratch: Path) -> dict[int, float]:
    runs = sessions(case, threads, scratch)
    rng = np.random.default_rng(1)
    per_round: dict[int, list[float]] = {w: [] for w in runs}
    for _ in range(rounds):
        for w in rng.permutation(list(runs)):
            session, shape = runs[w]
            feeds = {"x": np.maximum(rng.standard_normal((batch, *shape)), 0).astype(np.float32)}
            per_round[int(w)].append(timed(session, feeds, seconds))
    return {w: statistics.median(t) for w, t in per_round.items()}


def ratios(latency: dict[int, float], m: int) -> list[float]:
    """latency(ceil(k/m)*m) / latency(k) for every k whose rounded-up width was measured."""
    out = []
    for k, t in latency.items():
        up = -(-k // m) * m
        if up in latency:
            out.append(latency[up] / t)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.05, help="timing per width, batch and round")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    import os

    print(f"# {machine()}; load average {os.getloadavg()[0]:.2f} at start; {args.threads} onnxruntime thread(s)")
    print("| layers | batch | widths | aligned to | median ratio | worst ratio | aligned widths vs one below |")
    print("|---|---|---|---|---|---|---|")
    choices = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            medians = {}
            for batch in (1, 64):
                latency = measure(case, batch, args.rounds, args.threads, args.seconds, Path(tmp))
                widths = sorted(latency)
                for m in MULTIPLES:
                    r = ratios(latency, m)
                    steps = [latency[w] / latency[w - 1] for w in widths if w % m == 0 and w - 1 in latency]
                    medians.setdefault(m, []).append(statistics.median(r))
                    print(f"| {case} | {batch} | {widths[0]}-{widths[-1]} | {m} | {statistics.median(r):.3f} | "
                          f"{max(r):.3f} | {', '.join(f'{s:.2f}' for s in steps)} |")
                sys.stdout.flush()
            best = min(max(medians[m]) for m in MULTIPLES)
            smallest = min(m for m in MULTIPLES if max(medians[m]) <= best + TIE)
            choices[case] = smallest if best <= CLEARLY else 0
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")
    for case, m in choices.items():
        print(f"default for {case}: {'align to ' + str(m) if m else 'no alignment (none pays off clearly)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is an int8 convolution with few input channels faster than the float one? The measurement behind
`--quantize static` leaving such convolutions (an image model's stem) in float (onnxprune/quantize.py
FLOAT_STEM_CHANNELS).

    python benchmarks/quantize_stem.py [--rounds 7] [--threads 1]
    python benchmarks/quantize_stem.py --cnn-grid [--rounds 5]   # the MNIST CNN (python benchmarks/mnist.py)

`--cnn-grid`: where the quantized MNIST CNN spends its time. Its weights sliced to every stem width c1 in
{4, 8, 12, 16} and second-convolution width c2 in {8, ..., 32} (dense layer 24 features), quantized as
`--quantize static` does (stem in float), timed against onnxruntime's quantizer on the whole model (stem in
int8): the speed-up at batch 1 and 64 per (c1, c2). The accuracy of such slices means nothing: this is the
latency a pruning to those widths can buy.

One layer, Conv k x k from c input channels to w output channels on a side x side image, then Relu, timed in
float and quantized as `--quantize static` quantizes (onnxruntime's quantizer, QDQ, int8 weights per channel,
uint8 activations, calibrated on random non-negative inputs), at batch 1 and 64, one onnxruntime thread.
Each round times every variant once, in a shuffled order; a variant's latency is the median over rounds of
its per-round median CPU time of the calling thread (see quantize_align.py). For every c the script prints
float / int8 per (k, w, batch): above 1 the int8 layer is faster, below 1 quantizing it costs time; and the
rule it supports: the largest c at which the int8 layer is no faster than float in the median over every
case (the layers of at most that many input channels stay float).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402
from quantize_align import timed  # noqa: E402

sys.path.insert(0, str(ROOT))
CHANNELS_IN = (1, 2, 3, 4, 8, 16)
SHAPES = ((5, 28), (3, 32))           # (kernel, side): the MNIST CNN's stem, an RGB-like 3x3 stem
WIDTHS = (8, 16, 32)


def conv(c: int, w: int, k: int, side: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1000 * c + w)
    weight = (rng.standard_normal((w, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[k // 2] * 4, name="conv"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w, side, side])],
                              [numpy_helper.from_array(weight, "w"),
                               numpy_helper.from_array(np.zeros(w, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (c, side, side)


def latencies(sessions: dict, feeds_of, rounds: int, seconds: float) -> dict:
    """(key, batch) -> the median over `rounds` rounds of each session's median CPU time (`timed`); every
    round times every session once, in a shuffled order. `feeds_of(key, batch, rng)` gives its inputs."""
    rng = np.random.default_rng(1)
    keys = list(sessions)
    out = {}
    for batch in (1, 64):
        per_round = {key: [] for key in keys}
        for _ in range(rounds):
            for i in rng.permutation(len(keys)):
                per_round[keys[i]].append(timed(sessions[keys[i]], feeds_of(keys[i], batch, rng), seconds))
        out.update({(key, batch): statistics.median(t) for key, t in per_round.items()})
    return out


def cnn_grid(rounds: int, threads: int, seconds: float) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from onnxprune.data import Dataset
    from onnxprune.quantize import Quantizer

    cache = Path(__file__).resolve().parent / ".cache"
    if not (cache / "mnist_cnn.onnx").exists():
        raise SystemExit("run python benchmarks/mnist.py first (it builds benchmarks/.cache/mnist_cnn.onnx)")
    base = onnx.load(str(cache / "mnist_cnn.onnx"))
    images = np.load(cache / "mnist_cnn.pool.npz")["image"].astype(np.float32)
    calibration = Dataset({"image": images[:512]}, None)
    convs = [n for n in base.graph.node if n.op_type == "Conv"]
    gemms = [n for n in base.graph.node if n.op_type == "Gemm"]
    if len(convs) != 2 or len(gemms) != 2:
        raise SystemExit("expected the MNIST CNN of benchmarks/mnist.py (2 Conv, 2 Gemm)")

    def sliced(c1: int, c2: int, f: int):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        w1, b1, w2, b2 = (weights[convs[0].input[1]], weights[convs[0].input[2]], weights[convs[1].input[1]],
                          weights[convs[1].input[2]])
        g1, gb1, g2 = weights[gemms[0].input[1]], weights[gemms[0].input[2]], weights[gemms[1].input[1]]
        positions = g1.shape[1] // w2.shape[0]
        new = {convs[0].input[1]: w1[:c1], convs[0].input[2]: b1[:c1], convs[1].input[1]: w2[:c2, :c1],
               convs[1].input[2]: b2[:c2], gemms[0].input[2]: gb1[:f], gemms[1].input[1]: g2[:, :f],
               gemms[0].input[1]: g1.reshape(len(g1), -1, positions)[:f, :c2].reshape(f, c2 * positions)}
        for t in model.graph.initializer:
            if t.name in new:
                t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new[t.name]), t.name))
        del model.graph.value_info[:]
        return model

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    widths1, widths2 = (4, 8, 12, 16), (8, 12, 16, 20, 24, 28, 32)
    models = {"quantized only": Quantizer("static", calibration, quantize_stem=True)(base)}
    for c1 in widths1:
        for c2 in widths2:
            models[(c1, c2)] = Quantizer("static", calibration)(sliced(c1, c2, 24))
    sessions = {k: ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for k, m in models.items()}
    latency = latencies(sessions, lambda key, batch, rng: {"image": images[:batch]}, rounds, seconds)
    print("\nThe MNIST CNN sliced to stem c1 (rows) and conv2 c2 (columns), dense 24, quantized with the stem in "
          "float: speed-up over onnxruntime's quantizer on the whole model, batch 1 / batch 64 (CPU time)\n")
    print("| c1 \\ c2 | " + " | ".join(str(c2) for c2 in widths2) + " |")
    print("|---" * (len(widths2) + 1) + "|")
    for c1 in widths1:
        cells = [f"{latency[('quantized only', b)] / latency[((c1, c2), b)]:.2f}" for c2 in widths2 for b in (1, 64)]
        print(f"| {c1} | " + " | ".join(f"{cells[2 * i]} / {cells[2 * i + 1]}" for i in range(len(widths2))) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.05, help="timing per variant, batch and round")
    parser.add_argument("--cnn-grid", action="store_true", help="the MNIST CNN's widths instead (see above)")
    args = parser.parse_args()
    import onnxruntime as ort

    if args.cnn_grid:
        ort.set_default_logger_severity(3)
        print(f"# {machine()}; {args.rounds} rounds, {args.threads} thread(s)")
        cnn_grid(args.rounds, args.threads, args.seconds)
        return 0

    from onnxprune.data import Dataset
    from onnxprune.quantize import Quantizer

    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    print(f"# {machine()}; {args.rounds} rounds, {args.threads} thread(s)")
    sessions, shapes = {}, {}
    with tempfile.TemporaryDirectory(prefix="onnxprune-stem-") as scratch:
        for c in CHANNELS_IN:
            for k, side in SHAPES:
                for w in WIDTHS:
                    model, shape = conv(c, w, k, side)
                    rng = np.random.default_rng(0)
                    calibration = Dataset({"x": np.maximum(rng.standard_normal((64, *shape)), 0).astype(np.float32)}, None)
                    for kind, m in (("float", model), ("int8", Quantizer("static", calibration, quantize_stem=True)(model))):
                        path = Path(scratch) / f"{c}_{k}_{w}_{kind}.onnx"
                        path.write_bytes(m.SerializeToString())
                        sessions[(c, k, side, w, kind)] = ort.InferenceSession(str(path), options,
                                                                               providers=["CPUExecutionProvider"])
                        shapes[(c, k, side, w, kind)] = shape

        def feeds_of(key, batch, rng):
            return {"x": np.maximum(rng.standard_normal((batch, *shapes[key])), 0).astype(np.float32)}

        latency = latencies(sessions, feeds_of, args.rounds, args.seconds)
    print("\nfloat / int8 latency (above 1: int8 faster), per input channels c; columns (kernel, side, w, batch)\n")
    cases = [(k, side, w, b) for k, side in SHAPES for w in WIDTHS for b in (1, 64)]
    print("| c | " + " | ".join(f"{k}x{k} {s}px w{w} @{b}" for k, s, w, b in cases) + " | median |")
    print("|---" * (len(cases) + 2) + "|")
    medians = {}
    for c in CHANNELS_IN:
        r = [latency[((c, k, s, w, "float"), b)] / latency[((c, k, s, w, "int8"), b)] for k, s, w, b in cases]
        medians[c] = statistics.median(r)
        print(f"| {c} | " + " | ".join(f"{x:.2f}" for x in r) + f" | {medians[c]:.2f} |")
    slow = [c for c in CHANNELS_IN if medians[c] <= 1.0]
    rule = max((c for c in slow if all(medians[d] <= 1.0 for d in CHANNELS_IN if d <= c)), default=0)
    print(f"\nint8 no faster than float in the median up to c = {rule} input channels: "
          f"FLOAT_STEM_CHANNELS = {rule}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

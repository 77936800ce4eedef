"""Does the smaller model run faster? Pruned/original latency against pruned/original FLOPs.

    python benchmarks/latency.py

Goal: at batch 64 the latency gain (1 - latency ratio) reaches at least 80 % of the FLOPs
gain (1 - MACs ratio). Each model is pruned by the default command (budget 0.5 pp, or
cosine >= 0.99 for the encoder's hidden states), then both are timed by `onnxprune bench`
in the same run, alternating, with warm-up excluded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import SAMPLES, encoder_model, machine

import onnxprune
from onnxprune.bench import bench


def compare(name, model, data, out, batch_sizes, **prune_kwargs):
    result = onnxprune.prune(model, data, output=out, force=True, **prune_kwargs)
    rows = bench([model, out], data=data, batch_sizes=batch_sizes, min_seconds=2.0)
    lines = []
    for b in batch_sizes:
        original, pruned = [r for r in rows if r.batch_size == b]
        latency = pruned.p50_ms / original.p50_ms
        flops = pruned.macs_per_sample / original.macs_per_sample
        share = (1 - latency) / (1 - flops) if flops < 1 else float("nan")
        lines.append(f"{name:<30} {b:>5} {original.p50_ms:>9.3f} {pruned.p50_ms:>9.3f} {latency:>8.2f} "
                     f"{flops:>7.2f} {share:>12.0%}")
    return result, lines


def main() -> int:
    print(f"machine: {machine()}")
    print(f"{'model':<30} {'batch':>5} {'orig ms':>9} {'pruned ms':>9} {'latency':>8} {'MACs':>7} "
          f"{'gain reached':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for form in ("gemm", "matmul"):
            _, lines = compare(f"digits MLP ({form})", SAMPLES / f"digits_mlp_{form}.onnx",
                               SAMPLES / "digits_val.npz", tmp / f"{form}.onnx", (1, 64))
            print("\n".join(lines))
        _, lines = compare("digits CNN (--objective macs)", SAMPLES / "digits_cnn.onnx",
                           SAMPLES / "digits_val_images.npz", tmp / "cnn.onnx", (1, 64), objective="macs")
        print("\n".join(lines))
        path, feeds = encoder_model(tmp, n=256)
        _, lines = compare("encoder 6x384, seq 64", path, feeds, tmp / "enc.onnx", (1, 64),
                           mask="attention_mask", min_cosine=0.99, batch_size=32)
        print("\n".join(lines))
    print("gain reached = (1 - latency ratio) / (1 - MACs ratio); goal >= 80 % at batch 64")
    return 0


if __name__ == "__main__":
    sys.exit(main())

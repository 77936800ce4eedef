"""Peak memory of the statistics pass at 1x and 10x the validation data (goal: growth <= 10 %).

    python benchmarks/memory.py

The data is a directory of .npz shards (10,000 samples each, digits images with noise)
streamed shard by shard; each measurement runs in a fresh Python process and reads that
process's peak resident memory (ru_maxrss). For contrast, the same data as one in-memory
.npz is measured too: there the data itself must fit in memory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import SAMPLES, machine

CHILD = r"""
import resource, sys
from onnxprune.api import statistics
stats = statistics(sys.argv[1], sys.argv[2], batch_size=512)
print(sum(s.count for s in stats.values()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_shards(directory: Path, n_shards: int, per_shard: int = 10_000) -> Path:
    directory.mkdir()
    base = np.load(SAMPLES / "digits_val.npz")["input"]
    rng = np.random.default_rng(0)
    for i in range(n_shards):
        x = base[rng.integers(0, len(base), per_shard)] + rng.normal(0, 0.05, (per_shard, 64)).astype(np.float32)
        np.savez(directory / f"shard{i:03d}.npz", input=x.astype(np.float32))
    return directory


def peak_kib(model: Path, data: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(data)], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> int:
    print(f"machine: {machine()}")
    model = SAMPLES / "digits_mlp_gemm.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for label, n in (("1x", 5), ("10x", 50)):
            shards = make_shards(tmp / label, n)
            count, peak = peak_kib(model, shards)
            rows.append((label, n * 10_000, peak))
            merged = tmp / f"{label}.npz"
            np.savez(merged, input=np.concatenate([np.load(p)["input"] for p in sorted(shards.iterdir())]))
            _, peak_npz = peak_kib(model, merged)
            rows[-1] += (peak_npz,)
        print(f"{'data':<5} {'samples':>9} {'peak MiB (shards)':>18} {'peak MiB (one .npz)':>20}")
        for label, n, peak, peak_npz in rows:
            print(f"{label:<5} {n:>9,} {peak / 1024:>18.1f} {peak_npz / 1024:>20.1f}")
        growth = rows[1][2] / rows[0][2] - 1
        print(f"growth of the streamed statistics pass from 1x to 10x: {growth:+.1%} (goal <= 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

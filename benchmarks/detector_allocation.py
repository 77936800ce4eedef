"""How far can any allocation take the wide detector? A greedy one chosen on the judging canvases themselves.

    python benchmarks/detector_allocation.py [--model digit_yolo_wide] [--step 4] [--until 0.3] [--independent-refit]
                                             [--int8]

An upper bound for issue 21's detector goal (20 % fewer MACs with recall and precision >= 99 % against the
original's detections), not a method: starting from the whole wide detector of benchmarks/detector.py
(`digit_yolo_wide`, the same 600 canvases given and 600 unseen), every step tries removing `--step` more
channels from each prunable layer (each layer's lowest by onnxprune's contribution score, compensated
as onnxprune compensates: statistics and sequential refit on the 600 given canvases) and keeps the step
whose min(recall, precision) on the **600 unseen canvases** is highest, fewer MACs breaking ties, until
`--until` of the MACs are gone. Choosing on the data that judges makes every figure optimistic: if
this allocation cannot hold 99 / 99, no allocation the tool could choose honestly would. `--int8` first
prints, for scale, what quantizing the original alone (onnxprune's static int8, nothing removed) does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from models import build, detections, match_counts, subset  # noqa: E402


def main() -> int:
    import onnx
    import onnxruntime as ort

    from onnxprune.bench import macs_per_sample
    from onnxprune.compensate import Compensation, Replay
    from onnxprune.criteria import scores_of
    from onnxprune.data import load_data
    from onnxprune.graph import GraphIndex
    from onnxprune.groups import find_groups
    from onnxprune.rewrite import apply_masks
    from onnxprune.runtime import collect_statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("digit_yolo_wide", "digit_yolo_wide4"), default="digit_yolo_wide",
                        help="models.py's detector twice or four times as wide [digit_yolo_wide]")
    parser.add_argument("--step", type=int, default=4, help="channels removed per step [4]")
    parser.add_argument("--until", type=float, default=0.3, help="stop once this share of the MACs is gone [0.3]")
    parser.add_argument("--independent-refit", action="store_true", help="refit each consumer independently")
    parser.add_argument("--int8", action="store_true", help="first the original quantized alone (static int8)")
    args = parser.parse_args()

    path, pool = build(args.model)
    order = np.random.default_rng(0).permutation(len(pool["image"]))  # the split of detector.py (seed 0, half)
    cut = len(order) // 2
    given, test = subset(pool, order[:cut]), subset(pool, order[cut:])
    model = onnx.load(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def outputs(m):
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"image": test["image"]})[0]

    wanted = detections(outputs(model))
    sample = {"image": test["image"][:1]}
    macs_before = macs_per_sample(model, sample)
    index = GraphIndex(model)
    groups = find_groups(model, index)
    data = load_data({"image": given["image"]}, model)
    passed = collect_statistics(model, groups, data, index=index, grams=True)
    comp = Compensation(model, index, groups, passed.stats, calibration_grams=passed.calibration_grams,
                        fold_grams=passed.fold_grams, tap_stats=passed.tap_stats, replay=Replay(data))
    layers = [g for g in groups if g.prunable and g.id in passed.stats]
    scores = scores_of(comp.evidence, "contribution")
    ranks = {g.id: np.argsort(-scores[g.id], kind="stable") for g in layers}

    def judged(kept: dict[str, int]) -> tuple[float, float, float]:
        masks = {}
        for g in layers:
            masks[g.id] = np.zeros(g.size, bool)
            masks[g.id][ranks[g.id][:kept[g.id]]] = True
        pruned = apply_masks(model, groups, masks, index=index,
                             updates=comp.updates(masks, sequential=not args.independent_refit))
        matched, found, original = match_counts(detections(outputs(pruned)), wanted)
        return matched / original, matched / max(found, 1), 1 - macs_per_sample(pruned, sample) / macs_before

    print(f"machine: {machine()}\n{args.model}: {cut} canvases given, {len(order) - cut} unseen judge and choose "
          f"each step ({sum(len(w[1]) for w in wanted)} original detections); layers "
          + ", ".join(f"{g.id} ({g.size})" for g in layers))
    if args.int8:
        import onnxprune

        quantized = onnxprune.prune(model, {"image": given["image"]}, fraction=0.0, holdout=0, quantize="static",
                                    threads=1).model
        matched, found, original = match_counts(detections(outputs(quantized)), wanted)
        print(f"the original quantized alone (static int8): recall {matched / original:.1%}, precision "
              f"{matched / max(found, 1):.1%}")
    print(f"{'-MACs':>6} {'recall':>7} {'precision':>9}  kept per layer  (step taken)")
    kept, saved, start = {g.id: g.size for g in layers}, 0.0, time.perf_counter()
    while saved < args.until:
        trials = []
        for g in layers:
            if kept[g.id] - args.step >= args.step:
                trial = {**kept, g.id: kept[g.id] - args.step}
                recall, precision, trial_saved = judged(trial)
                trials.append(((min(recall, precision), trial_saved), g.id, trial, recall, precision))
        if not trials:
            break
        (_, saved), layer, kept, recall, precision = max(trials, key=lambda t: t[0])
        print(f"{saved:>6.1%} {recall:>7.1%} {precision:>9.1%}  {[kept[g.id] for g in layers]}  ({layer} "
              f"-{args.step}; {time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

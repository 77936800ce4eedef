"""Whole residual blocks (issue #21, point 3) against neuron-level pruning: fidelity on unseen data against
MACs, at fixed amounts and with the budget search.

    python benchmarks/blocks.py [--fractions 0.05,0.1,0.2,0.3,0.4,0.5,0.6] [--max-drop 1.0]
                                [--objective parameters|macs] [--models vit,resnet,vit6,resnet8]
                                [--no-search | --search-only] [--json FILE]

Four models, all our own code trained on the 597 training images of scikit-learn's digits
(benchmarks/models.py's split; no download), all exported with TorchScript into benchmarks/.cache/:

- "vit": benchmarks/attention.py's ViT (16 patch tokens + class token, 64 wide, 2 post-LayerNorm encoder
  blocks of 4 heads and a 128-wide GELU FFN): 4 residual branches, all removable;
- "vit6": the same with 6 encoder blocks (12 branches), trained the same way;
- "resnet": tests/coupled_models.py's ResNet("basic", 32) on 1x8x8 images (stem, two stages of two basic
  blocks, the second stage downsampling through a 1x1 projection): 3 removable branches, the projected one
  skipped with its reason; trained here (30 epochs, seeded);
- "resnet8": the same with 4 basic blocks per stage (7 removable branches).

Data: the statistics come from the 597 training images (`data`); the 600 pool images of attention.py's split
judge the budget search (`eval_data`, with labels); the other 600 images are the test split, never given to
the tool, on which every figure below is measured: top-1 accuracy with its 95 % Clopper-Pearson interval and
the share of test images whose predicted class stays the original's ("agree").

Configurations (onnxprune's defaults otherwise: contribution criterion, least-squares refit):
- "neurons":          structures neurons,heads (today's default);
- "neurons+blocks":   neurons,heads,blocks: blocks ranked among the neurons (blockselect.py);
- "blocks only":      blocks: whole branches and nothing else.
Fixed amounts: `fraction` of the neurons (a block counting the neurons that go with it), statistics on all
597 training images (--holdout 0). Search: the default budget search (accuracy drop at most --max-drop pp,
95 % upper bound on the 600 pool images), with the time it took. The objective (onnxprune's default,
parameters, or macs) applies to all. Below each table: at each MAC reduction, the best test accuracy any amount of each
configuration reached with at least that reduction (a curve summary; each point was built without the test
split, so picking the best per row flatters all configurations alike).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from attention import CALIBRATION, POOL, build as build_vit  # noqa: E402
from budget import clopper_pearson  # noqa: E402
from common import machine  # noqa: E402

CACHE = HERE / ".cache"
SEED = 0
CONFIGURATIONS = (("neurons", "neurons,heads"), ("neurons+blocks", "neurons,heads,blocks"),
                  ("blocks only", "blocks"))
MAC_STEPS = (0.1, 0.2, 0.3, 0.4, 0.5)


def deep_resnet(blocks: int, width: int = 32):
    """tests/coupled_models.py's ResNet with `blocks` basic blocks per stage instead of 2."""
    from torch import nn

    from coupled_models import Basic, ResNet

    net = ResNet("basic", width, in_channels=1)
    net.stage1 = nn.Sequential(*(Basic(width, width) for _ in range(blocks)))
    net.stage2 = nn.Sequential(Basic(width, 2 * width, 2), *(Basic(2 * width, 2 * width) for _ in range(blocks - 1)))
    return net


def build_resnet(name: str, log=print) -> Path:
    """ResNet("basic", 32) ("resnet": 2 blocks per stage; "resnet8": 4) trained on the 597 training digits (as
    1x8x8 images, 30 epochs), exported with TorchScript."""
    path = CACHE / f"{name}_digits.onnx"
    if path.exists():
        return path
    import torch

    from coupled import train

    log(f"building {path.name} ...")
    data = dict(np.load(CALIBRATION))
    torch.set_num_threads(1)
    start = time.perf_counter()
    torch.manual_seed(SEED)
    from coupled_models import ResNet

    net = ResNet("basic", 32, in_channels=1) if name == "resnet" else deep_resnet(4)
    net = train(net, data["x"].reshape(-1, 1, 8, 8), data["y"], 30, seed=SEED)
    log(f"trained in {time.perf_counter() - start:.1f} s")
    _export(net, data["x"][:2].reshape(-1, 1, 8, 8), path)
    return path


def build_deep_vit(log=print) -> Path:
    """attention.py's ViT with 6 encoder blocks instead of 2, trained the same way."""
    import attention

    path = CACHE / "vit6_digits.onnx"
    if path.exists():
        return path
    log(f"building {path.name} ...")
    data = dict(np.load(CALIBRATION))
    layers = attention.CONFIG["layers"]
    attention.CONFIG["layers"] = 6
    try:
        start = time.perf_counter()
        net = attention.train(attention.vit_digits(), data["x"], data["y"])
        log(f"trained in {time.perf_counter() - start:.1f} s")
    finally:
        attention.CONFIG["layers"] = layers
    _export(net, data["x"][:2], path)
    return path


def _export(net, example: np.ndarray, path: Path) -> None:
    import torch

    CACHE.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(example),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def model_path(name: str) -> Path:
    log = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
    if name == "vit":
        return build_vit(log=log)[0]
    return build_deep_vit(log) if name == "vit6" else build_resnet(name, log)


def datasets(name: str) -> tuple[dict, dict, dict]:
    """(calibration, pool, test): the training images, the pool and the test split, shaped for the model."""
    _, _, test = build_vit(log=lambda *a: print(*a, file=sys.stderr))
    sets = [dict(np.load(CALIBRATION)), dict(np.load(POOL)), test]
    if name.startswith("resnet"):
        sets = [{"x": s["x"].reshape(-1, 1, 8, 8), "y": s["y"]} for s in sets]
    return tuple(sets)


def predictions(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0].argmax(1)


def measure(model, original_predictions: np.ndarray, test: dict, report=None) -> dict:
    from onnxprune.bench import macs_per_sample

    predicted = predictions(model, test["x"])
    k, n = int((predicted == test["y"]).sum()), len(test["y"])
    lo, hi = clopper_pearson(k, n)
    row = {"n": n, "accuracy": k / n, "ci95": [lo, hi], "agree": float((predicted == original_predictions).mean()),
           "macs": macs_per_sample(model, {"x": test["x"][:1]}), "parameters": None, "blocks_removed": 0}
    if report is not None:
        row["parameters"] = report.parameters_after
        row["blocks_removed"] = sum(b["removed"] for b in report.blocks)
        row["neurons_removed"] = report.neurons_removed
    return row


def run_prune(model_path: Path, calibration: dict, structures: str, objective: str, **selection):
    import onnxprune

    start = time.perf_counter()
    result = onnxprune.prune(str(model_path), {"x": calibration["x"], "labels": calibration["y"]},
                             structures=structures, objective=objective, **selection)
    return result, time.perf_counter() - start


def fixed_amounts(model_path, original, sets, fractions, objective) -> dict:
    calibration, _, test = sets
    base = predictions(original, test["x"])
    out = {}
    for label, structures in CONFIGURATIONS:
        rows = []
        for f in fractions:
            print(f"  {label} at {f:.0%} ...", file=sys.stderr)
            result, seconds = run_prune(model_path, calibration, structures, objective, fraction=f, holdout=0)
            rows.append({"fraction": f, "seconds": seconds, **measure(result.model, base, test, result.report)})
        out[label] = rows
    return out


def searched(model_path, original, sets, max_drop, objective) -> dict:
    import onnxprune

    calibration, pool, test = sets
    base = predictions(original, test["x"])
    out = {}
    for label, structures in CONFIGURATIONS[:2]:
        print(f"  budget search, {label} ...", file=sys.stderr)
        start = time.perf_counter()
        result = onnxprune.prune(str(model_path), {"x": calibration["x"], "labels": calibration["y"]},
                                 eval_data={"x": pool["x"], "labels": pool["y"]}, structures=structures,
                                 objective=objective, max_drop=max_drop)
        seconds = time.perf_counter() - start
        out[label] = {"seconds": seconds, "chosen": result.report.chosen,
                      **measure(result.model, base, test, result.report)}
    return out


def table(title: str, original: dict, fixed: dict, search: dict | None) -> str:
    lines = [f"\n{title}", f"original: {original['macs']:,} MACs/sample, test accuracy {original['accuracy']:.2%} "
             f"[{original['ci95'][0]:.2%}, {original['ci95'][1]:.2%}] on {original['n']} test images", "",
             f"{'configuration':<15} {'amount':>7} {'MAC gain':>8} {'param gain':>10} {'blocks':>6} "
             f"{'test accuracy [95% CI]':>26} {'agree':>7} {'seconds':>7}"]

    def line(label, amount, r):
        mac = 1 - r["macs"] / original["macs"] if r["macs"] is not None else float("nan")
        par = 1 - r["parameters"] / original["parameters"] if r.get("parameters") else float("nan")
        return (f"{label:<15} {amount:>7} {mac:>8.1%} {par:>10.1%} {r['blocks_removed']:>6} "
                f"{r['accuracy']:>9.2%} [{r['ci95'][0]:.2%}, {r['ci95'][1]:.2%}] {r['agree']:>7.2%} "
                f"{r['seconds']:>7.1f}")

    for label, rows in fixed.items():
        for r in rows:
            lines.append(line(label, f"{r['fraction']:.0%}", r))
    if search:
        lines.append("")
        for label, r in search.items():
            lines.append(line(label, "search", r) + f"  ({r['chosen'] or 'nothing'})")
    lines += ["", "best test accuracy at >= this MAC gain (fixed amounts):",
              f"{'configuration':<15} " + " ".join(f"{s:>8.0%}" for s in MAC_STEPS)]
    for label, rows in fixed.items():
        cells = []
        for step in MAC_STEPS:
            reached = [r["accuracy"] for r in rows if r["macs"] is not None and 1 - r["macs"] / original["macs"] >= step]
            cells.append(f"{max(reached):>8.2%}" if reached else f"{'-':>8}")
        lines.append(f"{label:<15} " + " ".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.05,0.1,0.2,0.3,0.4,0.5,0.6")
    parser.add_argument("--max-drop", type=float, default=1.0, help="the search's accuracy budget in pp [1.0]")
    parser.add_argument("--objective", choices=("macs", "parameters"), default="parameters",
                        help="what the ranking saves first [parameters: onnxprune's default]")
    parser.add_argument("--models", default="vit,resnet,vit6,resnet8",
                        help="vit, resnet (2 blocks per stage), vit6 (6 encoder blocks), resnet8 (4 per stage)")
    parser.add_argument("--no-search", action="store_true", help="fixed amounts only")
    parser.add_argument("--search-only", action="store_true", help="the budget search only")
    parser.add_argument("--json", dest="json_path", metavar="FILE")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import onnx

    fractions = [float(f) for f in args.fractions.split(",")]
    build_vit(log=lambda *a: print(*a, file=sys.stderr))  # the data splits (and the ViT) on first use
    print(f"machine: {machine()}")
    print(f"objective {args.objective}; statistics on {len(np.load(CALIBRATION)['y'])} training images; search "
          f"judged on {len(np.load(POOL)['y'])} pool images at a {args.max_drop} pp budget")
    results = {}
    for name in args.models.split(","):
        path = model_path(name)
        sets = datasets(name)
        original = onnx.load(str(path))
        base = predictions(original, sets[2]["x"])
        first = measure(original, base, sets[2])
        first["parameters"] = sum(int(np.prod(t.dims)) for t in original.graph.initializer
                                  if t.data_type == onnx.TensorProto.FLOAT)
        print(f"{name}: fixed amounts ...", file=sys.stderr)
        fixed = {} if args.search_only else fixed_amounts(path, original, sets, fractions, args.objective)
        search = None if args.no_search else searched(path, original, sets, args.max_drop, args.objective)
        results[name] = {"original": first, "fixed": fixed, "search": search}
        print(table(f"{name} ({path.name}); test: {first['n']} images never given to the tool", first, fixed, search),
              flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

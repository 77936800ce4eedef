"""Reconstruction where the damage lands (issue 21, point 2): the residual CNN and the ResNeXt-style CNN
pruned at fixed amounts with bias folding only (before) and with the least-squares refit of every
consumer, Conv ones included (after), side by side with onnxsim 0.8.1's structured Wanda pruning with
and without its ridge finetune, at equal MACs.

    python benchmarks/deep.py [--models resnet,resnext] [--fractions 0.1,0.2,...] [--amounts ...]
                              [--objective parameters|macs] [--json out.json]

Both models are our own PyTorch code (tests/coupled_models.py, the sizes of benchmarks/coupled.py: a
basic-block ResNet of width 32 with two stages, and a ResNeXt of two 32 -> 64 (groups 8) -> 32 blocks
and a grouped 3x3 32 -> 48 (groups 4)), trained 30 epochs on 1197 of scikit-learn's digits (8x8) with
fixed seeds. Wide enough to have spare capacity: 99.3-99.7 % on unseen digits.

Data: the statistics (and every decision: Gram matrices, the refit-or-fold choice by cross-fitting on
two folds of them) use the 600 calibration images only (common.digits_sets, `--holdout 0 --fraction F`);
the test accuracy is measured on the 600 images of digits_val.npz, seen by neither training nor pruning,
with a 95 % Wilson interval. onnxsim gets the same 600 calibration images (batches of 64).

Amounts: onnxprune's `--fraction F` removes F of all prunable neurons by one global ranking; onnxsim's
`sparsity` removes that share of each chain it matches. The same number means different models, so
the curves are compared at equal MACs: for each onnxsim point, onnxprune's accuracy at the same MACs
reduction is interpolated linearly between the two onnxprune fractions that bracket it (— where none
does; the interval printed beside an interpolated accuracy is the Wilson interval of that value at
n = 600, a guide only). Fold and refit share the masks at each fraction (the criterion does not depend
on the compensation), so "before" and "after" are at identical cost.

Columns: "fold only (before)" is bias folding, what every Conv consumer and coupled group got before;
"refit (after)" the least-squares refit of every consumer (Conv over im2col patches, per channel block,
coupled groups from each consumer's own tap), each on the original's activations, kept only where it
beats folding out of sample; "refit sequential" the same consumers re-solved in graph order on the
pruned model's own activations (onnxprune's default for models up to 5 M parameters, as these are).
Seconds: wall (CPU) of the whole `prune` call on this shared machine.
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

from common import ROOT, digits_sets, machine

sys.path.insert(0, str(ROOT / "tests"))
warnings.filterwarnings("ignore")

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# before: bias folding only; after: the refit of every consumer, each on the original's activations
# (independent) or in graph order on the pruned model's own (sequential: the default up to 5 M parameters)
COMPENSATIONS = {"fold": dict(compensation="fold"), "refit": dict(compensation="refit", sequential=False),
                 "refit+seq": dict(compensation="refit", sequential=True)}


def trained(which: str, x: np.ndarray, y: np.ndarray):
    """The model, built and trained with fixed seeds (the same weights on every run of this file)."""
    import torch
    from coupled import train
    from coupled_models import ResNet, ResNeXtish

    torch.manual_seed(0)
    net = (ResNet("basic", 32, in_channels=1) if which == "resnet"
           else ResNeXtish(32, 64, 48, cardinality=8, out_groups=4, blocks=2))
    return train(net, x, y, 30)


TITLES = {"resnet": "residual CNN (ResNet-style basic blocks, width 32, 2 stages)",
          "resnext": "ResNeXt-style CNN (2 blocks 32->64 (groups=8)->32, grouped 3x3 32->48 (groups=4))"}


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def accuracy(model, x, y) -> float:
    from conftest import run_model

    return float((run_model(model, {"input": x})[0].argmax(1) == y).mean())


def cost(model, sample: dict) -> tuple[int, int]:
    """Parameters, and MACs per sample with shapes from `sample` (one sample of every graph input)."""
    from onnxprune.bench import macs_per_sample
    from onnxprune.rewrite import parameter_count

    return parameter_count(model), macs_per_sample(model, sample)


def ours(model, cal: dict, test: tuple, fraction: float, compensation: str, objective: str) -> dict:
    import onnxprune

    start, cpu = time.perf_counter(), time.process_time()
    result = onnxprune.prune(model, cal, fraction=fraction, holdout=0, objective=objective,
                             **COMPENSATIONS[compensation])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    methods = [m for g in result.report.groups for m in (g.compensation or [])]
    params, macs = cost(result.model, {"input": test[0][:1]})
    return {"fraction": fraction, "compensation": compensation, "parameters": params, "macs": macs,
            "accuracy": accuracy(result.model, *test), "seconds": seconds, "cpu": cpu, "refit": methods.count("refit"),
            "consumers": sum(m != "none" for m in methods)}


def peer(path: Path, cal: dict, test: tuple, amount: float, tmp: Path) -> list[dict]:
    from peers import onnxsim_prune

    plain, tuned = tmp / "peer.onnx", tmp / "peer_ridge.onnx"
    r = onnxsim_prune(path, {"input": cal["input"]}, amount, True, tuned, unfinetuned_path=plain)
    if not r.get("ok"):
        return [{"amount": amount, "error": r.get("error")}]
    import onnx

    out = []
    for label, p in (("onnxsim", plain), ("onnxsim+ridge", tuned)):
        model = onnx.load(str(p))
        params, macs = cost(model, {"input": test[0][:1]})
        out.append({"amount": amount, "method": label, "parameters": params, "macs": macs,
                    "accuracy": accuracy(model, *test), "seconds": r["seconds"].get("prune", 0)
                    + (r["seconds"].get("finetune", 0) if label.endswith("ridge") else 0)})
    return out


def interpolate(curve: list[dict], reduction: float, base: int, key: str = "macs") -> float | None:
    """Accuracy of `curve` (points with `key` and accuracy) at `reduction` of `base`, linear between the two
    points that bracket it; None outside the measured range."""
    points = sorted(((1 - c[key] / base, c["accuracy"]) for c in curve), key=lambda p: p[0])
    points = [(0.0, None)] if not points else points
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= reduction <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (reduction - x0) / (x1 - x0)
    if points and abs(points[0][0] - reduction) < 1e-9:
        return points[0][1]
    return None


def fmt(p: float | None, n: int) -> str:
    if p is None:
        return f"{'—':>17}"
    lo, hi = wilson(p, n)
    return f"{p:>7.2%} [{lo:.1%},{hi:.1%}]"


def run_model_case(which: str, args, sets, tmp: Path) -> dict:
    import onnx
    from coupled import export

    cal, sel, test = sets
    shape = (1, 8, 8)
    x_train = np.concatenate([cal["input"], sel["input"]]).reshape(-1, *shape)
    y_train = np.concatenate([cal["labels"], sel["labels"]])
    net = trained(which, x_train, y_train)
    path = export(net, cal["input"][:2].reshape(-1, *shape), tmp / f"{which}.onnx")
    model = onnx.load(str(path))
    calibration = {"input": cal["input"].reshape(-1, *shape), "labels": cal["labels"]}
    held = (test["input"].reshape(-1, *shape), test["labels"])
    params0, macs0 = cost(model, {"input": held[0][:1]})
    base = {"parameters": params0, "macs": macs0, "accuracy": accuracy(model, *held)}
    rows = {c: [ours(model, calibration, held, f, c, args.objective) for f in args.fractions]
            for c in COMPENSATIONS}
    peers = [row for a in args.amounts for row in peer(path, calibration, held, a, tmp)]
    return {"model": which, "title": TITLES[which], "original": base, "ours": rows, "peer": peers,
            "calibration": len(cal["labels"]), "test": len(held[1])}


def print_case(case: dict) -> None:
    base, n = case["original"], case["test"]
    print(f"\n{case['title']}\ncalibration: {case['calibration']} digits (statistics, Gram matrices, refit "
          f"decisions); test: digits_val.npz, {n} unseen digits; 95 % Wilson intervals")
    print(f"original: {base['parameters']:,} parameters, {base['macs']:,} MACs/sample, accuracy "
          f"{fmt(base['accuracy'], n).strip()}")
    print(f"\n{'--fraction':>10} {'-params':>8} {'-MACs':>7} {'fold only (before)':>22} {'refit (after)':>22} "
          f"{'refit sequential':>22} {'refit':>7} {'seconds (CPU) fold / refit / seq':>32}")
    for fold, refit, seq in zip(*(case["ours"][c] for c in COMPENSATIONS)):
        seconds = " / ".join(f"{r['seconds']:.1f} ({r['cpu']:.1f})" for r in (fold, refit, seq))
        print(f"{fold['fraction']:>10.2f} {1 - fold['parameters'] / base['parameters']:>8.1%} "
              f"{1 - fold['macs'] / base['macs']:>7.1%} {fmt(fold['accuracy'], n):>22} {fmt(refit['accuracy'], n):>22} "
              f"{fmt(seq['accuracy'], n):>22} {refit['refit']:>3}/{refit['consumers']:<3} {seconds:>32}")
    curves = {label: case["ours"][c] for label, c in zip(("fold", "refit", "refit seq"), COMPENSATIONS)}
    print_peer_table(case["peer"], base, curves, lambda row, value: fmt(value, n))


def print_peer_table(peer_rows: list[dict], base: dict, curves: dict[str, list[dict]], show) -> None:
    """onnxsim's points (with and without its ridge finetune) and onnxprune's curves interpolated at their
    MACs; `show(row, value)` formats a figure (row None for an interpolated one)."""
    peers = {}
    for row in peer_rows:
        peers.setdefault(row["amount"], {})[row.get("method", "error")] = row
    print(f"\nat onnxsim's MACs (onnxprune interpolated between its fractions; — outside them)\n"
          f"{'amount':>6} {'-params':>8} {'-MACs':>7} {'onnxsim':>22} {'onnxsim+ridge':>22} "
          + " ".join(f"{'onnxprune ' + label:>22}" for label in curves))
    for amount, row in peers.items():
        if "error" in row:
            print(f"{amount:>6} FAILED: {row['error']['error']}")
            continue
        plain, tuned = row["onnxsim"], row["onnxsim+ridge"]
        reduction = 1 - plain["macs"] / base["macs"]
        ours = [show(None, interpolate(rows, reduction, base["macs"])) for rows in curves.values()]
        print(f"{amount:>6} {1 - plain['parameters'] / base['parameters']:>8.1%} {reduction:>7.1%} "
              f"{show(plain, plain['accuracy']):>22} {show(tuned, tuned['accuracy']):>22} "
              + " ".join(f"{o:>22}" for o in ours))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,resnext")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    parser.add_argument("--amounts", default=",".join(map(str, AMOUNTS)))
    parser.add_argument("--objective", default="parameters", choices=("parameters", "macs"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",") if f]
    args.amounts = [float(a) for a in args.amounts.split(",") if a]
    import torch

    torch.set_num_threads(1)
    print(f"machine: {machine()}\nobjective: {args.objective}")
    sets = digits_sets()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.models.split(","):
            case = run_model_case(which, args, sets, Path(tmp))
            print_case(case)
            cases.append(case)
    if args.json:
        Path(args.json).write_text(json.dumps({"objective": args.objective, "cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prune more at the same accuracy: parameter reduction reached by each method at a given accuracy drop.

    python benchmarks/methods.py          (needs the test extra: scikit-learn for the digits images)

On the bundled digits MLP (both exported forms), statistics and Gram matrices come from 600
training images (the refit-or-fold decisions cross-fitted on two folds of them), and every
number printed is measured on the 600 held-out images of digits_val.npz, which none of those
steps saw. For each method, a grid of pruning amounts (fractions of all
prunable neurons, lowest scores first) traces its size/accuracy curve on the test images;
the table gives the largest parameter reduction whose test accuracy drop stays within the limit.
"""

from __future__ import annotations

import sys


from common import SAMPLES, digits_sets, machine

from onnxprune.compensate import Compensation, Replay
from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.metrics import Budget
from onnxprune.modelio import load_model
from onnxprune.runtime import collect_statistics, reference_pass
from onnxprune.selection import SelectionConfig, Selector

METHODS = [  # label, criterion, compensation, sequential refit
    ("seed (no fold)", "seed", "none", False),
    ("seed + fold", "seed", "fold", False),
    ("contribution + fold", "contribution", "fold", False),
    ("apoz + fold", "apoz", "fold", False),
    ("contribution + refit", "contribution", "refit", False),
    ("contribution + sequential refit", "contribution", "refit", True),
]
LIMITS = (0.1, 0.5, 1.0)
GRID = [round(0.025 * i, 3) for i in range(39)]


def run(model_name: str) -> dict:
    """Each method's curve on the test images: statistics and Gram matrices from the calibration images
    (the refit decisions cross-fitted on them), every figure on test images none of that saw."""
    model = load_model(SAMPLES / model_name)
    index = GraphIndex(model)
    groups = find_groups(model, index)
    cal, _, test = (load_data(d, model) for d in digits_sets())
    measured = collect_statistics(model, groups, cal, grams=True)
    test_reference = reference_pass(model, test)
    rows, baseline = {}, None
    for label, criterion, compensation, sequential in METHODS:
        config = SelectionConfig(criterion=criterion, compensation=compensation, sequential=sequential,
                                 metric="accuracy", budget=Budget(max_drop=1.0))
        comp = Compensation(model, index, groups, measured.stats, mode=compensation,
                            calibration_grams=measured.calibration_grams, fold_grams=measured.fold_grams,
                            replay=Replay(cal) if sequential else None)
        selector = Selector(comp, test, test_reference, config)
        curve = [selector.at_fraction(f) for f in GRID]
        baseline = curve[0].primary.before
        rows[label] = [max((1 - c.parameters / selector.parameters_before for c in curve
                            if c.primary.loss <= limit + 1e-9), default=0.0) for limit in LIMITS]
    return {"rows": rows, "before": selector.parameters_before, "baseline": baseline}


def main() -> int:
    print(f"machine: {machine()}")
    for name in ("digits_mlp_gemm.onnx", "digits_mlp_matmul.onnx"):
        r = run(name)
        print(f"\n{name}: {r['before']:,} parameters, test accuracy {r['baseline']:.2f} % on 600 held-out images")
        print(f"{'method':<32}" + "".join(f"{'drop <= ' + str(d) + ' pp':>16}" for d in LIMITS))
        for label, values in r["rows"].items():
            print(f"{label:<32}" + "".join(f"{v:>16.1%}" for v in values))
        seed, best = r["rows"]["seed (no fold)"][1], r["rows"]["contribution + sequential refit"][1]
        print(f"ratio at <= 0.5 pp, contribution + sequential refit / seed: {best / seed if seed else float('inf'):.2f}x "
              "(observed test drop along each curve; the honest choice of an amount is benchmarks/budget.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

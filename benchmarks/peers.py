"""The peer that prunes ONNX files directly, onnxsim 0.8.1, run from our benchmarks in its own venv.

Issues 20 and 21 compare onnxprune with onnxsim 0.8.1's structured Wanda pruning, with and without its
layer-wise ridge finetune. It is a peer, not a dependency: it never goes into onnxprune's environment
(it pins its own onnx/onnxruntime/protobuf and is a very large package). Install it once into a venv
of its own:

    python3.11 -m venv /work/peer-venv && /work/peer-venv/bin/pip install onnxsim==0.8.1 onnxruntime numpy

(onnxsim 0.8.1 needs Python >= 3.11; no torch.) Set ONNXSIM_PEER_PYTHON to that venv's python (or to
the venv directory) to use another place. Our benchmarks, under /work/main/.venv, call

    from peers import onnxsim_prune, measure, onnxprune_fraction
    report = onnxsim_prune("model.onnx", {"input": x_cal}, amount=0.25, finetune=True, out_path="peer.onnx")

which runs this same file as a worker in the peer's python (`--worker`; only the standard library,
numpy, onnx and onnxsim are imported there), passing the calibration data through a temporary .npz.

What onnxsim 0.8.1 does (read from its installed source; names are onnxsim's)
--------------------------------------------------------------------------------
- API only, no CLI: `onnxsim --help` has no pruning option. The entry points are
  `onnxsim.apply_structured_wanda_pruning(model, calibration_data, sparsity=0.5, importance_norm="l2",
  epsilon=1e-8, global_sparsity=False)` (onnxsim/pruning.py; since 0.8 a thin alias of
  `onnxsim.onnx_simplifier.apply_structured_wanda_pruning_cpp`, which calls the C++
  `ApplyStructuredWandaPruning` in onnxsim/structured_pruning_entry.cpp) and
  `onnxsim.apply_pruning_finetune(original_model, pruned_model, calibration_data, reg_param=1e-2)`
  (onnxsim/finetune.py, alias of `apply_pruning_finetune_cpp`, C++ `ApplyPruningFinetune` in
  onnxsim/finetune_entry.cpp). The finetune is a separate call: "without finetune" is the first call
  alone.
- Calibration data: a list of batches, each a dict {graph input name: np.ndarray} holding every graph
  input (a missing one raises ValueError "calibration batch is missing required graph input").
  Omitted (None), onnxsim silently uses 8 batches of *random* inputs; an empty list silently falls
  back to weight-magnitude ranking. This module always passes the given data, in batches along axis 0.
- Score: per output channel of a matched chain's producer, ||W_row||_2 * ||X||_2, X the activation
  where the chain enters its consumer, reduced over every axis but the channel axis (the last for
  MatMul/Gemm consumers, axis 1 for Conv).
- Amount (`sparsity`, in [0, 1), else ValueError): the fraction of *each matched chain's* producer
  output channels removed, uniformly per chain, keep = max(1, n - llround(n * sparsity)) (round half
  away from zero: 256 -> 230 at 0.1). Chains it does not match keep every channel, so the fraction of
  all neurons removed is at most `sparsity`. `global_sparsity=True` pools the eligible plain chains
  into one ranking instead (raw activation norms, not scale-normalised; residual/gated/Concat chains
  are then left whole); issue 21's figures used the default, per chain, and so does this module.
  onnxprune's `--fraction` is different: one global fraction of all *prunable* neurons (lowest scores
  first over the whole model). `onnxprune_fraction` converts, and `measure` gives parameters and MACs
  so curves can be matched at equal cost, which is what the issues ask.
- Ops and topologies: a producer MatMul / Gemm (transA=0, alpha=1, beta=1; transB either) / 2-D Conv /
  ConvTranspose with a constant float weight whose output reaches exactly one consumer of the same
  family through single-consumer elementwise hops (unary activations incl. Relu/Gelu/Sigmoid/Tanh/Erf,
  Add/Mul of per-channel constants, Clip, PRelu, LayerNormalization on the last axis, decomposed
  LayerNorm/RMSNorm, depthwise Conv, GroupNorm, ...); gated SwiGLU/GeGLU pairs; residual groups: an
  Add (or SkipLayerNormalization) of two non-constant tensors ties its producers to one channel set,
  fanning out to several consumers; Concat branches are ranked and cut each on its own. Anything else
  is left untouched, silently.
- Gaps seen on our models (see the results below): the C++ port, which is what the Wanda entry point
  runs, does not cross MaxPool (the pure-Python magnitude `onnxsim.pruning.apply_structured_pruning`
  does: on digits_cnn it cuts conv2 32 -> 24, the C++ path leaves it at 32), and no path crosses
  Conv -> Flatten -> Gemm with spatial extent left (only GlobalAveragePool -> Flatten). A decomposed
  erf-GELU (torch's export below opset 20) is matched only as the *first* hop after the producer, so
  MatMul -> Add(bias) -> Div/Erf/Add/Mul -> MatMul is declined: our opset-17 encoder export is not
  pruned at all, the same encoder exported at opset 20 (native Gelu) has its FFNs pruned. Attention
  Q/K/V/O projections are not structured-Wanda chains (heads have their own entry point,
  `apply_attention_head_wanda_pruning`, which cut nothing on our decomposed-attention encoders).
- Finetune: for every MatMul/Gemm node present (by output name and op type) in both models, refits
  W (and a Gemm's bias input; a MatMul's separate bias Add is not refitted) by ridge regression
  min ||X W^T + b - Y||^2 + lam ||[W, b] - [W_pruned, b_pruned]||^2, lam = reg_param * trace(G)/dim,
  X the *original* model's input activation at that node restricted to the kept input channels, Y the
  original layer's output on the kept output channels: one-shot, from the original model only, never
  re-running the pruned one (so it does not correct errors that pruned upstream layers introduce).
  Keep sets are recovered by exact row/column matching, so a layer pruned on both axes (every
  interior layer of a pruned MLP) is skipped; a layer pruned only on its outputs refits to itself
  (X unchanged). In practice it touches the last layer of each pruned chain: the final classifier of
  an MLP, an FFN's down projection. No Conv support. Float32 only. reg_param default 1e-2.
- Failure modes: ValueError for sparsity outside [0, 1) or a calibration batch missing an input;
  unmatched structure is skipped silently (the output may equal the input: `pruned_anything` False);
  random calibration data when none is given (never here); the C++ solve is plain Gaussian
  elimination in double precision.

Results (`python benchmarks/peers.py`, under /work/main/.venv, about 40 s on 2 cores)
-------------------------------------------------------------------------------------
Digits: statistics on 600 training images (common.digits_sets), accuracy on the 600 unseen images
of digits_val.npz. Encoder: common.py's encoder, small (2 layers, hidden 128, 4 heads, FFN 512, vocab
1000, random weights) exported at opset 20; calibration 128 sequences, cosine of mask-mean-pooled
outputs against the original on 128 others. "=--fraction": the onnxprune --fraction that removes as
many neurons (onnxprune_fraction). "peer" without, "+ridge" with the finetune; seconds: prune +
finetune inside onnxsim (each call also pays about 3 s of python start and onnxsim import).

    model              amount parameters  -params =--fraction   -MACs    peer  +ridge   seconds  finetuned
    digits_mlp_gemm         -     58,442                               0.9767   (MACs/sample 57,984)
                          0.1     48,833    16.4%       10.0%   16.5%  0.9717  0.9717 0.02+0.03  -
                         0.25     36,154    38.1%       25.0%   38.2%  0.9650  0.9683 0.02+0.03  6.bias,6.weight
                          0.5     18,986    67.5%       50.0%   67.7%  0.6983  0.7850 0.03+0.03  6.bias,6.weight
    digits_mlp_matmul       -     58,442                               0.9767   (MACs/sample 57,984)
                          0.1     48,833    16.4%       10.0%   16.5%  0.9717  0.9717 0.02+0.04  -
                         0.25     36,154    38.1%       25.0%   38.2%  0.9650  0.9683 0.03+0.03  weights.3
                          0.5     18,986    67.5%       50.0%   67.7%  0.6983  0.7850 0.03+0.03  weights.3
    digits_cnn              -     47,530                               0.9950   (MACs/sample 484,992)
                          0.1     43,796     7.9%        5.6%    8.5%  0.9850  0.9850 0.08+0.23  -
                         0.25     37,970    20.1%       13.9%   17.4%  0.9200  0.9333 0.07+0.19  13.bias,13.weight
                          0.5     28,410    40.2%       27.8%   34.8%  0.1550  0.1850 0.07+0.18  13.bias,13.weight
    encoder (opset 20)      -    527,876                               cosine   (MACs/sample 13,107,200)
                          0.1    501,662     5.0%        8.0%    6.4%  0.9953  0.9997 0.25+4.32  FFN down projections
                         0.25    462,084    12.5%       20.0%   16.0%  0.9870  0.9992 0.26+3.55  FFN down projections
                          0.5    396,292    24.9%       40.0%   32.0%  0.9694  0.9975 0.24+3.27  FFN down projections
    encoder (opset 17) at 0.5: ok True, parameters 527,882 -> 527,882, layers pruned 0

Every output ran in onnxruntime. On the MLPs every layer is cut by `amount` (hence = --fraction); at
0.1 the neurons cut are ones dead on the calibration data, so the finetune has nothing to change. On
the CNN only conv1 (16 channels) and the first Gemm (64) are cut (MaxPool and the spatial Flatten
block conv2 and conv3), so 0.5 removes 27.8 % of onnxprune's neurons and the accuracy collapses; the
finetune refits only the last Gemm, against activations of the unpruned model, which does not repair
the conv1 damage. On the encoder only the FFNs are cut, and refitting each down projection recovers
almost all of it. For comparison, onnxprune at the same neuron fraction (`onnxprune prune --holdout 0
--fraction F`, same 600 calibration images; a one-off, not in this file): digits_mlp_gemm 0.9767 /
0.9783 / 0.9800 at -20.7 / -38.8 / -69.4 % parameters; digits_cnn 0.9950 at -8.8 / -22.0 / -41.8 %
parameters, but only -0.9 / -2.2 / -4.1 % MACs (it cuts conv3's channels, which cost the Gemm's
parameters, where the peer cuts conv1's, which cost MACs): equal parameters and equal MACs are
different comparisons on a CNN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_PEER = "/work/peer-venv"
PEER_VERSION = "0.8.1"
INSTALL = ("python3.11 -m venv /work/peer-venv && "
           "/work/peer-venv/bin/pip install onnxsim==0.8.1 onnxruntime numpy")
LINEAR_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose")


class PeerUnavailable(RuntimeError):
    """The peer's python is missing or cannot import onnxsim."""


def peer_python() -> str:
    """The python of the peer's venv: $ONNXSIM_PEER_PYTHON (an interpreter or a venv directory), else
    /work/peer-venv/bin/python. Raises PeerUnavailable, saying how to install it, when it is missing."""
    given = os.environ.get("ONNXSIM_PEER_PYTHON")
    path = Path(given or DEFAULT_PEER)
    if path.is_dir():
        path = path / "bin" / "python"
    if not path.exists():
        where = f"ONNXSIM_PEER_PYTHON={given}" if given else f"{DEFAULT_PEER} (the default)"
        raise PeerUnavailable(f"onnxsim peer not found: {where}: {path} does not exist. Install it in a venv of its "
                              f"own (never in onnxprune's):\n    {INSTALL}\nor point ONNXSIM_PEER_PYTHON at "
                              "another python that has onnxsim 0.8.1.")
    return str(path)


# ---- shared by both sides (numpy and onnx only) ---------------------------------------------

_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def parameter_count(model) -> int:
    """Elements of every floating-point constant (initializers and Constant nodes): the same count as
    onnxprune's reports (onnxprune.rewrite.parameter_count)."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    return int(sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors if t.data_type in _FLOAT_TYPES))


def linear_widths(model) -> dict[str, list]:
    """Output features of every Gemm/MatMul/Conv/ConvTranspose with a constant weight, by its first
    output's name: {output: [op_type, features]}. Node outputs keep their names through onnxsim's
    pruning, so two models' widths compare by name."""
    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    out = {}
    for node in model.graph.node:
        if node.op_type not in LINEAR_OPS or len(node.input) < 2 or node.input[1] not in consts:
            continue
        dims = list(consts[node.input[1]].dims)
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and len(dims) == 2:
            width = dims[0] if attrs.get("transB") is not None and attrs["transB"].i else dims[1]
        elif node.op_type == "MatMul" and len(dims) >= 2:
            width = dims[-1]
        elif node.op_type == "Conv" and len(dims) >= 3:
            width = dims[0]
        elif node.op_type == "ConvTranspose" and len(dims) >= 3:
            width = dims[1] * (attrs["group"].i if "group" in attrs else 1)
        else:
            continue
        out[node.output[0]] = [node.op_type, int(width)]
    return out


# ---- our side ------------------------------------------------------------------------------

def onnxsim_prune(model_path, calibration: dict[str, np.ndarray], amount: float, finetune: bool, out_path, *,
                  batch_size: int = 64, reg_param: float = 1e-2, global_sparsity: bool = False,
                  unfinetuned_path=None, timeout: float | None = 1800) -> dict:
    """Prune `model_path` with onnxsim 0.8.1's structured Wanda (`sparsity=amount`), then, if `finetune`,
    its ridge finetune; write the result to `out_path`.

    `calibration`: arrays by graph input name, samples along axis 0 (keys that are not graph inputs,
    such as `labels`, are ignored and listed); cut into batches of `batch_size` for onnxsim. With
    `finetune`, `unfinetuned_path` also keeps the model before the finetune (the same pruning: one run
    gives both curves).

    Returns a dict (never raises for the peer's own failures; PeerUnavailable if the peer is missing):
    ok, error (one line) and stderr_tail when not ok; onnxsim_version; amount, finetune, reg_param,
    global_sparsity; samples, batches, ignored_keys; seconds {prune, finetune, subprocess} (prune and
    finetune timed inside the worker, subprocess includes starting python and importing onnxsim,
    about 3 s); parameters_before/after (float constants, as onnxprune counts); widths {node output:
    [op, before, after]} of every linear node; neurons_before/neurons_removed summed over them;
    layers_pruned; finetuned (initializers the finetune changed); pruned_anything; runs (the written
    model runs in onnxruntime on one calibration batch, with run_error otherwise); out_path.
    """
    python = peer_python()
    if not 0 <= amount < 1:
        return {"ok": False, "error": f"amount must be in [0, 1) (onnxsim's sparsity), got {amount}",
                "amount": amount, "finetune": finetune}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxsim-peer-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "calibration.npz", **{k: np.asarray(v) for k, v in calibration.items()})
        args = {"model": str(Path(model_path).resolve()), "calibration": str(tmp / "calibration.npz"),
                "amount": float(amount), "finetune": bool(finetune), "out": str(Path(out_path).resolve()),
                "unfinetuned": str(Path(unfinetuned_path).resolve()) if unfinetuned_path else None,
                "batch_size": int(batch_size), "reg_param": float(reg_param),
                "global_sparsity": bool(global_sparsity), "result": str(tmp / "result.json")}
        (tmp / "args.json").write_text(json.dumps(args))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        try:
            proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", str(tmp / "args.json")],
                                  capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s", "amount": amount, "finetune": finetune,
                    "seconds": {"subprocess": time.perf_counter() - start}}
        result_file = tmp / "result.json"
        if result_file.exists():
            result = json.loads(result_file.read_text())
        else:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            result = {"ok": False, "amount": amount, "finetune": finetune,
                      "error": (lines[-1] if lines else f"worker exited with {proc.returncode}, no result"),
                      "seconds": {}}
        if str(result.get("error", "")).startswith(("ModuleNotFoundError", "ImportError")):
            raise PeerUnavailable(f"{python} cannot run onnxsim ({result['error']}). Install the peer in a venv of "
                                  f"its own:\n    {INSTALL}\nor set ONNXSIM_PEER_PYTHON to a python that has it.")
        if not result.get("ok"):
            result["stderr_tail"] = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        if proc.returncode != 0 and result.get("ok"):
            result.update(ok=False, error=f"worker exited with {proc.returncode}")
    result.setdefault("seconds", {})["subprocess"] = time.perf_counter() - start
    return result


def measure(model_path, feeds: dict[str, np.ndarray] | None = None) -> dict:
    """Parameters and (with `feeds`, samples on axis 0) MACs per sample of a model, as onnxprune reports
    them, for matching curves at equal cost. Runs in our venv (onnxprune.bench.macs_per_sample)."""
    import onnx

    model = onnx.load(str(model_path))
    out = {"parameters": parameter_count(model), "macs_per_sample": None}
    if feeds is not None:
        from onnxprune.bench import macs_per_sample

        names = {i.name for i in model.graph.input}
        out["macs_per_sample"] = macs_per_sample(model, {k: v[:1] for k, v in feeds.items() if k in names})
    return out


def onnxprune_fraction(original_path, pruned_path) -> dict:
    """What onnxsim's output removed, in onnxprune's terms: the fraction of onnxprune's prunable neurons
    it cut (the `--fraction` that removes as many neurons), plus neurons it cut outside them.

    A coupled group (residual Add, gating Mul) counts its shared neurons once, as onnxprune does; a
    Concat group counts each piece. Returns {fraction, removed, prunable, outside, groups_touched}.
    """
    import onnx

    from onnxprune.graph import GraphIndex
    from onnxprune.groups import find_groups
    from onnxprune.modelio import load_model

    model = load_model(original_path)
    groups = find_groups(model, GraphIndex(model))
    after = linear_widths(onnx.load(str(pruned_path)))
    before = linear_widths(model)
    nodes = list(model.graph.node)
    prunable = removed = touched = 0
    attributed = set()
    for g in groups:
        if not g.prunable or not g.size:
            continue
        prunable += g.size
        cut, pieces = 0, set()
        for node, offset, size in g.producers:
            out = nodes[node].output[0]
            attributed.add(out)
            if offset in pieces or out not in after:
                continue
            pieces.add(offset)
            cut += max(0, size - after[out][1])
        removed += cut
        touched += cut > 0
    outside = sum(w - after[o][1] for o, (_, w) in before.items() if o not in attributed and o in after)
    return {"fraction": removed / prunable if prunable else 0.0, "removed": removed, "prunable": prunable,
            "outside": int(outside), "groups_touched": touched}


# ---- the peer's side (run by the peer's python) ----------------------------------------------

def _batches(data: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    n = max((v.shape[0] for v in data.values() if v.ndim), default=0)
    if n == 0:
        return [dict(data)]
    return [{k: (v[i:i + batch_size] if v.ndim and v.shape[0] == n else v) for k, v in data.items()}
            for i in range(0, n, batch_size)]


def _corrupt_initializers(model) -> list[str]:
    """Initializers whose stored values do not fill their declared dims (seen on grouped Convs)."""
    from onnx import helper, numpy_helper

    bad = []
    for t in model.graph.initializer:
        try:
            numpy_helper.to_array(t)
        except ValueError:
            raw = len(t.raw_data) // max(1, helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
            bad.append(f"{t.name} holds {raw} values for dims {list(t.dims)}")
    return bad


def _worker(args_path: str) -> int:
    args = json.loads(Path(args_path).read_text())
    result = {"ok": False, "amount": args["amount"], "finetune": args["finetune"], "reg_param": args["reg_param"],
              "global_sparsity": args["global_sparsity"], "seconds": {}}
    try:
        import onnx
        import onnxsim

        result["onnxsim_version"] = str(getattr(onnxsim, "__version__", "?")).lstrip("v")
        if result["onnxsim_version"] != PEER_VERSION:
            result["note"] = f"onnxsim {result['onnxsim_version']}, not the {PEER_VERSION} the issues compare with"
        original = onnx.load(args["model"])
        inputs = [i.name for i in original.graph.input
                  if i.name not in {t.name for t in original.graph.initializer}]
        stored = np.load(args["calibration"])
        data = {k: stored[k] for k in stored.files if k in inputs}
        result["ignored_keys"] = sorted(k for k in stored.files if k not in inputs)
        calibration = _batches(data, args["batch_size"])
        result["samples"] = int(max((v.shape[0] for v in data.values() if v.ndim), default=0))
        result["batches"] = len(calibration)

        t = time.perf_counter()
        pruned = onnxsim.apply_structured_wanda_pruning(original, calibration_data=calibration,
                                                        sparsity=args["amount"],
                                                        global_sparsity=args["global_sparsity"])
        result["seconds"]["prune"] = time.perf_counter() - t
        out = pruned
        if args["finetune"]:
            if args["unfinetuned"]:
                onnx.save(pruned, args["unfinetuned"])
            t = time.perf_counter()
            out = onnxsim.apply_pruning_finetune(original, pruned, calibration_data=calibration,
                                                 reg_param=args["reg_param"])
            result["seconds"]["finetune"] = time.perf_counter() - t
            corrupt = _corrupt_initializers(pruned)
            if corrupt:
                raise ValueError("onnxsim's pruning wrote a corrupt model: " + "; ".join(corrupt[:3]))
            before = {i.name: i for i in pruned.graph.initializer}
            array = onnx.numpy_helper.to_array
            result["finetuned"] = sorted(i.name for i in out.graph.initializer
                                         if i.name in before and not np.array_equal(array(i), array(before[i.name])))
        corrupt = _corrupt_initializers(out)
        if corrupt:  # onnxsim wrote tensors whose data does not fit their dims: no model to measure
            raise ValueError("onnxsim wrote a corrupt model: " + "; ".join(corrupt[:3]))
        onnx.save(out, args["out"])

        w0, w1 = linear_widths(original), linear_widths(out)
        result["widths"] = {o: [op, w, w1[o][1] if o in w1 else None] for o, (op, w) in w0.items()}
        result["neurons_before"] = sum(w for _, w in w0.values())
        result["neurons_removed"] = sum(w - w1[o][1] for o, (_, w) in w0.items() if o in w1)
        result["layers_pruned"] = sum(1 for o, (_, w) in w0.items() if o in w1 and w1[o][1] < w)
        result["parameters_before"] = parameter_count(original)
        result["parameters_after"] = parameter_count(out)
        result["pruned_anything"] = result["parameters_after"] < result["parameters_before"]
        result["out_path"] = args["out"]
        result["ok"] = True
        try:
            import onnxruntime as ort

            session = ort.InferenceSession(args["out"], providers=["CPUExecutionProvider"])
            session.run(None, calibration[0])
            result["runs"] = True
        except Exception as e:  # the peer wrote a model onnxruntime refuses or cannot run
            result["runs"] = False
            result["run_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    except Exception as e:
        import traceback

        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}"
        traceback.print_exc()
    Path(args["result"]).write_text(json.dumps(result))
    return 0


# ---- the table of the issues' first try: `python benchmarks/peers.py` (our venv) ----------------

def _accuracy(path, data, name) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {name: data[name]})[0].argmax(-1) == data["labels"]).mean())


def _cosine(path, data, reference) -> float:
    import onnxruntime as ort

    o = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, data)[0]
    mask = data["attention_mask"][..., None].astype(np.float64)
    a, b = (o * mask).sum(1) / mask.sum(1), (reference * mask).sum(1) / mask.sum(1)
    return float(np.mean((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


def _encoder(directory, opset=20):
    """The encoder of benchmarks/common.py, small, exported at `opset` (at 20, native Gelu: onnxsim prunes
    its FFNs; at 17, as common.encoder_model exports, it prunes nothing) -- and its data."""
    import torch

    from common import ROOT

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_models import encoder, encoder_inputs, export

    net = encoder(seed=0, vocab=1000, hidden=128, heads=4, ffn=512, layers=2, max_len=32)
    ids, mask = encoder_inputs(n=256, seq=32, vocab=1000, seed=0)
    path = Path(directory) / f"encoder{opset}.onnx"
    with torch.no_grad():
        export(net, (ids[:2], mask[:2]), path, dynamo=False, opset=opset,
               names=(["input_ids", "attention_mask"], ["hidden"]),
               dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    data = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    return path, {k: v[:128] for k, v in data.items()}, {k: v[128:] for k, v in data.items()}


def main(amounts=(0.1, 0.25, 0.5)) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    import onnxruntime as ort

    from common import SAMPLES, digits_sets, machine

    print(machine())
    cal, _, test = digits_sets()
    cases = [("digits_mlp_gemm", "input", cal, test), ("digits_mlp_matmul", "input", cal, test),
             ("digits_cnn", "image", {"image": cal["input"].reshape(-1, 1, 8, 8)},
              {"image": test["input"].reshape(-1, 1, 8, 8), "labels": test["labels"]})]
    header = (f"{'model':<18} {'amount':>6} {'parameters':>10} {'-params':>8} {'=--fraction':>11} {'-MACs':>7} "
              f"{'peer':>7} {'+ridge':>7} {'seconds':>9}  finetuned")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(header)
        for name, key, c, t in cases:
            path = SAMPLES / f"{name}.onnx"
            base = measure(path, {key: t[key]})
            print(_base_row(name, base, f"{_accuracy(path, t, key):.4f}"))
            for amount in amounts:
                print(_row(path, {key: c[key]}, amount, tmp, {key: t[key]}, lambda p: _accuracy(p, t, key), base))
        try:
            path, c, t = _encoder(tmp)
        except Exception as e:  # torch missing: the digits table stands alone
            print(f"encoder skipped: {type(e).__name__}: {e}")
            return 0
        reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, t)[0]
        base = measure(path, t)
        print(_base_row("encoder (opset 20)", base, "cosine"))
        for amount in amounts:
            print(_row(path, c, amount, tmp, t, lambda p: _cosine(p, t, reference), base))
        path, c, _ = _encoder(tmp, opset=17)
        r = onnxsim_prune(path, c, max(amounts), False, tmp / "peer17.onnx")
        print(f"encoder (opset 17) at {max(amounts)}: ok {r.get('ok')}, parameters {r.get('parameters_before'):,} -> "
              f"{r.get('parameters_after'):,}, layers pruned {r.get('layers_pruned')} {r.get('error') or ''}")
    return 0


def _base_row(name, base, metric) -> str:
    return (f"{name:<18} {'-':>6} {base['parameters']:>10,} {'':>8} {'':>11} {'':>7} {metric:>7}   "
            f"(MACs/sample {base['macs_per_sample']:,})")


def _row(path, calibration, amount, tmp, feeds, metric, base) -> str:
    plain, tuned = tmp / "peer.onnx", tmp / "peer_ridge.onnx"
    r = onnxsim_prune(path, calibration, amount, True, tuned, unfinetuned_path=plain)
    if not r.get("ok"):
        return f"{'':<18} {amount:>6} FAILED: {r.get('error')}"
    cost = measure(tuned, feeds)
    frac = onnxprune_fraction(path, tuned)["fraction"]
    cut = 1 - r["parameters_after"] / r["parameters_before"]
    macs = 1 - cost["macs_per_sample"] / base["macs_per_sample"] if cost["macs_per_sample"] else float("nan")
    secs = f"{r['seconds']['prune']:.2f}+{r['seconds'].get('finetune', 0):.2f}"
    return (f"{'':<18} {amount:>6} {r['parameters_after']:>10,} {cut:>8.1%} {frac:>11.1%} {macs:>7.1%} "
            f"{metric(plain):>7.4f} {metric(tuned):>7.4f} {secs:>9}  "
            f"{','.join(r.get('finetuned', [])) or '-'}{'' if r.get('runs') else ' (does not run!)'}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

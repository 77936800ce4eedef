"""Fuzz the command line with spoiled models and data; every case must end in a documented way.

    python benchmarks/fuzz.py [--cases 5000] [--seed 0] [--subprocess-every 250] [--verbose]

Each case takes a valid model (hand-made MLPs, a small CNN, a voice-activity-like model with a
state batched on axis 1 and a scalar input, the bundled digits models), mutates the model file
(truncation, flipped bytes, dropped nodes or initializers, dims, dtypes, attributes, opsets,
dangling inputs, duplicate names, external data) and/or its data (keys, shapes, dtypes, NaN,
labels, corrupt or lying headers, other formats), runs one command on them and requires:

- exit 0 with, for `prune`, an output that passes `onnx.checker.check_model(full_check=True)`
  and runs in onnxruntime; or exit 2/3 with exactly one line on stderr (`Error: ...`);
- never exit 1, never a traceback, never a stray file beside the inputs or in the output
  directory, never a changed input file.

Cases run in-process (click's runner) in a child process, so that a crash in native code is
counted, not fatal; every `--subprocess-every`-th case runs `python -m onnxprune` instead. The
last line printed is the tally: cases run and how many ended each way.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


# ---- base cases: a valid model and data that fits it ----------------------------------------

def mlp(rng, form="gemm", widths=(6, 16, 8, 4)) -> onnx.ModelProto:
    nodes, inits, x = [], [], "input"
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
        if i == 0:
            b[:3] = -1e4  # dead neurons, so that --criterion dead removes something
        y = f"linear{i}"
        if form == "gemm":
            inits += [numpy_helper.from_array(w.T.copy(), f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [y], name=f"gemm{i}", transB=1))
        else:
            inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [y], name=f"add{i}"))
        x = y
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [y], [f"act{i}"], name=f"relu{i}"))
            x = f"act{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", widths[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", widths[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def cnn(rng) -> onnx.ModelProto:
    w1 = (0.3 * rng.standard_normal((8, 1, 3, 3))).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(8)).astype(np.float32)
    b1[:2] = -1e4
    w2 = (0.3 * rng.standard_normal((4, 8, 3, 3))).astype(np.float32)
    wf = (0.3 * rng.standard_normal((4 * 16, 3))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wf"], ["logits"], name="head")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (wf, "wf"))]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def vad(rng) -> onnx.ModelProto:
    """input [N, 32], state [2, N, 16] (batched on axis 1), sr a scalar; outputs [N, 1] and [2, N, 16]."""
    def w(n_out, n_in, name):
        return numpy_helper.from_array((rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32), name)
    b1 = (0.1 * rng.standard_normal(12)).astype(np.float32)
    b1[:2] = -1e4
    inits = [w(12, 32, "W1"), numpy_helper.from_array(b1, "b1"), w(16, 12, "W2"), w(1, 16, "W3"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array(16000.0, np.float32), "rate")]
    nodes = [helper.make_node("Gemm", ["input", "W1", "b1"], ["g1"], name="gemm1", transB=1),
             helper.make_node("Relu", ["g1"], ["h1"], name="relu1"),
             helper.make_node("Gemm", ["h1", "W2"], ["y1"], name="gemm2", transB=1),
             helper.make_node("ReduceSum", ["state", "axis0"], ["s"], name="sum", keepdims=0),
             helper.make_node("Add", ["y1", "s"], ["z"], name="mix"),
             helper.make_node("Tanh", ["z"], ["zt"], name="tanh"),
             helper.make_node("Gemm", ["zt", "W3"], ["logit"], name="gemm3", transB=1),
             helper.make_node("Cast", ["sr"], ["srf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Div", ["srf", "rate"], ["scale"], name="scale"),
             helper.make_node("Mul", ["logit", "scale"], ["output"], name="out"),
             helper.make_node("Unsqueeze", ["zt", "axis0"], ["zt0"], name="u1"),
             helper.make_node("Concat", ["zt0", "zt0"], ["stateN"], name="state_out", axis=0)]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def base_case(kind: str, rng):
    """(model, data arrays, storage) for one kind of base case."""
    n = int(rng.integers(20, 48))
    if kind in ("mlp_gemm", "mlp_matmul", "mlp_external"):
        model = mlp(rng, "matmul" if kind == "mlp_matmul" else "gemm",
                    widths=(6, 80, 8, 4) if kind == "mlp_external" else (6, 16, 8, 4))
        data = {"input": rng.standard_normal((n, 6)).astype(np.float32), "labels": rng.integers(0, 4, n)}
        return model, data, "external" if kind == "mlp_external" else "plain"
    if kind == "cnn":
        return cnn(rng), {"image": rng.standard_normal((n, 1, 4, 4)).astype(np.float32),
                          "labels": rng.integers(0, 3, n)}, "plain"
    if kind == "vad":
        return vad(rng), {"input": rng.standard_normal((n, 32)).astype(np.float32),
                          "state": rng.standard_normal((2, n, 16)).astype(np.float32),
                          "sr": np.array(16000, np.int64)}, "plain"
    if kind == "digits":
        model = onnx.load(str(SAMPLES / "digits_mlp_gemm.onnx"))
        with np.load(SAMPLES / "digits_val.npz") as z:
            start = int(rng.integers(0, 500))
            data = {"input": z["input"][start:start + n], "labels": z["labels"][start:start + n]}
        return model, data, "plain"
    raise ValueError(kind)


BASES = ["mlp_gemm", "mlp_matmul", "mlp_external", "cnn", "vad", "digits"]


# ---- mutations ------------------------------------------------------------------------------

def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def mutate_model(model: onnx.ModelProto, rng) -> str:
    """Change the proto in place; return what was done."""
    g = model.graph
    kind = _pick(rng, ["drop_node", "drop_initializer", "dims", "dtype", "attribute", "opset", "dangling",
                       "duplicate_names", "drop_output", "ir_version", "init_dims", "swap_inputs", "drop_value_type",
                       "domain", "big_opset", "attribute_type"])
    if kind == "drop_node" and len(g.node) > 1:
        del g.node[int(rng.integers(0, len(g.node)))]
    elif kind == "drop_initializer" and g.initializer:
        del g.initializer[int(rng.integers(0, len(g.initializer)))]
    elif kind == "dims":
        value = _pick(rng, list(g.input) + list(g.output))
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            d = dims[int(rng.integers(0, len(dims)))]
            choice = int(rng.integers(0, 4))
            if choice == 0:
                d.Clear()
                d.dim_value = int(rng.integers(0, 9))
            elif choice == 1:
                d.Clear()
                d.dim_param = _pick(rng, ["N", "M", "batch", "x"])
            elif choice == 2:
                d.Clear()
            else:
                value.type.tensor_type.shape.dim.add().dim_value = int(rng.integers(1, 4))
    elif kind == "dtype":
        value = _pick(rng, list(g.input) + list(g.output))
        value.type.tensor_type.elem_type = int(_pick(rng, [TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64,
                                                            TensorProto.INT32, TensorProto.BOOL, TensorProto.STRING,
                                                            TensorProto.UINT8, TensorProto.BFLOAT16, 0, 99]))
    elif kind == "attribute" and g.node:
        node = _pick(rng, list(g.node))
        if node.attribute and rng.random() < 0.5:
            attr = _pick(rng, list(node.attribute))
            if attr.type == onnx.AttributeProto.INT:
                attr.i = int(rng.integers(-3, 4))
            elif attr.type == onnx.AttributeProto.INTS and attr.ints:
                attr.ints[int(rng.integers(0, len(attr.ints)))] = int(rng.integers(-2, 5))
            else:
                node.attribute.remove(attr)
        else:
            node.attribute.append(helper.make_attribute(_pick(rng, ["transA", "transB", "axis", "alpha", "bogus"]),
                                                        int(rng.integers(0, 3))))
    elif kind == "opset":
        model.opset_import[0].version = int(rng.integers(1, 30))
    elif kind == "big_opset":
        model.opset_import[0].version = int(rng.integers(29, 1000))
    elif kind == "dangling" and g.node:
        node = _pick(rng, list(g.node))
        if node.input:
            node.input[int(rng.integers(0, len(node.input)))] = "nowhere"
    elif kind == "duplicate_names":
        for node in g.node:
            node.name = "dense"
    elif kind == "drop_output" and len(g.output):
        del g.output[int(rng.integers(0, len(g.output)))]
    elif kind == "ir_version":
        model.ir_version = int(rng.integers(0, 14))
    elif kind == "init_dims" and g.initializer:
        t = _pick(rng, list(g.initializer))
        if t.dims:
            t.dims[int(rng.integers(0, len(t.dims)))] += int(rng.integers(-1, 2)) or 1
    elif kind == "swap_inputs" and g.node:
        node = _pick(rng, list(g.node))
        if len(node.input) > 1:
            a, b = node.input[0], node.input[1]
            node.input[0], node.input[1] = b, a
    elif kind == "drop_value_type":
        value = _pick(rng, list(g.input) + list(g.output))
        value.type.tensor_type.ClearField("shape")
    elif kind == "domain" and g.node:
        node = _pick(rng, list(g.node))
        node.domain = _pick(rng, ["com.microsoft", "org.example", "ai.onnx.ml"])
        if node.domain == "org.example":
            model.opset_import.append(helper.make_opsetid("org.example", 1))
    elif kind == "attribute_type" and g.node:
        node = _pick(rng, list(g.node))
        node.attribute.append(helper.make_attribute("transB", 1.5))
    return kind


def mutate_bytes(blob: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.5 or len(blob) < 2:
        cut = int(rng.integers(0, max(1, len(blob))))
        return blob[:cut], "truncate"
    out = bytearray(blob)
    for _ in range(int(rng.integers(1, 9))):
        out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    return bytes(out), "flip_bytes"


def mutate_data(data: dict, rng, n_classes: int) -> str:
    keys = [k for k in data if k != "labels"]
    kind = _pick(rng, ["rename_key", "drop_key", "extra_key", "shape", "dtype", "nan", "labels_range",
                       "labels_negative", "labels_float", "labels_onehot", "labels_length", "labels_2d", "empty",
                       "transpose", "scalar_input", "labels_string", "object"])
    key = _pick(rng, keys)
    a = data[key]
    if kind == "rename_key":
        data[key + "_x"] = data.pop(key)
    elif kind == "drop_key":
        del data[key]
    elif kind == "extra_key":
        data["extra"] = rng.standard_normal(3).astype(np.float32)
    elif kind == "shape" and a.ndim:
        axis = int(rng.integers(0, a.ndim))
        data[key] = np.take(a, np.arange(max(0, a.shape[axis] - int(rng.integers(1, 3)))), axis=axis) \
            if rng.random() < 0.5 else np.expand_dims(a, int(rng.integers(0, a.ndim + 1)))
    elif kind == "dtype":
        data[key] = a.astype(_pick(rng, [np.float64, np.float16, np.int64, np.int32, np.bool_, np.uint8]))
    elif kind == "nan" and a.dtype.kind == "f" and a.size:
        b = a.copy()
        b.flat[int(rng.integers(0, b.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
        data[key] = b
    elif kind.startswith("labels") and "labels" in data:
        y = data["labels"]
        if kind == "labels_range":
            y = y.copy()
            y[int(rng.integers(0, len(y)))] = n_classes + int(rng.integers(0, 100))
        elif kind == "labels_negative":
            y = y.copy()
            y[0] = -1
        elif kind == "labels_float":
            y = y.astype(np.float64) + _pick(rng, [0.0, 0.5])
        elif kind == "labels_onehot":
            y = np.eye(n_classes + int(rng.integers(-1, 3)))[np.minimum(y, n_classes - 2)]
        elif kind == "labels_length":
            y = y[:-1]
        elif kind == "labels_2d":
            y = y[:, None].repeat(2, axis=1)
        elif kind == "labels_string":
            y = y.astype(str)
        data["labels"] = y
    elif kind == "empty":
        data[key] = a[:0] if a.ndim else a
    elif kind == "transpose" and a.ndim >= 2:
        data[key] = np.ascontiguousarray(np.swapaxes(a, 0, 1))
    elif kind == "scalar_input":
        data[key] = np.array(1, a.dtype)
    elif kind == "object":
        data[key] = np.array([None] * 3, dtype=object)
    return kind


def corrupt_npz(path: Path, rng) -> str:
    """Spoil an .npz on disk: its zip structure, or an array header that lies about the shape."""
    blob = path.read_bytes()
    choice = int(rng.integers(0, 3))
    if choice == 0:
        path.write_bytes(mutate_bytes(blob, rng)[0])
        return "npz_bytes"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = _pick(rng, sorted(members))
    raw = members[name]
    if choice == 1:  # a header claiming a huge or odd shape
        f = io.BytesIO(raw)
        np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        body = raw[f.tell():]
        out = io.BytesIO()
        claimed = _pick(rng, [(10**6, 10**6), (0,), (-1, 3), tuple(s + 1 for s in shape) or (2,), (2**62, 2**62)])
        try:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                       "fortran_order": fortran, "shape": claimed})
        except Exception:
            out = io.BytesIO(raw[:f.tell()])
        members[name] = out.getvalue() + body
        what = "npz_header_shape"
    else:
        members[name] = raw[:int(rng.integers(0, len(raw)))]
        what = "npz_member_truncated"
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return what


# ---- one case -------------------------------------------------------------------------------

def n_classes_of(model: onnx.ModelProto) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if len(dims) and dims[-1].HasField("dim_value") else 4


def save_model(model, path: Path, storage: str) -> None:
    if storage == "external":
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data",
                        size_threshold=256)
    else:
        onnx.save_model(model, str(path))


def save_data(data: dict, directory: Path, rng) -> tuple[Path, str]:
    form = _pick(rng, ["npz", "npz", "npz", "npy", "shards", "compressed"])
    inputs = [k for k in data if k != "labels"]
    if form == "npy" and len(inputs) == 1:
        path = directory / "data.npy"
        np.save(path, data[inputs[0]])
        return path, form
    if form == "shards":
        shards = directory / "shards"
        shards.mkdir()
        n = len(data[inputs[0]]) if np.ndim(data[inputs[0]]) else 1
        cut = int(rng.integers(1, max(2, n)))
        for i, (lo, hi) in enumerate([(0, cut), (cut, n)]):
            part = {}
            for k, v in data.items():
                if k == "state" and np.ndim(v) == 3:
                    part[k] = v[:, lo:hi]
                elif np.ndim(v) >= 1 and len(v) == n and k != "sr":
                    part[k] = v[lo:hi]
                else:
                    part[k] = v
            np.savez(shards / f"part{i}.npz", **part)
        return shards, form
    path = directory / "data.npz"
    (np.savez_compressed if form == "compressed" else np.savez)(path, **data)
    return path, "npz" if form == "npy" else form


COMMANDS = [
    ["--criterion", "dead"], ["--criterion", "dead"], ["--fraction", "0.3"], ["--fraction", "0.5", "--no-refit"],
    ["--mean-threshold", "0.1", "--std-threshold", "0.4"], ["--grid", "0,0.5"], [],
]


def make_case(index: int, seed: int, root: Path) -> dict:
    rng = np.random.default_rng([seed, index])
    base = _pick(rng, BASES)
    model, data, storage = base_case(base, rng)
    n_classes = n_classes_of(model)
    inputs = root / "in"
    inputs.mkdir()
    out = root / "out"
    out.mkdir()
    model_path = inputs / "model.onnx"
    what = [base]
    roll = rng.random()
    if roll < 0.35:
        what.append(mutate_model(model, rng))
    save_model(model, model_path, storage)
    if 0.35 <= roll < 0.5:
        blob, how = mutate_bytes(model_path.read_bytes(), rng)
        model_path.write_bytes(blob)
        what.append(how)
    if storage == "external" and rng.random() < 0.1:
        (inputs / "model.onnx.data").unlink()
        what.append("external_data_missing")
    if 0.5 <= roll < 0.9 or rng.random() < 0.15:
        what.append(mutate_data(data, rng, n_classes))
    data_path, form = save_data(data, inputs, rng)
    what.append(form)
    if form in ("npz", "compressed") and rng.random() < 0.08:
        what.append(corrupt_npz(data_path, rng))
    command = _pick(rng, ["prune"] * 6 + ["stats", "sweep", "inspect", "bench"])
    if command == "prune":
        extra = _pick(rng, COMMANDS[:-2]) if rng.random() < 0.85 else _pick(rng, COMMANDS[-2:])
        if extra[:1] == ["--grid"]:
            extra = []
        args = ["prune", str(model_path), "--data", str(data_path), "-o", str(out / "pruned.onnx"), "-q", *extra]
        if rng.random() < 0.1:  # an earlier output is in the way: kept without --force, replaced with it
            (out / "pruned.onnx").write_bytes(b"an earlier output")
            if rng.random() < 0.5:
                (out / "pruned.onnx.data").write_bytes(b"its external data")
            if rng.random() < 0.7:
                args.append("--force")
        if rng.random() < 0.1:
            args += ["--eval-data", str(data_path)]
    elif command == "stats":
        args = ["stats", str(model_path), "--data", str(data_path), "-q"]
    elif command == "sweep":
        args = ["sweep", str(model_path), "--data", str(data_path), "-q", "--grid", "0,0.5", "--no-refit"]
    elif command == "inspect":
        args = ["inspect", str(model_path)]
    else:
        args = ["bench", str(model_path), "--data", str(data_path), "--min-seconds", "0", "--batch-sizes", "2"]
    if base == "vad" and command not in ("inspect",) and rng.random() < 0.3:
        args += _pick(rng, [["--batch-axis", "state=1"], ["--constant-input", "sr"], ["--batch-axis", "input=5"],
                            ["--batch-axis", "state"], ["--constant-input", "state"], ["--batch-axis", "nope=0"]])
    if command != "inspect" and rng.random() < 0.1:
        args += _pick(rng, [["--batch-size", "1"], ["--batch-size", "7"]]) if command != "bench" else []
    return {"index": index, "what": what, "command": command, "args": args}


def digest_tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def run_in_process(args: list[str]) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from onnxprune.cli import main

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(main, args, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "Traceback (in-process):\n" + "".join(traceback.format_exception(result.exception))
        return 1, result.stdout, stderr
    return result.exit_code, result.stdout, stderr


def run_subprocess(args: list[str]) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ONNXPRUNE_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, env=env,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def check_output_model(path: Path, data: str) -> str | None:
    """The written model passes the full checker and runs on the case's own data."""
    import onnxruntime as ort

    from onnxprune.data import load_data

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        return f"written model fails the full checker: {str(e).splitlines()[0]}"
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        dataset = load_data(data, onnx.load(str(path), load_external_data=False))
        session.run(None, next(dataset.batches(4)))
    except Exception as e:
        return f"written model does not run: {str(e).splitlines()[0]}"
    return None


def judge(case: dict, root: Path, before: dict, code: int, stdout: str, stderr: str,
          out_before: dict | None = None) -> tuple[str, str | None]:
    """(outcome, problem or None). `out_before`: the output directory's files before the run."""
    out_before = out_before or {}
    outcome = f"exit {code}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback" in stderr or "Traceback" in stdout:
        return "traceback", "traceback: " + stderr[-2000:]
    if code not in (0, 2, 3):
        return outcome, f"exit {code}: {stderr.strip()[-500:]}"
    after = digest_tree(root / "in")
    if after != before:
        return outcome, f"input files changed: {sorted(set(after.items()) ^ set(before.items()))[:4]}"
    produced = sorted(p.name for p in (root / "out").iterdir())
    if code != 0 and out_before:
        if digest_tree(root / "out") != out_before:
            return outcome, f"exit {code} but an earlier output was changed: {produced}"
        produced = []
    if code == 0:
        if case["command"] == "prune":
            expected = {"pruned.onnx", "pruned.onnx.data"}
            if "pruned.onnx" not in produced or not set(produced) <= expected:
                return outcome, f"exit 0 but output directory holds {produced}"
            problem = check_output_model(root / "out" / "pruned.onnx", case["args"][3])
            if problem:
                return outcome, problem
        elif produced:
            return outcome, f"stray files {produced}"
        stray = [line for line in lines if not line.startswith(("warning:", "Warning:"))]
        if case["command"] == "prune" and stray:
            return outcome, f"exit 0 with -q printed on stderr: {stray[:3]}"
        return outcome, None
    if produced:
        return outcome, f"exit {code} but output directory holds {produced}"
    if len(lines) != 1 or not lines[0].startswith("Error: "):
        return outcome, f"exit {code} without exactly one error line: {lines[:5]}"
    if "internal error" in lines[0]:
        return outcome, f"internal error: {lines[0]}"
    return outcome, None


def run_case(index: int, seed: int, subprocess_every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="onnxprune-fuzz-") as tmp:
        root = Path(tmp)
        try:
            case = make_case(index, seed, root)
        except Exception as e:  # a mutation that cannot even be saved is not a case
            return {"index": index, "outcome": "skipped", "problem": None, "what": [f"unsaveable: {e!r}"[:200]]}
        before = digest_tree(root / "in")
        out_before = digest_tree(root / "out")
        via = "subprocess" if subprocess_every and index % subprocess_every == 0 else "in-process"
        start = time.perf_counter()
        code, stdout, stderr = (run_subprocess if via == "subprocess" else run_in_process)(case["args"])
        outcome, problem = judge(case, root, before, code, stdout, stderr, out_before)
        return {"index": index, "outcome": outcome, "problem": problem, "what": case["what"],
                "command": case["command"], "args": [a.replace(tmp, "$TMP") for a in case["args"]],
                "via": via, "seconds": round(time.perf_counter() - start, 3),
                "error": next((line for line in stderr.splitlines() if line.startswith("Error: ")), None)}


# ---- driver: a child process runs the cases, so a native crash is one outcome ----------------

def worker(start: int, stop: int, seed: int, subprocess_every: int) -> None:
    os.environ.pop("ONNXPRUNE_DEBUG", None)
    import warnings

    warnings.filterwarnings("ignore")
    for index in range(start, stop):
        print(json.dumps(run_case(index, seed, subprocess_every)), flush=True)


def fuzz(cases: int, seed: int = 0, subprocess_every: int = 250, start: int = 0, on_result=None) -> list[dict]:
    results: list[dict] = []
    index = start
    while index < start + cases:
        child = subprocess.Popen([sys.executable, __file__, "--worker", str(index), str(start + cases), str(seed),
                                  str(subprocess_every)], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        for line in child.stdout:
            result = json.loads(line)
            results.append(result)
            index = result["index"] + 1
            if on_result:
                on_result(result)
        child.wait()
        if child.returncode != 0 and index < start + cases:  # the case in progress crashed the process
            result = {"index": index, "outcome": "crash", "problem": f"process died ({child.returncode})",
                      "what": []}
            results.append(result)
            if on_result:
                on_result(result)
            index += 1
    return results


def tally(results: list[dict]) -> dict:
    outcomes = Counter(r["outcome"] for r in results)
    return {"cases": len(results), "outcomes": dict(sorted(outcomes.items())),
            "problems": sum(1 for r in results if r["problem"])}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*map(int, sys.argv[2:6]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to replay one: --start I --cases 1)")
    parser.add_argument("--subprocess-every", type=int, default=250)
    parser.add_argument("--verbose", action="store_true", help="print every case")
    parser.add_argument("--json", type=Path, help="write every case's result here (JSON lines)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sink = open(args.json, "w") if args.json else None

    def report(result):
        if sink:
            sink.write(json.dumps(result) + "\n")
            sink.flush()
        if result["problem"] or args.verbose:
            print(f"case {result['index']} {result['outcome']}: {result.get('what')} "
                  f"{result.get('args')}\n    {result['problem'] or result.get('error') or ''}", flush=True)

    results = fuzz(args.cases, args.seed, args.subprocess_every, args.start, on_result=report)
    summary = tally(results)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["seed"] = args.seed
    kinds = Counter(w for r in results for w in r.get("what", [])[1:2])
    print("mutations (first of each case):", dict(sorted(kinds.items())))
    print(json.dumps(summary))
    return 1 if summary["problems"] or summary["outcomes"].get("crash") else 0


if __name__ == "__main__":
    sys.exit(main())

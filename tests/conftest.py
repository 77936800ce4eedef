"""Builders for hand-made test graphs (onnx.helper) and their data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

ACTIVATIONS = {
    "Relu": {},
    "LeakyRelu": {"alpha": 0.1},
    "Sigmoid": {},
    "Tanh": {},
}


def make_mlp(widths, *, form="gemm", trans_b=True, activation="Relu", dead=None, dead_by="bias",
             opset=17, seed=0, batch="N", name="mlp") -> onnx.ModelProto:
    """An MLP: Gemm (transB as given) or MatMul+Add layers, `activation` after every hidden layer.

    `dead` maps a hidden layer index to neuron indices forced dead: by a large negative
    bias (dead_by="bias", exactly zero after Relu/Sigmoid) or by a zero weight column and
    bias (dead_by="zero", exactly zero after Relu/LeakyRelu/Tanh).
    """
    rng = np.random.default_rng(seed)
    dead = dead or {}
    nodes, inits = [], []
    x = "input"
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
        for j in dead.get(i, ()):
            if dead_by == "bias":
                b[j] = -1e4
            else:
                w[:, j] = 0
                b[j] = 0
        y = f"linear{i}"
        if form == "gemm":
            inits += [numpy_helper.from_array(w.T.copy() if trans_b else w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [y], name=f"gemm{i}", transB=int(trans_b)))
        else:
            inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [y], name=f"add{i}"))
        x = y
        if i < len(widths) - 2:
            nodes.append(helper.make_node(activation, [y], [f"act{i}"], name=f"act{i}", **ACTIVATIONS[activation]))
            x = f"act{i}"
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, widths[0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, widths[-1]])],
        inits,
    )
    graph.output[0].name = x
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def random_inputs(model: onnx.ModelProto, n=64, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for v in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else n for d in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.shape.dim[0].HasField("dim_value"):
            dims[0] = n
        out[v.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def run_model(model, feeds: dict) -> list:
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    else:
        model = str(model)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def save(model: onnx.ModelProto, path) -> Path:
    onnx.save_model(model, str(path))
    return Path(path)


@pytest.fixture
def write_npz(tmp_path):
    def write(name="data.npz", **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return write

"""Quantised test models: onnxruntime's own quantizer (QDQ, QOperator, dynamic) on small float models, and the
weight-only int8 form of sentence-transformers' exports (int8 -> Cast -> [Sub zero point] -> Mul scale -> MatMul)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def ort_quantized(model: onnx.ModelProto, feeds: dict, form: str = "qdq", per_channel: bool = True) -> onnx.ModelProto:
    """`model` quantised by onnxruntime.quantization: "qdq" or "qoperator" (static, calibrated on `feeds`)
    or "dynamic"."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(feeds.values())))
            self.batches = iter([{k: v[i:i + 32] for k, v in feeds.items()} for i in range(0, n, 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
        onnx.save_model(model, str(src))
        if form == "dynamic":
            quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
        else:
            fmt = QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator
            quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


def weight_only_int8(model: onnx.ModelProto, *, per_channel: bool = True, zero_point: bool = False
                     ) -> onnx.ModelProto:
    """Every MatMul's constant 2-D weight stored as int8 and dequantised in the graph: Cast -> (Sub zero
    point) -> Mul(scale), the scale per output column (or one for the tensor)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight in inits and len(inits[weight].dims) == 2:
            w = numpy_helper.to_array(inits[weight]).astype(np.float64)
            scale = (np.abs(w).max(axis=0) if per_channel else np.abs(w).max()) / 127.0
            scale = np.where(scale == 0, 1.0, scale)
            zp = np.full(w.shape[1] if per_channel else (), 3, np.int8) if zero_point else None
            q = np.clip(np.rint(w / scale) + (zp if zp is not None else 0), -128, 127).astype(np.int8)
            base = f"{weight}_w8"
            out.graph.initializer.extend([numpy_helper.from_array(q, f"{base}_q"),
                                          numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale")])
            nodes.append(helper.make_node("Cast", [f"{base}_q"], [f"{base}_f"], name=f"{base}_cast", to=TensorProto.FLOAT))
            real = f"{base}_f"
            if zp is not None:
                out.graph.initializer.append(numpy_helper.from_array(zp.astype(np.float32), f"{base}_zp"))
                nodes.append(helper.make_node("Sub", [real, f"{base}_zp"], [f"{base}_c"], name=f"{base}_sub"))
                real = f"{base}_c"
            nodes.append(helper.make_node("Mul", [real, f"{base}_scale"], [f"{base}_w"], name=f"{base}_mul"))
            node.input[1] = f"{base}_w"
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {x for n in out.graph.node for x in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def small_cnn(silenced=(1, 4), channels=(8, 16), seed=0, batch="N") -> onnx.ModelProto:
    """image [N, 3, 8, 8] -> Conv 3x3 -> Relu -> Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits
    [N, 5]; the first Conv's `silenced` channels have zero filters and a negative bias: exactly zero after Relu."""
    rng = np.random.default_rng(seed)
    c1, c2 = channels
    w1 = (rng.standard_normal((c1, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(c1)).astype(np.float32)
    w1[list(silenced)] = 0
    b1[list(silenced)] = -1.0
    w2 = (rng.standard_normal((c2, c1, 3, 3)) * 0.2).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(c2)).astype(np.float32)
    w3 = (rng.standard_normal((5, c2)) * 0.3).astype(np.float32)
    b3 = np.zeros(5, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"),
                                                        (b3, "b3"))]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def images(n=96, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)

"""A voice-activity-detector-like model built by hand: inputs not all batched on axis 0.

input [N, 512] (frames), state [2, N, 128] (recurrent state: samples on axis 1) and sr
(a scalar sample rate given once for all samples); outputs output [N, 1] and stateN
[2, N, 128]. Two prunable groups: Gemm 512->64 -> Relu -> Gemm 64->128, and Gemm 128->32
-> Relu -> Gemm 32->1; `dead` first-layer neurons never fire.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_vad(*, dead=(0, 5, 9), state_batch="N", sr_shape=(), opset=17, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(n_out, n_in, name):
        return numpy_helper.from_array((rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32), name)

    b1 = (0.1 * rng.standard_normal(64)).astype(np.float32)
    b1[list(dead)] = -1e4
    inits = [weight(64, 512, "W1"), numpy_helper.from_array(b1, "b1"), weight(128, 64, "W2"),
             numpy_helper.from_array(np.zeros(128, np.float32), "b2"), weight(32, 128, "W3"),
             numpy_helper.from_array((0.1 * rng.standard_normal(32)).astype(np.float32), "b3"),
             weight(1, 32, "W4"), numpy_helper.from_array(np.zeros(1, np.float32), "b4"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array(16000.0, np.float32), "rate")]
    nodes = [
        helper.make_node("Gemm", ["input", "W1", "b1"], ["g1"], name="gemm1", transB=1),
        helper.make_node("Relu", ["g1"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "W2", "b2"], ["y1"], name="gemm2", transB=1),
        helper.make_node("ReduceSum", ["state", "axis0"], ["s"], name="state_sum", keepdims=0),
        helper.make_node("Add", ["y1", "s"], ["z"], name="mix"),
        helper.make_node("Tanh", ["z"], ["zt"], name="tanh"),
        helper.make_node("Gemm", ["zt", "W3", "b3"], ["g3"], name="gemm3", transB=1),
        helper.make_node("Relu", ["g3"], ["h3"], name="relu3"),
        helper.make_node("Gemm", ["h3", "W4", "b4"], ["logit"], name="gemm4", transB=1),
        helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid"),
        helper.make_node("Cast", ["sr"], ["srf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "rate"], ["scale"], name="scale"),
        helper.make_node("Mul", ["p", "scale"], ["output"], name="out"),
        helper.make_node("Unsqueeze", ["zt", "axis0"], ["zt0"], name="u1"),
        helper.make_node("Unsqueeze", ["y1", "axis0"], ["y10"], name="u2"),
        helper.make_node("Concat", ["zt0", "y10"], ["stateN"], name="new_state", axis=0),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 512]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, state_batch, 128]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, list(sr_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 128])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def vad_data(n=60, seed=1, sr_shape=()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((n, 512)).astype(np.float32),
            "state": (0.5 * rng.standard_normal((2, n, 128))).astype(np.float32),
            "sr": np.full(sr_shape, 16000, np.int64)}

"""Constant views through dequantisation (onnxprune/graph/dequant.py): the stored integers, and the scales and zero
points that run along each axis."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_model
from onnxprune.graph import GraphIndex
from onnxprune.graph.edits import fold_into_dequantized, real_value

RNG = np.random.default_rng(0)
Q = RNG.integers(-100, 100, (6, 4)).astype(np.int8)


def reader(nodes, inits, weight="w", opset=21):
    """x [N, 6] -> MatMul(x, weight) -> y, the weight made by `nodes` from `inits`."""
    nodes = nodes + [helper.make_node("MatMul", ["x", weight], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def real_weight(model):
    """The weight the MatMul reads, as onnxruntime computes it (x = identity)."""
    return run_model(model, {"x": np.eye(6, dtype=np.float32)})[0]


FORMS = {
    "dq per column": ([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=1)],
                      {"q": Q, "s": RNG.uniform(0.01, 0.1, 4).astype(np.float32), "z": np.int8([1, -2, 0, 3])},
                      [(1, 0)]),
    "dq per tensor": ([helper.make_node("DequantizeLinear", ["q", "s"], ["w"])], {"q": Q, "s": np.float32(0.05)}, []),
    "cast sub mul": ([helper.make_node("Cast", ["q"], ["f"], to=TensorProto.FLOAT),
                      helper.make_node("Sub", ["f", "z"], ["c"]), helper.make_node("Mul", ["s", "c"], ["w"])],
                     {"q": Q, "z": np.float32([[1, 2, 0, -1]]), "s": RNG.uniform(0.01, 0.1, (1, 4)).astype(np.float32)},
                     [(1, 1)]),
    "cast mul per row": ([helper.make_node("Cast", ["q"], ["f"], to=TensorProto.FLOAT),
                          helper.make_node("Mul", ["f", "s"], ["w"])],
                         {"q": Q, "s": RNG.uniform(0.01, 0.1, (6, 1)).astype(np.float32)}, [(0, 0)]),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_view_sees_the_integers_and_their_real_values(form):
    nodes, inits, scale_axes = FORMS[form]
    model = reader(nodes, inits)
    index = GraphIndex(model)
    assert index.view(len(nodes), 1) is None  # without asking: not a constant, as before
    view = index.view(len(nodes), 1, dequantized=True)
    assert view.name == "q" and view.shape == (6, 4) and view.dequant
    np.testing.assert_allclose(index.view_value(view), real_weight(model), rtol=1e-5, atol=1e-6)
    assert index.view_dtype(view) == np.float32
    scale = next(c for c in view.dequant if c.role == "scale")
    assert [(a, m) for a, m in scale.axes] == scale_axes


def test_transposes_above_the_dequantisation_are_followed_but_not_below():
    above = reader([helper.make_node("DequantizeLinear", ["q", "s"], ["d"]),
                    helper.make_node("Transpose", ["d"], ["w"], perm=[1, 0])], {"q": Q.T.copy(), "s": np.float32(0.1)})
    view = GraphIndex(above).view(2, 1, dequantized=True)
    assert view is not None and view.axes == (1, 0)
    np.testing.assert_allclose(GraphIndex(above).view_value(view), real_weight(above), rtol=1e-5, atol=1e-6)
    below = reader([helper.make_node("Transpose", ["q"], ["t"], perm=[1, 0]),
                    helper.make_node("DequantizeLinear", ["t", "s"], ["w"])], {"q": Q.T.copy(), "s": np.float32(0.1)})
    assert GraphIndex(below).view(2, 1, dequantized=True) is None


def test_forms_that_do_not_line_up_are_not_followed():
    blocked = reader([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=2)],
                     {"q": Q, "s": np.full((3, 4), 0.1, np.float32)})
    assert GraphIndex(blocked).view(1, 1, dequantized=True) is None
    float_times_scale = reader([helper.make_node("Mul", ["f", "s"], ["w"])],
                               {"f": Q.astype(np.float32), "s": np.float32(0.1)})
    assert GraphIndex(float_times_scale).view(1, 1, dequantized=True) is None  # no integers: not quantised
    widening = reader([helper.make_node("Cast", ["q"], ["f"], to=TensorProto.FLOAT),
                       helper.make_node("Mul", ["f", "s"], ["w"])], {"q": Q, "s": np.full((2, 6, 4), 0.1, np.float32)})
    assert GraphIndex(widening).view(2, 1, dequantized=True) is None


def test_a_bias_change_moves_the_integers_of_a_dequantised_bias():
    scale = np.float32([0.01, 0.02, 0.05])
    nodes = [helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0)]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(np.int32([100, -50, 7]), "bq"),
                               numpy_helper.from_array(scale, "bs")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    before = real_value(model, "b")
    delta = np.array([0.1, -0.2, 0.05])
    assert fold_into_dequantized(model, "b", delta, {"bq", "bs", "b"}) == "bq"
    after = real_value(model, "b")
    np.testing.assert_allclose(after - before, delta, atol=scale.max() / 2 + 1e-7)
    assert model.graph.node[0].input[0] != "bq"
    small = np.int8([120])
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["q8", "s8"], ["c"])], "g", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(small, "q8"), numpy_helper.from_array(np.float32(1.0), "s8")])
    overflow = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    assert fold_into_dequantized(overflow, "c", np.array([20.0]), set()) is None  # 140 does not fit int8
    onnx.checker.check_model(model)

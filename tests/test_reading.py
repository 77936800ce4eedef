"""What consumers multiply (onnxprune/reading.py, ops/window.py): im2col patches that reproduce onnxruntime's
Conv, Gram matrices that merge across shards and folds, and the memory caps."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.ops import LINEAR
from onnxprune.reading import Reading, ReadingGrams, consumer_readings, plan_grams
from onnxprune.refit import Gram
from onnxprune.runtime import Shard, collect_statistics
from conftest import run_model

RNG = np.random.default_rng(3)

# (input spatial, channels in, channels out, attributes): strides, padding, dilation, auto_pad, groups, 1-D
WINDOWS = [
    ((7, 7), 4, 6, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ((8, 9), 4, 6, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2])),
    ((9, 9), 4, 6, dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((7, 8), 4, 6, dict(kernel_shape=[2, 3], strides=[2, 1], auto_pad="SAME_UPPER")),
    ((7, 8), 4, 6, dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    ((6, 6), 4, 6, dict(kernel_shape=[3, 3], auto_pad="VALID")),
    ((7, 7), 6, 4, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)),
    ((7, 7), 4, 8, dict(kernel_shape=[1, 1], strides=[2, 2], group=4)),
    ((11,), 4, 6, dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
]


def conv_model(spatial, c_in, c_out, attrs):
    k, groups = attrs["kernel_shape"], attrs.get("group", 1)
    w = RNG.standard_normal((c_out, c_in // groups, *k)).astype(np.float32)
    b = RNG.standard_normal(c_out).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", "b"], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["N", c_in, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, w, b


@pytest.mark.parametrize("spatial,c_in,c_out,attrs", WINDOWS)
def test_patches_times_the_weight_matrix_is_the_conv(spatial, c_in, c_out, attrs):
    """Z W + b over the im2col rows, block by block, is onnxruntime's Conv output."""
    model, w, b = conv_model(spatial, c_in, c_out, attrs)
    x = RNG.standard_normal((3, c_in, *spatial)).astype(np.float32)
    y = run_model(model, {"x": x})[0]
    node, spec = model.graph.node[0], LINEAR["Conv"]
    window, groups = spec.window(node, w.shape), attrs.get("group", 1)
    reading = Reading("x", c_in, 1, groups, window.size, window)
    z, matrix = reading.rows(x).astype(np.float64), spec.matrix(node, w.astype(np.float64))
    per_out, width = c_out // groups, reading.block_features
    out = np.concatenate([z[..., g * width:(g + 1) * width] @ matrix[:, g * per_out:(g + 1) * per_out]
                          for g in range(groups)], axis=-1) + b
    np.testing.assert_allclose(out, y.reshape(3, c_out, -1).transpose(0, 2, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(spec.from_matrix(node, matrix, w.shape), w)


def chain_model(consumer_attrs=None, flatten=False):
    """x [N, 3, 7, 7] -> Conv a (3 -> 6, 3x3, pad 1) -> Relu -> Conv b (6 -> 5, `consumer_attrs`) or Flatten -> Gemm."""
    wa = (RNG.standard_normal((6, 3, 3, 3)) / 5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "Wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["t"], name="relu")]
    inits = [numpy_helper.from_array(wa, "Wa"),
             numpy_helper.from_array(RNG.standard_normal(6).astype(np.float32), "ba")]
    if flatten:
        nodes += [helper.make_node("Flatten", ["t"], ["f"], name="flatten", axis=1),
                  helper.make_node("Gemm", ["f", "Wb", "bb"], ["y"], name="consumer", transB=1)]
        inits.append(numpy_helper.from_array(RNG.standard_normal((5, 6 * 49)).astype(np.float32) / 10, "Wb"))
    else:
        attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], **(consumer_attrs or {})}
        groups = attrs.get("group", 1)
        inits.append(numpy_helper.from_array(RNG.standard_normal((6, 6 // groups, *attrs["kernel_shape"]))
                                             .astype(np.float32) / 5, "Wb"))
        nodes.append(helper.make_node("Conv", ["t", "Wb", "bb"], ["y"], name="consumer", **attrs))
    inits.append(numpy_helper.from_array(RNG.standard_normal(len(numpy_helper.to_array(inits[-1])))
                                         .astype(np.float32), "bb"))
    out = ["N", 5] if flatten else ["N", 6, "H", "W"]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 7, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_readings_say_what_each_consumer_multiplies():
    model = chain_model(dict(strides=[2, 2], group=2))
    index = GraphIndex(model)
    (r,) = consumer_readings(index, find_groups(model, index)).values()
    assert (r.tap, r.channels, r.blocks, r.repeat, r.block_features) == ("t", 6, 2, 9, 27)
    assert r.block_keys() == [f"{r.key} #0", f"{r.key} #1"] and r.key.startswith("t [conv k3x3 s2x2")
    flat = chain_model(flatten=True)
    (f,) = consumer_readings(GraphIndex(flat), find_groups(flat)).values()
    assert f.flatten and f.repeat == 49 and f.block_features == 6 * 49
    one = chain_model(dict(kernel_shape=[1, 1], pads=[0, 0, 0, 0]))
    (p,) = consumer_readings(GraphIndex(one), find_groups(one)).values()
    assert p.key == "t" and p.window is None and p.axis == -3  # a 1x1 Conv reads positions, as a MatMul


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2]), dict(group=3)])
def test_grams_of_two_shards_add_up_to_the_whole_pass(attrs):
    """Cross-fitting measures each fold apart and merges: Gram matrices (and their folds) add exactly."""
    model = chain_model(attrs)
    groups = find_groups(model)
    x = RNG.standard_normal((37, 3, 7, 7)).astype(np.float32)
    whole = collect_statistics(model, groups, load_data({"x": x}, model), grams=True, batch_size=8)
    first = collect_statistics(model, groups, load_data({"x": x[:20]}, model), grams=True, batch_size=8)
    second = collect_statistics(model, groups, load_data({"x": x[20:]}, model), grams=True, batch_size=16,
                                shard=Shard(offset=20))
    merged = first.merge(second)
    assert set(merged.calibration_grams) == set(whole.calibration_grams) and len(whole.calibration_grams) == \
        attrs.get("group", 1)
    for grams in ("calibration_grams", "fold_grams"):
        for key, gram in getattr(whole, grams).items():
            other = getattr(merged, grams)[key]
            assert other.count == gram.count
            np.testing.assert_allclose(other.matrix, gram.matrix, rtol=1e-5, atol=1e-3)
    cal = whole.calibration_grams[next(iter(whole.calibration_grams))]
    assert cal.count == 37 * 16 if "strides" in attrs else 37 * 49  # rows: samples x output positions


def test_reading_grams_equal_a_gram_of_the_patches():
    reading = Reading("t", 4, 1, 1, 9, LINEAR["Conv"].window(helper.make_node("Conv", ["t", "W"], ["y"], pads=[1] * 4),
                                                            (2, 4, 3, 3)))
    x = RNG.standard_normal((10, 4, 5, 5)).astype(np.float32)
    second = np.arange(10) % 2 == 1
    both, fold = ReadingGrams(reading).update(x, second).grams()[reading.key]
    z = reading.rows(x)
    np.testing.assert_allclose(both.matrix, Gram(36).update(z).matrix, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(fold.matrix, Gram(36).update(z[second]).matrix, rtol=1e-5, atol=1e-3)


def test_memory_caps_leave_the_largest_readings_without_a_gram():
    small, wide = Reading("a", 8), Reading("b", 8, 1, 1, 9, LINEAR["Conv"].window(
        helper.make_node("Conv", ["b", "W"], ["y"]), (8, 8, 3, 3)))
    kept, notes = plan_grams([small, wide], max_features=50)
    assert list(kept) == ["a"] and "MAX_GRAM_FEATURES" in notes[wide.key] and "72 columns" in notes[wide.key]
    kept, notes = plan_grams([wide, small], max_bytes=small.gram_bytes() + 10)
    assert list(kept) == ["a"] and "MAX_GRAM_BYTES" in notes[wide.key]
    assert plan_grams([small, wide])[1] == {}


def test_a_capped_pass_keeps_no_gram_for_the_capped_reading(monkeypatch):
    import onnxprune.reading as reading

    model = chain_model()
    groups = find_groups(model)
    data = load_data({"x": RNG.standard_normal((6, 3, 7, 7)).astype(np.float32)}, model)
    assert collect_statistics(model, groups, data, grams=True).calibration_grams
    monkeypatch.setattr(reading, "MAX_GRAM_FEATURES", 53)  # the consumer multiplies 6 x 9 = 54 columns
    assert not collect_statistics(model, groups, data, grams=True).calibration_grams

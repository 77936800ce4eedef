"""Per-op specs: the linear-op registry, ConvTranspose, unique group ids and structured skip reasons."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.ops import LINEAR, NotPrunable, Skip, linear, linear_spec
from onnxprune.ops.linear import LinearSpec
from conftest import make_mlp, random_inputs, run_model

RNG = np.random.default_rng(3)


def test_every_linear_op_has_one_spec_and_a_second_registration_is_refused():
    assert set(LINEAR) >= {"Gemm", "MatMul", "Conv", "ConvTranspose"}
    with pytest.raises(ValueError, match="already registered"):
        linear("Gemm")(type("Again", (LinearSpec,), {}))
    assert linear_spec(helper.make_node("Gemm", ["a", "b"], ["c"], domain="com.example")) is None


@pytest.mark.parametrize("trans_b,alpha", [(0, 1.0), (1, 1.0), (1, 0.5)])
def test_gemm_matrix_round_trips_its_layout(trans_b, alpha):
    node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=trans_b, alpha=alpha)
    w = RNG.standard_normal((3, 5))
    spec = linear_spec(node)
    m = spec.matrix(node, w)
    assert m.shape == ((5, 3) if trans_b else (3, 5))
    np.testing.assert_allclose(spec.from_matrix(node, m), w)


def test_skip_reads_as_its_message_and_carries_where():
    skip = NotPrunable("tensor 'r' is a graph output", "graph-output", tensor="r").skip
    assert isinstance(skip, Skip) and "graph output" in skip and str(skip) == "tensor 'r' is a graph output"
    assert skip.to_dict() == {"kind": "graph-output", "message": "tensor 'r' is a graph output", "node": None,
                              "tensor": "r"}


def test_groups_and_skips_survive_pickling():
    import pickle

    groups = onnxprune.inspect(make_mlp([4, 6, 3]))
    back = pickle.loads(pickle.dumps(groups))
    assert back[-1].reason.to_dict() == groups[-1].reason.to_dict() and back[0].slices == groups[0].slices
    e = pickle.loads(pickle.dumps(NotPrunable("m", "kind", "n", "t")))
    assert e.skip.to_dict() == {"kind": "kind", "message": "m", "node": "n", "tensor": "t"}


def test_inspect_json_shows_structured_skips():
    g = onnxprune.inspect(make_mlp([4, 6, 3]))[-1]
    d = g.to_dict()
    assert d["skip"]["kind"] == "graph-output" and d["skip"]["tensor"] == g.reason.tensor
    assert d["reason"] == str(g.reason)
    json.dumps(d)


def same_names(model, name="layer"):
    for node in model.graph.node:
        node.name = name
    return model


def test_repeated_node_names_give_unique_ids():
    model = same_names(make_mlp([5, 7, 4, 2]))
    model.graph.node[-1].name = "Gemm#0"  # a literal name that looks like a generated id
    ids = [g.id for g in onnxprune.inspect(model)]
    assert len(set(ids)) == 3 and ids[0] == "layer#0"


def test_groups_without_node_names_keep_their_own_statistics_and_masks():
    # onnxruntime refuses repeated non-empty names, but accepts (and exporters write) empty ones
    dead = {0: {1, 4}, 1: {0}}
    model = same_names(make_mlp([5, 7, 4, 2], dead=dead), "")
    groups = onnxprune.inspect(model)
    ids = [g.id for g in groups]
    assert ids == ["Gemm#0", "Gemm#2", "Gemm#4"]
    feeds = random_inputs(model, n=40)
    result = onnxprune.prune(model, feeds, criterion="dead")
    assert set(result.stats) == {groups[0].id, groups[1].id}
    assert [len(result.stats[i].mean) for i in ids[:2]] == [7, 4]
    assert [(g.neurons_before, g.neurons_after) for g in result.report.groups[:2]] == [(7, 5), (4, 3)]
    for before, after in zip(run_model(model, feeds), run_model(result.model, feeds)):
        np.testing.assert_allclose(after, before, atol=1e-5)


def conv_transpose_model():
    """Conv -> Relu -> ConvTranspose(stride 2) -> Relu -> Conv: both transposed-conv roles."""
    w1 = (RNG.standard_normal((6, 2, 3, 3)) / 4).astype(np.float32)
    b1 = (0.1 * RNG.standard_normal(6)).astype(np.float32)
    b1[[1, 4]] = -1e4
    wt = (RNG.standard_normal((6, 5, 2, 2)) / 4).astype(np.float32)  # [C_in, C_out, k, k]
    bt = (0.1 * RNG.standard_normal(5)).astype(np.float32)
    bt[2] = -1e4
    w3 = (RNG.standard_normal((3, 5, 1, 1)) / 4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("ConvTranspose", ["r1", "Wt", "bt"], ["t"], name="up", strides=[2, 2]),
             helper.make_node("Relu", ["t"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 10, 10])],
                              [numpy_helper.from_array(a, n) for a, n in
                               ((w1, "W1"), (b1, "b1"), (wt, "Wt"), (bt, "bt"), (w3, "W3"))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_conv_transpose_is_producer_and_consumer_and_dead_channels_go_exactly(tmp_path):
    model = conv_transpose_model()
    groups = {g.id: g for g in onnxprune.inspect(model)}
    assert groups["conv"].prunable and groups["up"].prunable, [str(g.reason) for g in groups.values()]
    assert groups["up"].size == 5 and groups["conv"].consumers == ["up"]
    feeds = random_inputs(model, n=16)
    out = tmp_path / "p.onnx"
    result = onnxprune.prune(model, feeds, criterion="dead", output=out)
    onnx.checker.check_model(str(out), full_check=True)
    kept = {g.id: g.neurons_after for g in result.report.groups}
    assert kept["conv"] == 4 and kept["up"] == 4
    for before, after in zip(run_model(model, feeds), run_model(onnx.load(str(out)), feeds)):
        np.testing.assert_allclose(after, before, atol=1e-5)


def test_node_macs_counts_conv_transpose():
    from onnxprune.bench import node_macs

    model = conv_transpose_model()
    macs = node_macs(model, random_inputs(model, n=1))
    # per input element: C_out * k * k multiply-adds
    assert macs[2] == 6 * 5 * 5 * (5 * 2 * 2)
    assert macs[0] == 6 * 5 * 5 * (2 * 3 * 3)

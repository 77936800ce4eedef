"""The walk's registries: adding an op is one handler, registered by (domain, op_type), in one file."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import DEAD, HIDDEN, layer1, layer2, model
from onnxprune.groups import find_groups
from onnxprune.ops import HEAD_WALK, PASS_THROUGH, STRUCTURAL, head_op, register, structural
from onnxprune import unpack
from onnxprune.rewrite import apply_masks
from onnxprune.unpack import unpack_qkv
from test_heads import decomposed_attention

TOY = "test.toy"


def _through_toy_op():
    """x -> Gemm -> Relu -> r -> test.toy.PassFeatures -> p -> Gemm: an op no registry knows."""
    n1, i1 = layer1()
    n2, i2 = layer2("p")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("PassFeatures", ["r"], ["p"], name="toy", domain=TOY)] + n2
    return model(nodes, i1 + i2, domains=(TOY,))


def test_a_structural_op_registered_in_one_handler_carries_the_group_through():
    m = _through_toy_op()
    (first, _) = find_groups(m)
    assert not first.prunable and first.reason.kind == "unknown-op" and "test.toy.PassFeatures" in first.reason

    @structural("PassFeatures", domain=TOY)
    def pass_features(walk, i, inputs):
        """Its output carries the features of its one input, unchanged."""
        walk.carry(i, walk.info[inputs[0][1]])
        return True

    try:
        (first, _) = find_groups(m)
        assert first.prunable, first.reason
        assert first.region == ["relu", "toy"] and first.consumers == ["gemm2"] and first.tap == "p"
        keep = np.ones(HIDDEN, bool)
        keep[list(DEAD)] = False
        pruned = apply_masks(m, [first], {first.id: keep}, check_shapes=False)
        shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
        assert shapes["W1"][1] == shapes["W2"][0] == HIDDEN - len(DEAD)
        with pytest.raises(ValueError, match="already registered"):
            structural("PassFeatures", domain=TOY)(pass_features)
    finally:
        STRUCTURAL.unregister("PassFeatures", domain=TOY)
    assert not find_groups(m)[0].prunable


def test_a_head_op_registered_in_one_handler_carries_the_heads_through():
    m = decomposed_attention(heads=3, dim=2, dead={1}, target="constant", merge="constant")
    m.opset_import.append(helper.make_opsetid(TOY, 1))
    matmul = next(n for n in m.graph.node if n.op_type == "MatMul" and list(n.input) == ["p", "vt"])
    matmul.input[0] = "p_toy"
    at = list(m.graph.node).index(matmul)
    m.graph.node.insert(at, helper.make_node("PassHeads", ["p"], ["p_toy"], name="toy", domain=TOY))

    def heads(model):
        return [g for g in find_groups(model) if g.kind == "heads"]

    qk, v = heads(m)  # the toy op cuts the query/key heads off the value heads
    assert not qk.prunable and "test.toy.PassHeads" in qk.reason and "through attention" in qk.reason
    assert not v.prunable and "not a head tensor" in v.reason

    @head_op("PassHeads", domain=TOY)
    def pass_heads(walk, i, inputs):
        walk.set_heads(walk.index.nodes[i].output[0], walk.heads[inputs[0][1]])
        return True

    try:
        (g,) = heads(m)
        assert g.prunable, g.reason
        assert (g.size, g.unit) == (6, 2)
    finally:
        HEAD_WALK.unregister("PassHeads", domain=TOY)
    assert not any(g.prunable for g in heads(m))


def test_every_registry_refuses_a_second_handler_for_an_op():
    for registry, decorator, op in ((STRUCTURAL, structural, "Concat"), (HEAD_WALK, head_op, "Transpose"),
                                    (PASS_THROUGH, register, "Relu")):
        assert ("", op) in registry
        with pytest.raises(ValueError, match="already registered"):
            decorator(op)(lambda *args: True)


def test_a_shape_op_registered_for_the_qkv_split_is_replayed_per_part():
    """x -> MatMul(W [4, 6]) -> Reshape [0, 0, 3, 2] -> test.toy.Keep -> Gather(axis 2) of each part."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["packed"], name="qkv"),
             helper.make_node("Reshape", ["packed", "target"], ["parts"]),
             helper.make_node("Keep", ["parts"], ["kept"], name="toy", domain=TOY)]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([0, 0, 3, 2], np.int64), "target")]
    for t in range(3):
        nodes.append(helper.make_node("Gather", ["kept", f"part{t}"], [f"y{t}"], axis=2))
        inits.append(numpy_helper.from_array(np.array(t, np.int64), f"part{t}"))
    graph = helper.make_graph(nodes, "packed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
                              [helper.make_tensor_value_info(f"y{t}", TensorProto.FLOAT, None) for t in range(3)],
                              inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(TOY, 1)])
    assert unpack_qkv(m)[1] == {}

    @unpack.part_axis_op("Keep", domain=TOY)
    class Keep(unpack.ShapeStep):
        """Keeps every axis where it is: on one part, an Identity."""

        def moved(self, index, u, axis, length):
            return axis, length

        def replayed(self, index, step, opset, constant, tag):
            return "Identity", [], {}

    try:
        split, found = unpack_qkv(m)
    finally:
        unpack.PART_AXIS.unregister("Keep", domain=TOY)
    assert list(found) == ["qkv"] and len(found["qkv"][1]) == 3
    assert [n.op_type for n in split.graph.node].count("Identity") == 3

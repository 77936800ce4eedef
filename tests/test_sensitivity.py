"""Sensitivity-aware allocation (onnxprune/sensitivity.py): groups probed on calibration samples, scores in
one currency across groups."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.compensate import Compensation
from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.runtime import collect_statistics
from onnxprune.sensitivity import Probe, gains, node_parameters, output_damage, sensitivity_scores
from onnxprune.session import RuntimeOptions
from conftest import make_mlp, random_inputs


def _setup(model, feeds):
    index = GraphIndex(model)
    groups = find_groups(model, index)
    data = load_data(feeds, model)
    stats = collect_statistics(model, groups, data, index=index).stats
    comp = Compensation(model, index, groups, stats, mode="fold")
    return comp, Probe(data, RuntimeOptions())


def _rescaled(model, layer: int, factor: float):
    """The same function: layer `layer`'s weights and bias times `factor` (ReLU is positively homogeneous),
    the next layer's weights divided by it."""
    out = type(model)()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in (f"W{layer}", f"b{layer}"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
        elif t.name == f"W{layer + 1}":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) / np.float32(factor), t.name))
    return out


def test_damage_is_unit_free():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((200, 5))
    assert output_damage([y], [y]) == 0
    assert output_damage([y], [np.broadcast_to(y.mean(axis=0), y.shape)]) == pytest.approx(1.0, rel=1e-9)
    assert output_damage([100 * y], [100 * y + 100 * 0.1]) == pytest.approx(output_damage([y], [y + 0.1]))


def test_scores_do_not_change_when_a_layer_is_rescaled_without_changing_the_function():
    """Scaling a ReLU layer by 10 and its consumer by 1/10 leaves the model's function as it was, and the
    scores as they were: what a neuron adds to its consumer's output, and what that costs the outputs."""
    model = make_mlp([6, 24, 16, 4], seed=3)
    feeds = random_inputs(model, n=300, seed=1)
    a_comp, a_probe = _setup(model, feeds)
    b_comp, b_probe = _setup(_rescaled(model, 0, 10.0), feeds)
    assert gains(b_comp, b_probe) == pytest.approx(gains(a_comp, a_probe), rel=1e-3)
    costs = node_parameters(model)
    a_scores, b_scores = sensitivity_scores(a_comp, a_probe, costs), sensitivity_scores(b_comp, b_probe, costs)
    for gid in a_scores:
        np.testing.assert_allclose(b_scores[gid], a_scores[gid], rtol=1e-3, atol=1e-12)


def two_branches(seed=0):
    """out = C_a relu(W_a x) + 0.01 C_b relu(W_b x): what branch b's neurons add to its consumer's output
    reaches the model's output a hundred times smaller."""
    rng = np.random.default_rng(seed)

    def w(shape, scale=1.0):
        return numpy_helper.from_array((scale * rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

    inits = []
    for name, shape, scale in (("Wa", (8, 16), 1), ("Ca", (16, 4), 1), ("Wb", (8, 16), 1), ("Cb", (16, 4), 1)):
        t = w(shape, scale)
        t.name = name
        inits.append(t)
    nodes = [helper.make_node("MatMul", ["x", "Wa"], ["pa"], name="a"), helper.make_node("Relu", ["pa"], ["ha"]),
             helper.make_node("MatMul", ["ha", "Ca"], ["ya"]),
             helper.make_node("MatMul", ["x", "Wb"], ["pb"], name="b"), helper.make_node("Relu", ["pb"], ["hb"]),
             helper.make_node("MatMul", ["hb", "Cb"], ["zb"]), helper.make_node("Mul", ["zb", "small"], ["sb"]),
             helper.make_node("Add", ["ya", "sb"], ["out"])]
    inits.append(numpy_helper.from_array(np.float32(0.01), "small"))
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_group_whose_removals_hurt_more_loses_fewer_neurons():
    """Same widths, same kind of weights; only what follows the consumers differs. The per-layer share
    criterion cannot see past a consumer and cuts both branches alike; sensitivity measures that branch b's
    removals barely move the output and takes the removals from it."""
    model = two_branches()
    feeds = {"x": np.random.default_rng(1).standard_normal((400, 8)).astype(np.float32)}
    comp, probe = _setup(model, feeds)
    g = gains(comp, probe)
    assert g["b"] < g["a"] / 10
    kept = {}
    for criterion in ("contribution", "sensitivity"):
        report = onnxprune.prune(model, feeds, fraction=0.4, criterion=criterion, holdout=0, compensation="fold").report
        kept[criterion] = {grp.id: grp.neurons_after for grp in report.groups if grp.prunable}
    assert sum(kept["sensitivity"].values()) == sum(kept["contribution"].values())
    assert kept["sensitivity"]["a"] > kept["contribution"]["a"]


def test_a_dead_neurons_group_probes_nothing_and_gets_the_typical_gain():
    model = make_mlp([6, 16, 16, 4], dead={0: range(12)}, seed=4)
    comp, probe = _setup(model, random_inputs(model, n=200, seed=3))
    g = gains(comp, probe)
    assert all(np.isfinite(v) and v >= 0 for v in g.values())

import numpy as np
import pytest

import onnxprune
from graphs import DEAD, HIDDEN, PATTERNS, TRAPS, trap_shared_weight
from conftest import make_mlp, random_inputs, run_model


def group(model, name):
    return next(g for g in onnxprune.inspect(model) if g.name == name)


@pytest.mark.parametrize("form,trans_b", [("gemm", True), ("gemm", False), ("matmul", False)])
def test_mlp_groups(form, trans_b):
    groups = onnxprune.inspect(make_mlp([5, 7, 4, 2], form=form, trans_b=trans_b))
    assert [g.size for g in groups] == [7, 4, 2]
    assert [g.prunable for g in groups] == [True, True, False]
    assert groups[0].tap == "act0"
    assert groups[0].region_ops == ([] if form == "gemm" else ["Add"]) + ["Relu"]
    assert "graph output" in groups[2].reason


@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_trap_is_skipped_with_reason_and_output_bit_identical(trap):
    build, keyword = TRAPS[trap]
    model = build()
    first = onnxprune.inspect(model)[0]
    assert not first.prunable
    assert keyword in first.reason
    feeds = random_inputs(model, n=32)
    result = onnxprune.prune(model, feeds, criterion="dead")
    assert first.name not in result.stats
    for before, after in zip(run_model(model, feeds), run_model(result.model, feeds)):
        np.testing.assert_array_equal(before, after)


def test_shared_weight_skips_both_users():
    groups = {g.name: g for g in onnxprune.inspect(trap_shared_weight())}
    assert "shared" in groups["mm_a"].reason and "shared" in groups["mm_b"].reason
    assert groups["mm_a"].size == HIDDEN


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_pattern_removes_the_dead_neurons_exactly(pattern):
    model = PATTERNS[pattern]()
    first = onnxprune.inspect(model)[0]
    assert first.prunable, first.reason
    feeds = random_inputs(model, n=48)
    result = onnxprune.prune(model, feeds, criterion="dead")
    kept = next(g for g in result.report.groups if g.name == first.name)
    assert kept.neurons_after <= HIDDEN - len(DEAD)
    assert result.validation.passed
    for before, after in zip(run_model(model, feeds), run_model(result.model, feeds)):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_gemm_transa_consumer_is_skipped():
    model = make_mlp([4, 6, 3])
    node = model.graph.node[2]
    assert node.op_type == "Gemm"
    # transA=1 on [N, 6] input would contract over the sample axis: the graph becomes
    # invalid for N != 6, but the finder must refuse it from the attribute alone.
    node.attribute.append(onnxprune.groups.onnx.helper.make_attribute("transA", 1))
    g = onnxprune.find_groups(model)[0]
    assert "transA" in g.reason


def test_weight_as_first_matmul_input_is_not_a_consumer():
    model = make_mlp([4, 6, 3], form="matmul")
    mm = next(n for n in model.graph.node if n.name == "matmul1")
    mm.input[0], mm.input[1] = mm.input[1], mm.input[0]
    g = onnxprune.find_groups(model)[0]
    assert not g.prunable and "weight input" in g.reason


def test_overridable_initializer_is_not_a_constant():
    model = make_mlp([4, 6, 3])
    w = next(t for t in model.graph.initializer if t.name == "W0")
    model.graph.input.append(onnxprune.groups.onnx.helper.make_tensor_value_info("W0", w.data_type, list(w.dims)))
    g = onnxprune.find_groups(model)[0]
    assert "not a constant" in g.reason


def test_group_to_dict_round_trips_fields():
    g = onnxprune.inspect(make_mlp([4, 6, 3]))[0]
    d = g.to_dict()
    assert d["neurons"] == 6 and d["prunable"] and d["consumers"] == ["gemm1"] and d["reason"] is None

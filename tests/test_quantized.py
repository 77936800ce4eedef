"""Models that are already quantised are pruned through their quantisation (ops/quantized.py, graph/dequant.py):
onnxruntime's QDQ, QOperator and dynamic exports, and weight-only int8 (Cast + Mul) weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from conftest import make_mlp, run_model
from quantized_models import images, ort_quantized, small_cnn, weight_only_int8

MLP_DEAD = {0: [1, 5, 6], 1: [0, 3]}


def mlp_and_data(n=160, batch="N"):
    model = make_mlp([12, 16, 8, 4], dead=MLP_DEAD, dead_by="zero", batch=batch)
    x = np.random.default_rng(0).standard_normal((n, 12)).astype(np.float32)
    return model, {"input": x}


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_silenced_removed_exactly(quantized, feeds, removed: dict, atol=1e-6):
    """Pruning only the exactly-zero neurons of a quantised model removes them all, keeps its quantised form,
    and changes no output beyond float rounding (zero channels add exact zeros to the integer sums)."""
    result = onnxprune.prune(quantized, feeds, criterion="dead")
    assert result.validation.passed, result.validation.failures
    by_name = {g.name: g for g in result.report.groups}
    for name, count in removed.items():
        g = by_name[name]
        assert g.neurons_before - g.neurons_after == count, g
    onnx.checker.check_model(result.model, full_check=True)
    for before, after in zip(run_model(quantized, feeds), run_model(result.model, feeds)):
        np.testing.assert_allclose(after, before, atol=atol)
    assert result.report.parameters_after < result.report.parameters_before
    return result


def test_an_onnxruntime_qdq_export_is_pruned_through_its_quantisation():
    model, feeds = mlp_and_data()
    quantized = ort_quantized(model, feeds, "qdq")
    groups = onnxprune.inspect(quantized)
    assert [g.prunable for g in groups] == [True, True, False], [g.reason for g in groups]
    result = assert_silenced_removed_exactly(quantized, feeds, {"gemm0": 3, "gemm1": 2})
    # the integers, their per-channel scales and zero points are cut together; the model stays QDQ
    inits = {t.name: t for t in result.model.graph.initializer}
    for node in result.model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
            rows = inits[node.input[0]].dims[0]
            assert list(inits[node.input[1]].dims) in ([rows], [])
    assert ops(result.model).count("DequantizeLinear") == ops(quantized).count("DequantizeLinear")


def test_a_qdq_conv_export_loses_its_silenced_channels_exactly():
    model, feeds = small_cnn(), {"image": images()}
    quantized = ort_quantized(model, feeds, "qdq")
    assert_silenced_removed_exactly(quantized, feeds, {"conv1": 2})


def test_a_qoperator_conv_export_is_pruned_through_qlinearconv():
    model, feeds = small_cnn(), {"image": images()}
    quantized = ort_quantized(model, feeds, "qoperator")
    assert "QLinearConv" in ops(quantized)
    result = assert_silenced_removed_exactly(quantized, feeds, {"conv1_quant": 2})
    conv = next(n for n in result.model.graph.node if n.op_type == "QLinearConv")
    inits = {t.name: t for t in result.model.graph.initializer}
    assert inits[conv.input[3]].dims[0] == 6 and inits[conv.input[4]].dims == [6] and inits[conv.input[8]].dims == [6]


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_dynamic_export_is_pruned_through_matmulinteger(per_channel):
    model, feeds = mlp_and_data()
    quantized = ort_quantized(model, feeds, "dynamic", per_channel=per_channel)
    assert "MatMulInteger" in ops(quantized)
    groups = onnxprune.inspect(quantized)
    assert_silenced_removed_exactly(quantized, feeds, {groups[0].name: 3, groups[1].name: 2})


@pytest.mark.parametrize("form", ["qdq", "dynamic", "weight-only"])
def test_a_budget_search_folds_into_quantised_consumers_and_stays_valid(form):
    model, feeds = mlp_and_data(n=240)
    feeds["labels"] = run_model(model, feeds)[0].argmax(1)
    inputs = {"input": feeds["input"]}
    quantized = weight_only_int8(model_as_matmul()) if form == "weight-only" else ort_quantized(model, inputs, form)
    if form == "weight-only":
        feeds = {"input": feeds["input"], "labels": run_model(quantized, {"input": feeds["input"]})[0].argmax(1)}
    result = onnxprune.prune(quantized, feeds, fraction=0.4, compensation="fold")
    assert result.validation.passed
    onnx.checker.check_model(result.model, full_check=True)
    methods = [m for g in result.report.groups for m in (g.compensation or [])]
    assert methods and set(methods) <= {"fold", "none"}
    if form == "qdq":  # the folded bias change moved the integers of the dequantised biases: still QDQ
        assert ops(result.model).count("DequantizeLinear") == ops(quantized).count("DequantizeLinear")


def model_as_matmul():
    return make_mlp([12, 16, 8, 4], dead=MLP_DEAD, dead_by="zero", form="matmul")


@pytest.mark.parametrize("per_channel,zero_point", [(True, False), (False, False), (True, True)])
def test_weight_only_int8_cast_mul_weights_are_pruned(per_channel, zero_point):
    quantized = weight_only_int8(model_as_matmul(), per_channel=per_channel, zero_point=zero_point)
    assert "Cast" in ops(quantized) and "Mul" in ops(quantized)
    feeds = {"input": np.random.default_rng(0).standard_normal((120, 12)).astype(np.float32)}
    groups = onnxprune.inspect(quantized)
    assert [g.prunable for g in groups] == [True, True, False], [g.reason for g in groups]
    result = assert_silenced_removed_exactly(quantized, feeds, {"matmul0": 3, "matmul1": 2}, atol=1e-5)
    q = {t.name: t for t in result.model.graph.initializer}
    assert q["W1_w8_q"].dims == [13, 6] and q["W1_w8_q"].data_type == onnx.TensorProto.INT8
    assert q["W1_w8_scale"].dims == ([6] if per_channel else [])


def test_a_quantised_model_with_external_data_and_a_dynamic_batch(tmp_path):
    model = make_mlp([64, 128, 64, 4], dead=MLP_DEAD, dead_by="zero")  # weights above onnx's 1 kB threshold
    feeds = {"input": np.random.default_rng(0).standard_normal((160, 64)).astype(np.float32)}
    quantized = ort_quantized(model, feeds, "qdq")
    path = tmp_path / "q.onnx"
    onnx.save_model(quantized, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="q.onnx.data", size_threshold=0)
    out = tmp_path / "q.pruned.onnx"
    result = onnxprune.prune(path, feeds, criterion="dead", output=out)
    assert result.validation.passed and (tmp_path / "q.pruned.onnx.data").exists()
    for n in (1, 7):  # any batch size
        one = {"input": feeds["input"][:n]}
        np.testing.assert_allclose(run_model(out, one)[0], run_model(path, one)[0], atol=1e-6)


def test_what_is_not_followed_is_skipped_with_its_reason():
    model, feeds = mlp_and_data()
    quantized = ort_quantized(model, feeds, "qoperator")  # QGemm (com.microsoft): not a linear op onnxprune knows
    groups = onnxprune.inspect(quantized)
    assert not any(g.prunable for g in groups)
    result = onnxprune.prune(quantized, feeds, criterion="dead")
    assert result.report.nothing_to_prune

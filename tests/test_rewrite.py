import hashlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.rewrite import apply_masks, parameter_count
from graphs import shared_bias
from conftest import make_mlp, random_inputs, run_model


def init(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


@pytest.mark.parametrize("form,trans_b", [("gemm", True), ("gemm", False), ("matmul", False)])
def test_masks_slice_producer_bias_and_consumer(form, trans_b):
    model = make_mlp([5, 7, 4, 2], form=form, trans_b=trans_b)
    groups = onnxprune.find_groups(model)
    keep0 = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    keep1 = np.array([0, 1, 1, 1], bool)
    new = apply_masks(model, groups, {groups[0].name: keep0, groups[1].name: keep1})
    w0, w1, w2 = init(model, "W0"), init(model, "W1"), init(model, "W2")
    n0, n1, n2 = init(new, "W0"), init(new, "W1"), init(new, "W2")
    out_axis = 0 if trans_b else 1
    np.testing.assert_array_equal(n0, np.compress(keep0, w0, axis=out_axis))
    np.testing.assert_array_equal(n1, np.compress(keep1, np.compress(keep0, w1, axis=1 - out_axis), axis=out_axis))
    np.testing.assert_array_equal(n2, np.compress(keep1, w2, axis=1 - out_axis))
    np.testing.assert_array_equal(init(new, "b0"), init(model, "b0")[keep0])
    onnx.checker.check_model(new, full_check=True)
    assert parameter_count(model) == 5 * 7 + 7 + 7 * 4 + 4 + 4 * 2 + 2
    assert parameter_count(new) == 5 * 5 + 5 + 5 * 3 + 3 + 3 * 2 + 2
    # The input model is not modified.
    assert init(model, "W0").shape == w0.shape


def test_shared_bias_is_copied_not_sliced_in_place():
    model = shared_bias()
    result = onnxprune.prune(model, random_inputs(model), criterion="dead")
    new = result.model
    gemm1, gemm2 = new.graph.node[0], new.graph.node[2]
    assert gemm2.input[2] == "b1" and init(new, "b1").shape == (6,)
    assert gemm1.input[2] != "b1" and init(new, gemm1.input[2]).shape == (4,)


def test_model_properties_and_metadata_are_kept():
    model = make_mlp([4, 6, 3], dead={0: [1]})
    model.producer_name = "exporter"
    model.doc_string = "doc"
    model.model_version = 7
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    model.metadata_props.add(key="author", value="someone")
    new = onnxprune.prune(model, random_inputs(model), criterion="dead").model
    assert new.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in new.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert (new.producer_name, new.doc_string, new.model_version) == ("exporter", "doc", 7)
    meta = {p.key: p.value for p in new.metadata_props}
    assert meta["author"] == "someone"
    assert meta["onnxprune.version"] == onnxprune.__version__
    assert '"criterion": "dead"' in meta["onnxprune.settings"]


def test_stale_shapes_are_reinferred():
    model = make_mlp([4, 6, 3], dead={0: [1, 2]})
    inferred = onnx.shape_inference.infer_shapes(model)
    new = onnxprune.prune(inferred, random_inputs(model), criterion="dead").model
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in new.graph.value_info}
    assert shapes["linear0"] == ["N", 4] and shapes["act0"] == ["N", 4]


def test_external_data_model_round_trip(tmp_path):
    model = make_mlp([16, 64, 32, 4], dead={0: range(10), 1: range(5)})
    src = tmp_path / "ext.onnx"
    stored = onnx.ModelProto()
    stored.CopyFrom(model)  # saving as external data rewrites the proto in place
    onnx.save_model(stored, str(src), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    digest = hashlib.sha256(src.read_bytes() + (tmp_path / "ext.onnx.data").read_bytes()).hexdigest()
    feeds = random_inputs(model)
    np.savez(tmp_path / "d.npz", **feeds)
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    result = onnxprune.prune(src, tmp_path / "d.npz", output=out, criterion="dead")
    assert (out.parent / "small.onnx.data").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.onnx", "small.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(model, feeds)[0], atol=1e-5)
    assert result.report.file_size_after < result.report.file_size_before
    after = hashlib.sha256(src.read_bytes() + (tmp_path / "ext.onnx.data").read_bytes()).hexdigest()
    assert after == digest  # the input model is untouched

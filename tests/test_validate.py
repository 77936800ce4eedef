import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.data import load_data
from onnxprune.validate import Tolerances, as_array, predictions, validate
from conftest import make_mlp, random_inputs, save


@pytest.fixture
def setup(tmp_path):
    model = make_mlp([5, 8, 3])
    feeds = random_inputs(model, n=30)
    data = load_data({**feeds, "labels": np.zeros(30, np.int64)}, model)
    return model, data, tmp_path


def test_identical_model_passes_exactly(setup):
    model, data, tmp = setup
    result = validate(model, save(model, tmp / "same.onnx"), data, exact=True)
    assert result and result.passed
    assert result.outputs[0].max_abs_diff == 0 and result.outputs[0].agreement == 1.0
    assert result.samples == 30
    assert result.accuracy_before == result.accuracy_after


def test_changed_output_fails_only_when_exactness_is_required(setup):
    model, data, tmp = setup
    other = onnx.ModelProto()
    other.CopyFrom(model)
    b = other.graph.initializer[-1]
    b.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(b) + 1e-3, b.name))
    path = save(other, tmp / "other.onnx")
    strict = validate(model, path, data, exact=True)
    assert not strict and "changed by up to" in strict.failures[0]
    assert validate(model, path, data, exact=False).passed
    assert validate(model, path, data, exact=True, tolerances=Tolerances(atol=1e-2)).passed


def test_invalid_model_fails_the_checker(setup):
    model, data, tmp = setup
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[1] = "no_such_tensor"
    path = tmp / "broken.onnx"
    onnx.save_model(broken, str(path))
    result = validate(model, path, data)
    assert not result and "onnx.checker" in result.failures[0]


def test_changed_signature_fails(setup):
    model, data, tmp = setup
    other = onnx.ModelProto()
    other.CopyFrom(model)
    other.graph.output[0].name = "renamed"
    other.graph.node[-1].output[0] = "renamed"
    result = validate(model, save(other, tmp / "o.onnx"), data)
    assert not result and "differ" in result.failures[0]


def test_zipmap_outputs_become_arrays():
    rows = [{0: 0.1, 2: 0.7, 1: 0.2}, {0: 0.5, 1: 0.4, 2: 0.1}]
    a = as_array(rows)
    np.testing.assert_allclose(a, [[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    assert predictions(a).tolist() == [2, 0]
    assert predictions(np.array([3, 1])).tolist() == [3, 1]
    assert predictions(np.zeros((4, 1), np.float32)) is None


def test_prune_result_carries_validation(setup):
    model, data, _ = setup
    result = onnxprune.prune(model, data, criterion="dead")
    assert isinstance(result.validation, onnxprune.ValidationResult)
    assert result.report.validation["passed"] is True

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxprune.data import load_data
from onnxprune.errors import InputError
from conftest import make_mlp


@pytest.fixture
def model():
    return make_mlp([4, 6, 3])


def x(n=10, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, 4)).astype(dtype)


def test_named_arrays_and_labels(model, write_npz):
    data = load_data(write_npz(input=x(), labels=np.arange(10) % 3), model)
    assert data.n_samples == 10 and data.labels.tolist()[:4] == [0, 1, 2, 0]
    assert sum(len(b["input"]) for b in data.batches(3)) == 10
    assert [len(b["input"]) for b in data.batches(4)] == [4, 4, 2]


def test_single_input_model_takes_any_single_key(model, write_npz):
    assert load_data(write_npz(features=x()), model).arrays["input"].shape == (10, 4)


def test_one_hot_labels_become_indices(model):
    onehot = np.eye(3)[[0, 2, 1, 1, 0, 2, 2, 1, 0, 0]]
    assert load_data({"input": x(), "labels": onehot}, model).labels.tolist()[:3] == [0, 2, 1]


@pytest.mark.parametrize("arrays,message", [
    ({"a": x(), "b": x()}, "no array for model input(s) 'input'"),
    ({"input": x(dtype=np.float64)}, "is float64 but model input 'input' expects float32"),
    ({"input": x()[:, :3]}, "axis 1: 3 != 4"),
    ({"input": x()[:, :, None]}, "has rank 2"),
    ({"input": x(0)}, "zero samples"),
    ({"input": np.full((3, 4), np.nan, np.float32)}, "12 NaN or infinite"),
    ({"input": x(), "labels": np.arange(9)}, "9 labels for 10 samples"),
    ({"input": x(), "labels": np.array(["a"] * 10)}, "integer class labels"),
])
def test_bad_arrays_are_refused_with_the_reason(model, arrays, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(arrays, model)


def test_pickled_arrays_are_refused(model, tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, input=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled"):
        load_data(path, model)


@pytest.mark.parametrize("content,message", [
    (b"not a zip", "not a readable .npz"),
    (None, "data file not found"),
])
def test_unreadable_files(model, tmp_path, content, message):
    path = tmp_path / "d.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_data(path, model)


def test_npy_instead_of_npz_is_explained(model, tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:
        np.save(f, x())
    with pytest.raises(InputError, match="single .npy array, not a .npz archive"):
        load_data(path, model)


def fixed_batch_model(batch):
    m = make_mlp([4, 6, 3], batch=batch)
    return m


def test_fixed_batch_of_one_is_fed_sample_by_sample():
    data = load_data({"input": x(5)}, fixed_batch_model(1))
    assert data.batch_size(256) == 1
    assert [len(b["input"]) for b in data.batches(256)] == [1] * 5


def test_fixed_batch_must_divide_the_samples():
    with pytest.raises(InputError, match="fixed to 4 .* 10 samples"):
        load_data({"input": x(10)}, fixed_batch_model(4))


def test_non_tensor_input_is_refused():
    m = make_mlp([4, 6, 3])
    m.graph.input.append(helper.make_value_info("seq", helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, None))))
    with pytest.raises(InputError, match="not a tensor"):
        load_data({"input": x()}, m)

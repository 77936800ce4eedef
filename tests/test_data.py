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


def stats_of(model, data, batch_size=7):
    from onnxprune.groups import find_groups
    from onnxprune.runtime import collect_statistics

    return collect_statistics(model, find_groups(model), load_data(data, model), batch_size=batch_size).stats


def shards(tmp_path, x, labels, sizes):
    directory = tmp_path / "shards"
    directory.mkdir()
    start = 0
    for i, n in enumerate(sizes):
        np.savez(directory / f"part{i:03d}.npz", input=x[start:start + n], labels=labels[start:start + n])
        start += n
    return directory


def test_npy_and_shards_give_the_same_statistics_as_one_npz(tmp_path):
    model = make_mlp([4, 9, 3])
    data = x(101)
    labels = np.arange(101) % 3
    np.savez(tmp_path / "all.npz", input=data, labels=labels)
    np.save(tmp_path / "all.npy", data)
    directory = shards(tmp_path, data, labels, [30, 1, 50, 20])
    reference = stats_of(model, tmp_path / "all.npz")
    for other in (tmp_path / "all.npy", directory):
        got = stats_of(model, other)
        for name, s in reference.items():
            assert got[name].count == s.count
            np.testing.assert_allclose(got[name].mean, s.mean, rtol=1e-12)
            np.testing.assert_allclose(got[name].m2, s.m2, rtol=1e-10)
    assert load_data(directory, model).labels.tolist() == labels.tolist()
    batches = [len(b["input"]) for b in load_data(directory, model).batches(16)]
    assert batches == [16] * 6 + [5]  # batches cross shard boundaries


def test_shards_are_streamed_one_at_a_time(tmp_path, monkeypatch):
    import onnxprune.data as data_module

    model = make_mlp([4, 9, 3])
    directory = shards(tmp_path, x(100), np.zeros(100, np.int64), [25, 25, 25, 25])
    real = data_module._read_npz
    loaded = []

    def counting(path, only=None):
        arrays = real(path, only)
        loaded.append(max(len(a) for a in arrays.values()))
        return arrays

    monkeypatch.setattr(data_module, "_read_npz", counting)
    dataset = load_data(directory, model)
    loaded.clear()  # labels are read up front (one small array per shard)
    assert sum(len(b["input"]) for b in dataset.batches(10)) == 100
    assert loaded == [25, 25, 25, 25]  # each shard read once, never the whole set
    held = dataset.subset(np.arange(0, 100, 3))
    assert sum(len(b["input"]) for b in held.batches(8)) == 34


def test_npy_is_read_in_bounded_chunks(tmp_path, monkeypatch):
    import onnxprune.data as data_module

    model = make_mlp([4, 9, 3])
    np.save(tmp_path / "big.npy", x(1000))
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 16 * 100)  # 100 rows of 4 float32
    real_load = np.load
    reads = []

    class Counting:
        def __init__(self, array):
            self.array, self.shape, self.dtype = array, array.shape, array.dtype

        def __getitem__(self, key):
            piece = self.array[key]
            reads.append(len(piece))
            return piece

    monkeypatch.setattr(data_module.np, "load", lambda *a, **k: Counting(real_load(*a, **k)))
    dataset = load_data(tmp_path / "big.npy", model)
    assert sum(len(b["input"]) for b in dataset.batches(64)) == 1000
    assert max(reads) == 100 and sum(reads) == 1000


def test_streamed_nan_is_reported_with_where(tmp_path):
    model = make_mlp([4, 9, 3])
    bad = x(40)
    bad[33, 1] = np.nan
    directory = shards(tmp_path, bad, np.zeros(40, np.int64), [20, 20])
    with pytest.raises(InputError, match=r"part001.npz\['input'\] contains 1 NaN"):
        stats_of(model, directory)


def test_shards_with_different_keys_are_refused(tmp_path):
    model = make_mlp([4, 9, 3])
    directory = tmp_path / "s"
    directory.mkdir()
    np.savez(directory / "a.npz", input=x(5), labels=np.zeros(5))
    np.savez(directory / "b.npz", input=x(5))
    with pytest.raises(InputError, match="only some shards"):
        load_data(directory, model)


def sequence_first_model():
    """A MatMul MLP over [T, N, 4]: time steps first, samples on axis 1 (no dim says so)."""
    m = make_mlp([4, 6, 3], form="matmul")
    for value in (m.graph.input[0], m.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        last = dims[-1].dim_value
        del dims[:]
        for d in ("T", "N", last):
            if isinstance(d, str):
                dims.add().dim_param = d
            else:
                dims.add().dim_value = d
    return m


def test_npy_npz_and_shards_with_samples_on_axis_1(tmp_path):
    model = sequence_first_model()
    seq = np.random.default_rng(0).standard_normal((5, 40, 4)).astype(np.float32)  # [T, N, 4]
    np.save(tmp_path / "seq.npy", seq)
    np.savez(tmp_path / "seq.npz", input=seq)
    directory = tmp_path / "shards"
    directory.mkdir()
    np.savez(directory / "a.npz", input=seq[:, :15])
    np.savez(directory / "b.npz", input=seq[:, 15:])
    axes = {"input": 1}
    for source in (tmp_path / "seq.npy", tmp_path / "seq.npz", directory):
        data = load_data(source, model, batch_axes=axes)
        assert data.n_samples == 40
        batches = list(data.batches(16))
        assert [b["input"].shape for b in batches] == [(5, 16, 4), (5, 16, 4), (5, 8, 4)]
        np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches], axis=1), seq)
    # Statistics equal those of the same activations fed as one batch.
    from onnxprune.groups import find_groups
    from onnxprune.runtime import collect_statistics

    stats = collect_statistics(model, find_groups(model), load_data(directory, model, batch_axes=axes),
                               batch_size=7).stats
    # The same tensor fed whole, its time axis taken as the (unsplit) sample axis.
    whole = collect_statistics(model, find_groups(model), load_data({"input": seq}, model), batch_size=5).stats
    for name, s in whole.items():
        assert stats[name].count == s.count == 200
        # float32 products differ in the last bits between batch shapes
        np.testing.assert_allclose(stats[name].mean, s.mean, rtol=1e-6)
        np.testing.assert_allclose(stats[name].m2, s.m2, rtol=1e-6)


@pytest.mark.parametrize("key", ["label", "y", "target", "Targets"])
def test_labels_under_another_name_are_not_silently_ignored(model, key):
    data = load_data({"input": x(), key: np.arange(10) % 3}, model)
    assert data.labels is None
    (warning,) = data.warnings
    assert f"array {key!r}" in warning and f"--labels {key}" in warning


def test_an_integer_vector_of_the_sample_count_looks_like_labels(model):
    data = load_data({"input": x(), "cls": np.arange(10) % 3, "weights": np.ones(10)}, model)
    assert len(data.warnings) == 1 and "'cls'" in data.warnings[0]  # float weights are not labels
    assert load_data({"input": x(), "cls": np.arange(10) % 3}, model, labels_key="cls").warnings == []
    assert load_data({"input": x(), "label": np.arange(10) % 3}, model, labels_key=None).warnings == []


def test_a_named_labels_key_that_is_missing_is_an_error(model, write_npz, tmp_path):
    with pytest.raises(InputError, match=r"no labels array 'nolab' \(keys: input, label\)"):
        load_data(write_npz(input=x(), label=np.arange(10) % 3), model, labels_key="nolab")
    assert load_data(write_npz(input=x()), model).labels is None  # the default key may be missing
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        np.savez(shards / f"{i}.npz", input=x(5), y=np.arange(5) % 3)
    with pytest.raises(InputError, match="no labels array 'nolab'"):
        load_data(shards, model, labels_key="nolab")
    (warning,) = load_data(shards, model).warnings
    assert "'y'" in warning


def test_cli_warns_about_labels_under_another_key_and_refuses_a_missing_one(tmp_path):
    from click.testing import CliRunner

    from conftest import save
    from onnxprune.cli import main

    path = save(make_mlp([4, 6, 3]), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", input=x(30), label=np.arange(30) % 3)
    result = CliRunner().invoke(main, [str(path), "--data", str(tmp_path / "d.npz"), "--fraction", "0.2",
                                       "-o", str(tmp_path / "o.onnx"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert "warning: " in result.stderr and "--labels label" in result.stderr
    assert any("--labels label" in n for n in __import__("json").loads(result.stdout)["notes"])
    result = CliRunner().invoke(main, [str(path), "--data", str(tmp_path / "d.npz"), "--labels", "nolab",
                                       "-o", str(tmp_path / "p.onnx")])
    assert result.exit_code == 2 and "no labels array 'nolab'" in result.stderr
    assert not (tmp_path / "p.onnx").exists()

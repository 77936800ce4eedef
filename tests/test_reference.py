import pickle

import numpy as np
import pytest

from onnxprune.errors import InputError
from onnxprune.reference import Reference
from onnxprune.runtime import collect_statistics, reference_pass
from onnxprune.data import load_data
from onnxprune.groups import find_groups
from onnxprune.run import calibration_split

from conftest import make_mlp, random_inputs, run_model


def test_rows_come_back_in_order_in_any_batch_size():
    rng = np.random.default_rng(0)
    hidden, labels = rng.standard_normal((23, 4, 3)).astype(np.float32), rng.integers(0, 5, 23)
    ref = Reference(["hidden", "label"])
    for start in range(0, 23, 7):  # appended in uneven batches
        ref.append([hidden[start:start + 7], labels[start:start + 7]])
    assert ref.n_samples == 23
    for size in (1, 5, 23, 100):
        got = list(ref.batches(size, 23))
        assert len(got) == -(-23 // size)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), hidden)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), labels)
        assert got[0][0].dtype == np.float32 and got[0][1].dtype == labels.dtype
    np.testing.assert_array_equal(ref.outputs[0][:8], hidden[:8])
    assert ref.nbytes() == hidden.nbytes + labels.nbytes


def test_zipmap_outputs_become_arrays():
    ref = Reference(["probabilities"])
    ref.append([[{0: 0.25, 1: 0.75}, {0: 1.0, 1: 0.0}]])
    np.testing.assert_array_equal(next(ref.batches(2, 2))[0], [[0.25, 0.75], [1.0, 0.0]])


def test_shards_join_in_order_and_files_are_removed():
    a, b = Reference(["y"]), Reference(["y"])
    a.append([np.arange(6.0).reshape(3, 2)])
    b.append([np.arange(6.0, 10.0).reshape(2, 2)])
    b_dir = b.directory
    joined = Reference.concatenate([a, b])
    assert joined is a and joined.n_samples == 5 and not b_dir.exists()
    np.testing.assert_array_equal(next(joined.batches(10, 5))[0], np.arange(10.0).reshape(5, 2))
    directory = joined.directory
    del a, joined
    assert not directory.exists()


def test_a_pickled_copy_takes_over_the_files():
    ref = Reference(["y"])
    ref.append([np.ones((4, 3), np.float32)])
    ref.release()
    copy = pickle.loads(pickle.dumps(ref))
    del ref
    assert copy.directory.exists()
    np.testing.assert_array_equal(next(copy.batches(4, 4))[0], np.ones((4, 3)))
    directory = copy.directory
    copy.close()
    assert not directory.exists()


def test_rows_of_another_shape_are_refused():
    ref = Reference(["hidden"])
    ref.append([np.zeros((2, 5, 4), np.float32)])
    with pytest.raises(InputError, match="different lengths"):
        ref.append([np.zeros((2, 6, 4), np.float32)])


def test_statistics_pass_keeps_the_held_out_outputs_on_disk():
    model = make_mlp([6, 12, 5], seed=3)
    feeds = random_inputs(model, n=90)
    data = load_data(feeds, model)
    calibration = calibration_split(90, 0.5)
    measured = collect_statistics(model, find_groups(model), data, batch_size=16, calibration=calibration)
    expected = run_model(model, {"input": feeds["input"][~calibration]})[0]
    ref = measured.reference
    assert ref.n_samples == int((~calibration).sum())
    assert ref.nbytes() == expected.nbytes  # the rows are in the file, not kept in memory
    np.testing.assert_allclose(np.concatenate([b[0] for b in ref.batches(7, ref.n_samples)]), expected, rtol=1e-6)
    whole = reference_pass(model, data, batch_size=32)
    np.testing.assert_allclose(next(whole.batches(90, 90))[0], run_model(model, feeds)[0], rtol=1e-6)

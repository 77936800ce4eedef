import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from onnxprune import prune, statistics
from onnxprune.cli import main
from onnxprune.data import load_data
from onnxprune.errors import InputError
from onnxprune.groups import find_groups
from onnxprune.parallel import collect_statistics_sharded, shard_bounds, threads_per_worker
from onnxprune.run import calibration_split
from onnxprune.runtime import collect_statistics
from onnxprune.session import RuntimeOptions

from conftest import make_mlp, random_inputs, save


@given(st.integers(1, 500), st.integers(1, 8), st.integers(1, 64))
def test_shards_cover_the_data_in_order_on_batch_boundaries(n, shards, batch):
    bounds = shard_bounds(n, shards, batch)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a < b for a, b in bounds)
    assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert all(a % batch == 0 for a, _ in bounds)
    assert len(bounds) == min(shards, -(-n // batch))


def test_threads_are_divided_among_workers():
    assert threads_per_worker(RuntimeOptions(threads=8), 2) == 4
    assert threads_per_worker(RuntimeOptions(threads=3), 4) == 1


def assert_same_pass(a, b):
    assert a.stats.keys() == b.stats.keys() and a.stats
    for name in a.stats:
        x, y = a.stats[name], b.stats[name]
        assert x.count == y.count
        # float32 activations summed around each shard's own running mean: float32 rounding apart
        np.testing.assert_allclose(x.mean, y.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(x.m2, y.m2, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(x.zeros, y.zeros)
        np.testing.assert_array_equal(x.max_abs, y.max_abs)
    for grams_a, grams_b in ((a.calibration_grams, b.calibration_grams), (a.fold_grams, b.fold_grams)):
        assert grams_a.keys() == grams_b.keys()
        for name in grams_a:
            assert grams_a[name].count == grams_b[name].count
            # products of float32 pieces grouped differently: float32 rounding apart
            np.testing.assert_allclose(grams_a[name].matrix, grams_b[name].matrix, rtol=1e-6, atol=1e-6)
    assert a.reference.n_samples == b.reference.n_samples
    n = a.reference.n_samples
    np.testing.assert_array_equal(next(a.reference.batches(n, n))[0], next(b.reference.batches(n, n))[0])


@pytest.fixture
def mlp_and_data(tmp_path):
    # Relu with some dead neurons: zero counts and max |a| are merged too
    model = make_mlp([10, 24, 16, 4], dead={0: [1, 5], 1: [2]}, seed=4)
    feeds = random_inputs(model, n=203, seed=2)
    path = save(model, tmp_path / "mlp.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, **feeds)
    return model, path, feeds, data


def test_two_workers_give_the_single_pass_result(mlp_and_data):
    model, path, feeds, data = mlp_and_data
    dataset = load_data(str(data), model)
    calibration = calibration_split(dataset.n_samples, 0.5)
    single = collect_statistics(model, find_groups(model), dataset, batch_size=16, calibration=calibration,
                                grams=True)
    options = RuntimeOptions(workers=2)
    for source in (str(data), feeds):  # reloaded from the path, or the arrays sent along
        sharded = collect_statistics_sharded(str(path), source, dataset, batch_size=16,
                                             options=options, calibration=calibration, grams=True)
        assert_same_pass(single, sharded)
    assert options.runs["statistics"] == 2 * -(-203 // 16)  # the workers' runs are counted here


def test_a_streamed_dataset_cannot_be_sent_to_workers(mlp_and_data, tmp_path):
    model, path, feeds, _ = mlp_and_data
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "0.npz", **feeds)
    streamed = load_data(str(tmp_path / "shards"), model)
    assert streamed.arrays is None
    with pytest.raises(InputError, match="path or as arrays"):
        collect_statistics_sharded(str(path), streamed, streamed, batch_size=16,
                                   options=RuntimeOptions(workers=2), calibration=None)


def test_prune_with_workers_chooses_the_same_model(mlp_and_data):
    _, path, _, data = mlp_and_data
    one = prune(str(path), str(data), batch_size=32)
    two = prune(str(path), str(data), batch_size=32, workers=2)
    assert one.report.chosen == two.report.chosen
    assert [c.label for c in one.candidates] == [c.label for c in two.candidates]
    for a, b in zip(one.candidates, two.candidates):
        assert a.kept == b.kept
        assert [f.loss for f in a.figures] == pytest.approx([f.loss for f in b.figures], rel=1e-6)
        assert [f.bound for f in a.figures] == pytest.approx([f.bound for f in b.figures], rel=1e-6)
    assert one.report.parameters_after == two.report.parameters_after


def test_cli_workers_give_the_same_statistics(mlp_and_data):
    _, path, _, data = mlp_and_data
    runner = CliRunner()
    # batches of 32: the 203 samples make two shards
    out = [runner.invoke(main, ["stats", str(path), "--data", str(data), "--json", "-q", "--batch-size", "32",
                                "--workers", w]) for w in ("1", "2")]
    assert [r.exit_code for r in out] == [0, 0], out[1].output
    one, two = (json.loads(r.stdout) for r in out)
    assert one.keys() == two.keys()
    for name in one:
        assert one[name]["count"] == two[name]["count"] and one[name]["dead"] == two[name]["dead"]
        np.testing.assert_allclose(one[name]["mean_quantiles"], two[name]["mean_quantiles"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(one[name]["std_quantiles"], two[name]["std_quantiles"], rtol=1e-6, atol=1e-7)
    bad = runner.invoke(main, ["stats", str(path), "--data", str(data), "--workers", "0"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_dask_local_cluster_gives_the_single_pass_result(mlp_and_data):
    distributed = pytest.importorskip("distributed")
    model, path, _, data = mlp_and_data
    dataset = load_data(str(data), model)
    calibration = calibration_split(dataset.n_samples, 0.5)
    single = collect_statistics(model, find_groups(model), dataset, batch_size=16, calibration=calibration,
                                grams=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        sharded = collect_statistics_sharded(str(path), str(data), dataset, batch_size=16,
                                             options=RuntimeOptions(workers=3, cluster=client),
                                             calibration=calibration, grams=True)
        assert_same_pass(single, sharded)
        # the scheduler's address, as --dask gives it
        by_address = statistics(str(path), str(data), batch_size=16, cluster=cluster.scheduler_address)
    plain = statistics(str(path), str(data), batch_size=16)
    for name, s in plain.items():
        np.testing.assert_allclose(by_address[name].mean, s.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(by_address[name].m2, s.m2, rtol=1e-6, atol=1e-6)


def test_an_unreachable_scheduler_is_an_input_error(mlp_and_data):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    _, path, _, data = mlp_and_data
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # the client retries until then
        with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
            statistics(str(path), str(data), cluster="tcp://127.0.0.1:9")

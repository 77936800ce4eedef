import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.bench import bench, macs_per_sample, synthetic_feeds
from onnxprune.cli import main
from onnxprune.data import model_inputs
from onnxprune.modelio import load_model
from conftest import SAMPLES, make_mlp, save

MODEL = SAMPLES / "digits_mlp_gemm.onnx"
MATMUL = SAMPLES / "digits_mlp_matmul.onnx"
DATA = SAMPLES / "digits_val.npz"


def test_bench_prints_its_fields_on_the_sample_models():
    result = CliRunner().invoke(main, ["bench", str(MODEL), str(MATMUL), "--batch-sizes", "1,8",
                                       "--min-seconds", "0"])
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    for field in ("p50 ms", "p90 ms", "samples/s", "speed-up", "parameters", "MACs/sample", "file"):
        assert field in header
    assert len(rows) == 4
    assert rows[0].split()[:2] == ["digits_mlp_gemm.onnx", "1"] and "1.00x" in rows[0]
    assert rows[3].split()[:2] == ["digits_mlp_matmul.onnx", "8"]


def test_bench_json_with_data_and_the_macs():
    result = CliRunner().invoke(main, ["bench", str(MODEL), "--data", str(DATA), "--batch-sizes", "4",
                                       "--min-seconds", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["batch_size"] == 4 and row["speedup"] == 1.0 and row["runs"] >= 20
    assert row["macs_per_sample"] == 64 * 256 + 256 * 128 + 128 * 64 + 64 * 10
    assert row["parameters"] == 58_442 and row["p90_ms"] >= row["p50_ms"] > 0


def test_macs_follow_the_data_shapes_for_3d_inputs():
    model = make_mlp([8, 16, 4], form="matmul")
    model.graph.input[0].type.tensor_type.shape.dim.insert(1, model.graph.input[0].type.tensor_type.shape.dim[0])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    model.graph.output[0].type.tensor_type.shape.dim.insert(1, model.graph.output[0].type.tensor_type.shape.dim[0])
    feeds = {"input": np.zeros((2, 5, 8), np.float32)}
    assert macs_per_sample(model, feeds) == 5 * (8 * 16 + 16 * 4)


def test_synthetic_feeds_follow_the_specs():
    feeds = synthetic_feeds(model_inputs(load_model(MODEL)), 3)
    assert feeds["input"].shape == (3, 64) and feeds["input"].dtype == np.float32


def test_bench_refuses_models_with_other_inputs(tmp_path):
    other = save(make_mlp([5, 4, 2]), tmp_path / "o.onnx")  # input "input" too, but 5 features
    result = CliRunner().invoke(main, ["bench", str(MODEL), str(other), "--min-seconds", "0"])
    assert result.exit_code == 2 and "does not take the same inputs" in result.stderr
    result = CliRunner().invoke(main, ["bench", str(MODEL), str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and "model file not found" in result.stderr


def test_prune_with_bench_adds_timings_to_the_report(tmp_path):
    result = CliRunner().invoke(main, [str(MODEL), "--data", str(DATA), "-o", str(tmp_path / "p.onnx"), "--bench",
                                       "--batch-sizes", "2", "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["bench"]
    assert [r["model"] for r in rows] == [str(MODEL), str(tmp_path / "p.onnx")]
    assert rows[1]["parameters"] < rows[0]["parameters"] and rows[1]["macs_per_sample"] < rows[0]["macs_per_sample"]


def test_bench_measures_at_least_min_seconds_however_fast_the_model(tmp_path):
    """A 10 µs model used to stop at 2,000 runs (20 ms) although 1 s was promised."""
    tiny = save(make_mlp([4, 8, 2]), tmp_path / "tiny.onnx")
    (row,) = bench([tiny], batch_sizes=[1], min_seconds=0.3, min_runs=5)
    assert row.seconds >= 0.3 and row.runs > 2_000


def test_speedup_and_throughput_come_from_the_same_statistic():
    """One run showed "1.21x faster" beside 50k vs 91k samples/s: the speed-up used p50, samples/s the mean."""
    rows = bench([MODEL, MATMUL], batch_sizes=[8], min_seconds=0.1)
    for row in rows:
        assert row.throughput == pytest.approx(8 / (row.p50_ms / 1000))
    assert rows[1].speedup == pytest.approx(rows[1].throughput / rows[0].throughput)

"""The bundled sample models, and the README's promises about them."""

import re

import numpy as np
import onnx
import pytest

import onnxprune
from conftest import ROOT, SAMPLES


@pytest.mark.parametrize("name", ["digits_mlp_gemm.onnx", "digits_mlp_matmul.onnx"])
def test_seed_thresholds_remove_neurons_and_report_accuracy(tmp_path, name):
    out = tmp_path / "small.onnx"
    result = onnxprune.prune(SAMPLES / name, SAMPLES / "digits_val.npz", output=out,
                             mean_threshold=0.1, std_threshold=0.4)
    onnx.checker.check_model(str(out), full_check=True)
    report = result.report
    assert report.neurons_removed > 0
    assert report.parameters_after < report.parameters_before
    accuracy = report.validation["accuracy"]
    assert accuracy["before"] > 0.95  # the sample is a really trained model
    assert accuracy["before"] - accuracy["after"] < 0.01


def test_sample_exports_are_the_two_real_forms():
    gemm = onnx.load(str(SAMPLES / "digits_mlp_gemm.onnx"))
    matmul = onnx.load(str(SAMPLES / "digits_mlp_matmul.onnx"))
    gemms = [n for n in gemm.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 4 and all(any(a.name == "transB" and a.i == 1 for a in n.attribute) for n in gemms)
    assert [n.op_type for n in matmul.graph.node][:3] == ["MatMul", "Add", "Relu"]
    data = np.load(SAMPLES / "digits_val.npz")
    assert sorted(data.files) == ["input", "labels"] and data["input"].dtype == np.float32


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, flags=re.S)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    run_cmd, test_cmd = commands[0], commands[1]
    assert "onnxprune sample_models/" in run_cmd and "pip install" in run_cmd
    assert "pytest" in test_cmd and "pip install" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def test_the_three_digit_sets_are_disjoint_and_bundled():
    """897 digits train the samples, 600 validate (the README's commands) and 300 test: none shared."""
    import sys

    sys.path.insert(0, str(SAMPLES))
    from build_samples import digits_order, digits_splits

    x, _ = digits_order()
    splits = digits_splits()
    assert {k: len(v[0]) for k, v in splits.items()} == {"train": 897, "test": 300, "val": 600}
    assert sum(len(v[0]) for v in splits.values()) == len(x)
    for name, (file, key) in {"val": ("digits_val.npz", "input"), "test": ("digits_test.npz", "input")}.items():
        with np.load(SAMPLES / file) as z:
            assert np.array_equal(z[key], splits[name][0]) and np.array_equal(z["labels"], splits[name][1])
    for name, file in {"val": "digits_val_images.npz", "test": "digits_test_images.npz"}.items():
        with np.load(SAMPLES / file) as z:
            assert z["image"].shape == (len(splits[name][0]), 1, 8, 8)
            assert np.array_equal(z["image"].reshape(-1, 64), splits[name][0])


@pytest.mark.slow
def test_build_samples_reproduces_the_bundled_files_bit_for_bit():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(SAMPLES / "build_samples.py"), "--check"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(": identical") == 7


def test_training_deterministically_leaves_torch_as_it_was():
    """Tests train small models in the test process: one thread and deterministic kernels only meanwhile."""
    import sys

    import torch

    sys.path.insert(0, str(SAMPLES))
    from build_samples import deterministic_torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with deterministic_torch():
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic

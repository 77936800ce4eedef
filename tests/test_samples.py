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

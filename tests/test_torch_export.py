"""Models from PyTorch's real exporters (TorchScript-based and dynamo-based)."""

import numpy as np
import onnx
import pytest

import onnxprune
from conftest import run_model

import torch  # noqa: E402  (the test extra installs it; a missing install must fail, not skip)


def dead_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.GELU(),
                                torch.nn.Linear(16, 5))
    with torch.no_grad():
        model[0].bias[[1, 4, 9, 30]] = -1e4  # dead after ReLU
        model[2].weight[[0, 7]] = 0  # GELU(0) = 0: dead as well
        model[2].bias[[0, 7]] = 0
    return model.eval()


@pytest.mark.parametrize("dynamo", [False, True])
def test_exported_mlp_prunes_dead_neurons_exactly(tmp_path, dynamo):
    model = dead_mlp()
    path = tmp_path / "m.onnx"
    kwargs = dict(dynamic_shapes=({0: torch.export.Dim("batch")},)) if dynamo else dict(
        dynamic_axes={"x": {0: "batch"}})
    torch.onnx.export(model, (torch.randn(3, 12),), str(path), dynamo=dynamo, input_names=["x"],
                      output_names=["y"], **kwargs)
    x = np.random.default_rng(0).standard_normal((64, 12)).astype(np.float32)
    groups = onnxprune.inspect(path)
    assert [g.size for g in groups] == [32, 16, 5]
    assert groups[0].prunable and groups[1].prunable, [g.reason for g in groups]
    out = tmp_path / "p.onnx"
    result = onnxprune.prune(path, {"x": x}, output=out, criterion="dead")
    assert [g.neurons_after for g in result.report.groups] == [28, 14, 5]
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(run_model(out, {"x": x})[0], model(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5)

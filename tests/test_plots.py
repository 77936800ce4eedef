"""The plots: what they name and mark (drawn with matplotlib's Agg backend)."""

import json

from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.metrics import Figure
from onnxprune.plots import _failures, layer_name
from conftest import SAMPLES


def test_layer_names_are_readable():
    assert layer_name("/0/Gemm") == "layer 0 (Gemm)"
    assert layer_name("/encoder/layer.0/intermediate/dense/MatMul") == "encoder/layer.0/intermediate/dense (MatMul)"
    assert layer_name("fc1") == "fc1"
    long = layer_name("/" + "x" * 80 + "/MatMul")
    assert len(long) == 48 and "…" in long and long.endswith("(MatMul)")


class Candidate:
    def __init__(self, *figures):
        self.figures = list(figures)


def test_guard_failures_are_marked_apart_from_budget_failures():
    ok = Figure("accuracy", "accuracy drop", "y", 0, 0.4, 1, 600, "pp")
    over = Figure("accuracy", "accuracy drop", "y", 0.5, 1.4, 1, 600, "pp")
    veto = Figure("score", "score", "y", 6.0, 7.0, 5.0, 600, "%", guard=True)
    fine = Figure("score", "score", "y", 1.0, 2.0, 5.0, 600, "%", guard=True)

    class Result:
        candidates = [Candidate(ok, fine), Candidate(ok, veto), Candidate(over, fine), Candidate(over, veto)]

    assert _failures(Result) == ([2, 3], [1])


def test_plots_have_titles_naming_the_model(tmp_path):
    import matplotlib.image

    model, data = SAMPLES / "digits_mlp_gemm.onnx", SAMPLES / "digits_val.npz"
    for command, extra in (("stats", []), ("sweep", ["--grid", "0,0.5,0.9"])):
        out = tmp_path / f"{command}.png"
        result = CliRunner().invoke(main, [command, str(model), "--data", str(data), "--plot", str(out), *extra])
        assert result.exit_code == 0, result.stderr
        assert f"plot written to {out}" in result.stderr
        assert matplotlib.image.imread(str(out)).shape[0] > 300


def test_the_plots_say_what_they_show(monkeypatch, tmp_path):
    """The titles and labels, read from the figures before they are saved."""
    import matplotlib.pyplot as plt

    import onnxprune.plots as plots

    seen = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: seen.append(
        [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]
        + [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_ylabel() for ax in fig.axes]))
    model, data = SAMPLES / "digits_mlp_gemm.onnx", SAMPLES / "digits_val.npz"
    CliRunner().invoke(main, ["stats", str(model), "--data", str(data), "--plot", str(tmp_path / "s.png")])
    CliRunner().invoke(main, ["sweep", str(model), "--data", str(data), "--plot", str(tmp_path / "t.png"),
                              "--grid", "0,0.9"])
    stats, sweep = seen
    assert stats[0] == "digits_mlp_gemm.onnx on digits_val.npz (600 samples)"
    assert stats[1].startswith("1. layer 0 (Gemm)")
    assert sweep[1] == "digits_mlp_gemm.onnx: size against accuracy drop"
    assert any("remove 90.0%: accuracy: bound" in t for t in sweep)
    assert any("2-fold cross-fitted" in t for t in sweep)
    plt.close("all")

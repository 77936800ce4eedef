"""The report's words: failed checks, the inspect view."""

from onnxprune.metrics import Figure
from onnxprune.report import failure_text


def figure(metric, loss, bound, budget, unit, **extra):
    return Figure(metric, metric, "logits", loss, bound, budget, 600, unit, **extra)


def test_a_failed_check_says_which_and_by_how_much():
    assert failure_text(figure("score", 6.1, 7.0, 5.0, "%", guard=True)) == "score guard: 6.1 % > 5 %"
    assert failure_text(figure("accuracy", 0.5, 2.09, 2.0, "pp")) == "accuracy: bound 2.09 pp > 2 pp"
    assert failure_text(figure("cosine", 0.01, 0.015, 0.01, "")) == "cosine: bound 0.985 < 0.99"
    assert failure_text(figure("balanced_accuracy", 1, 6, 5, "pp")) == "balanced accuracy: bound 6 pp > 5 pp"


def test_inspect_text_shows_the_skip_kind():
    from onnxprune.report import format_inspect
    import onnxprune
    from conftest import SAMPLES

    groups, split = onnxprune.api.inspect_split(SAMPLES / "digits_mlp_gemm.onnx")
    line = format_inspect(groups, split, {}).splitlines()[3]
    assert "skipped   graph-output: tensor 'logits' is a graph output" in line

"""Metrics that see damage: every output guarded, each on its own scale, with bounds."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.data import load_data
from onnxprune.metrics import METRICS, Budget, plan_checks
from onnxprune.validate import compare
from onnxprune.session import make_session
from conftest import make_mlp, random_inputs, run_model


def figures(plan, before, after, labels=None, batch=100):
    checks = plan.start()
    for start in range(0, len(before[0]), batch):
        cut = slice(start, start + batch)
        for c in checks:
            c.update([b[cut] for b in before], [a[cut] for a in after], None if labels is None else labels[cut])
    return [c.figure() for c in checks]


def auto(names, outputs, labels=None, **budget):
    return plan_checks("auto", names, [o[:8] for o in outputs], labels, Budget(**budget), 0.95)


def test_registry_and_cli_choices_agree():
    option = next(p for p in main.commands["prune"].params if p.name == "metric")
    assert list(option.type.choices) == ["auto", *METRICS]
    help_text = CliRunner().invoke(main, ["prune", "--help"]).stdout
    for name in METRICS:
        assert name in help_text


def test_an_identical_model_passes_every_metric():
    rng = np.random.default_rng(0)
    n = 2000
    logits = rng.standard_normal((n, 10)).astype(np.float32)
    score = rng.random((n, 1)).astype(np.float32)
    hidden = rng.standard_normal((n, 6, 5)).astype(np.float32)
    boxes = np.concatenate([rng.random((n, 4, 30)) * 300, rng.random((n, 3, 30))], axis=1).astype(np.float32)
    labels = rng.integers(0, 10, n)
    outputs = [logits, score, hidden, boxes]
    names = ["logits", "score", "hidden", "det"]
    for plan in (auto(names, outputs, labels),
                 plan_checks("detection", names, [o[:8] for o in outputs], None, Budget(), 0.95, ["det"])):
        result = figures(plan, outputs, outputs, labels)
        assert result and all(f.passed and f.loss == 0 for f in result), [f.text() for f in result]


def yolo_pair(tmp_path):
    """A YOLO-style head, [N, 4 + 18 classes, anchors], boxes in pixels, class scores by sigmoid;
    and the same model with its class branch wiped out."""
    torch = pytest.importorskip("torch")

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU())
            self.box = torch.nn.Conv2d(16, 4, 1)
            self.cls = torch.nn.Conv2d(16, 18, 1)

        def forward(self, x):
            f = self.body(x)
            boxes = torch.sigmoid(self.box(f)) * 320.0
            scores = torch.sigmoid(self.cls(f) * 4.0)
            return torch.cat([boxes, scores], dim=1).flatten(2)

    torch.manual_seed(0)
    net = Head().eval()
    x = torch.randn(2, 1, 16, 16)
    paths = []
    for name in ("original", "wiped"):
        if name == "wiped":
            with torch.no_grad():
                net.cls.weight.zero_()
                net.cls.bias.fill_(-3.0)  # every class score ~ sigmoid(-12): no detection survives
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(net, (x,), str(path), input_names=["images"], output_names=["output0"],
                          dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}}, dynamo=False)
        paths.append(path)
    return paths


def test_a_wiped_class_branch_fails_the_default_check_although_the_flat_cosine_passes(tmp_path):
    original, wiped = yolo_pair(tmp_path)
    feeds = {"images": np.random.default_rng(1).standard_normal((200, 1, 16, 16)).astype(np.float32)}
    model = onnx.load(str(original))
    data = load_data(feeds, model)
    before, after = run_model(model, feeds), run_model(onnx.load(str(wiped)), feeds)
    plan = auto(["output0"], before)
    assert "per-channel" in plan.explanation[0]
    comparison = compare(make_session(str(wiped)), data, original_session=make_session(str(original)))
    assert comparison.outputs[0].cosine >= 0.99  # what the old default looked at, fooled by the pixel rows
    result = figures(plan, before, after)
    assert not result[0].passed and result[0].loss > 0.5
    assert "worst channel" in result[0].detail and int(result[0].detail.split()[2]) >= 4  # a class channel
    detection = figures(plan_checks("detection", ["output0"], [before[0][:8]], None, Budget(), 0.95), before, after)
    assert not detection[0].passed


def two_class_softmax(weight):
    w = np.asarray(weight, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)], "bin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 2])], [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_score_that_moves_without_flipping_the_decision_fails():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.3, 0.8, (1000, 2)).astype(np.float32)  # enough to resolve 0.5 pp of flips
    x[:, 1] = 0
    original = two_class_softmax([[6.0, 0.0], [0.0, 0.0]])   # p(class 0) = sigmoid(6 x) > 0.5
    moved = two_class_softmax([[1.0, 0.0], [0.0, 0.0]])      # same argmax, much less sure
    before, after = run_model(original, {"x": x}), run_model(moved, {"x": x})
    assert (before[0].argmax(1) == after[0].argmax(1)).all()
    assert np.abs(before[0] - after[0]).max() > 0.3
    result = {f.metric: f for f in figures(auto(["p"], before), before, after)}
    assert result["agreement"].passed and result["agreement"].loss == 0
    assert not result["score"].passed


def test_a_broken_rare_class_fails_even_when_accuracy_stays_within_budget():
    rng = np.random.default_rng(3)
    n = 4000
    labels = (rng.random(n) < 0.1).astype(np.int64)  # 10 % positives
    before = np.where(labels[:, None] == 1, [[-2.0, 2.0]], [[2.0, -2.0]]).astype(np.float32)
    before[rng.random(n) < 0.03] *= -1  # the original gets 3 % wrong, both classes
    after = before.copy()
    positives = np.flatnonzero(labels == 1)
    after[positives[: len(positives) // 5]] = [[2.0, -2.0]]  # a fifth of the rare class is lost...
    wrong_majority = np.flatnonzero((labels == 0) & (before.argmax(1) != 0))
    after[wrong_majority] = [[2.0, -2.0]]  # ...while the majority's mistakes are fixed
    plan = auto(["logits"], [before], labels, max_drop=1.0, max_class_drop=5.0)
    assert [c.metric for c in plan.start()] == ["accuracy", "balanced_accuracy", "score"]
    result = {f.metric: f for f in figures(plan, [before], [after], labels)}
    assert result["accuracy"].loss <= 1.0
    assert not result["balanced_accuracy"].passed and "worst class 1" in result["balanced_accuracy"].detail


def test_removing_exactly_dead_neurons_passes_every_metric():
    model = make_mlp([8, 32, 16, 3], dead={0: [1, 5, 9], 1: [2]})
    feeds = random_inputs(model, n=3000)
    pruned = onnxprune.prune(model, feeds, criterion="dead")
    assert pruned.report.neurons_removed >= 4
    before, after = run_model(model, feeds), run_model(pruned.model, feeds)
    labels = before[0].argmax(1)
    for plan in (auto(["out"], before), auto(["out"], before, labels),
                 plan_checks("channel", ["out"], [before[0][:8]], None, Budget(), 0.95),
                 plan_checks("cosine", ["out"], [before[0][:8]], None, Budget(), 0.95)):
        assert all(f.passed for f in figures(plan, before, after, labels))


def test_a_metric_function_judges_candidates_through_the_api():
    model = make_mlp([6, 24, 4], seed=4)
    feeds = random_inputs(model, n=400)

    def largest_output_change(before, after, labels):
        return np.abs(after[0] - before[0]).max(axis=1)

    result = onnxprune.prune(model, feeds, metric=largest_output_change, max_loss=0.05)
    chosen = next(c for c in result.candidates if c.label == result.report.chosen)
    assert chosen.primary.label == "largest_output_change" and chosen.primary.bound <= 0.05
    with pytest.raises(onnxprune.InputError, match="max_loss"):
        onnxprune.prune(model, feeds, metric=largest_output_change)


def test_every_output_is_guarded_and_outputs_selects():
    model = make_mlp([6, 16, 4])
    relu = helper.make_node("Relu", [model.graph.output[0].name], ["second"])
    model.graph.node.append(relu)
    model.graph.output.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", 4]))
    feeds = random_inputs(model, n=200)
    both = onnxprune.sweep(model, feeds, grid=[0.0])
    assert {f.output for f in both.candidates[0].figures} == {model.graph.output[0].name, "second"}
    one = onnxprune.sweep(model, feeds, grid=[0.0], outputs=["second"])
    assert {f.output for f in one.candidates[0].figures} == {"second"}
    with pytest.raises(onnxprune.InputError, match="not among the model's outputs"):
        onnxprune.sweep(model, feeds, grid=[0.0], outputs=["nope"])


@pytest.mark.parametrize("bad", [99, -2])
def test_labels_that_no_class_can_match_are_refused(bad):
    model = make_mlp([6, 16, 10])
    feeds = random_inputs(model, n=100)
    feeds["labels"] = np.zeros(100, np.int64)
    feeds["labels"][3] = bad
    with pytest.raises(onnxprune.InputError, match="10 classes|start at 0"):
        onnxprune.prune(model, feeds, max_drop=2.0)


def test_channels_of_a_sequence_output_are_its_features_not_its_positions():
    """[N, sequence, features] hidden states: a feature wiped at every position is one bad channel;
    [N, 4 + classes, anchors] keeps its channels on axis 1."""
    from onnxprune.metrics import channel_axis

    rng = np.random.default_rng(4)
    hidden = rng.standard_normal((300, 12, 6)).astype(np.float32)
    broken = hidden.copy()
    broken[:, :, 3] = 0
    plan = plan_checks("auto", ["h"], [hidden[:8]], None, Budget(), 0.95, declared=[("N", "seq", 6)])
    assert "6 channel(s) on axis 2, axis 1 is a sequence" in plan.explanation[0]
    worst = figures(plan, [hidden], [broken])[0]
    assert not worst.passed and worst.detail.startswith("worst channel 3 of 6")
    assert channel_axis(np.zeros((2, 22, 2100)), ("N", 22, 2100))[0] == 1
    assert channel_axis(np.zeros((2, 64, 512)), ("N", 64, 512), given=-1)[0] == 2
    with pytest.raises(onnxprune.InputError, match="channel-axis"):
        channel_axis(np.zeros((2, 3)), None, given=0)


def _classifier_outputs(n, seed, flip_every=None, wrong_every=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    before = np.eye(3, dtype=np.float32)[labels] * 4
    after = before.copy()
    if flip_every:
        after[::flip_every] = np.roll(after[::flip_every], 1, axis=1)  # a different decision
    return labels, before, after


def test_samples_without_a_label_count_their_decision_flips():
    labels, before, after = _classifier_outputs(400, 0, flip_every=50)  # 8 flips, all breaks
    partial = labels.copy()
    partial[1::2] = -1  # half without a label: the flips at even rows keep theirs
    plan = auto(["logits"], [before], partial, max_drop=5.0)
    assert "the others count decision flips" in " ".join(plan.explanation)
    accuracy = figures(plan, [before], [after], partial)[0]
    assert accuracy.metric == "accuracy" and accuracy.samples == 400
    assert accuracy.evidence == {"broken": 8, "fixed": 0, "n": 200}
    assert "0 of 200 unlabeled flipped" in accuracy.detail
    moved = partial.copy()
    moved[::50], moved[1::50] = -1, labels[1::50]  # the same flips, now on unlabeled samples
    seen = figures(plan, [before], [after], moved)[0]
    assert "8 of 200 unlabeled flipped" in seen.detail and seen.bound > 0


def test_an_unlabeled_pool_that_never_flips_tightens_the_bound():
    labels, before, after = _classifier_outputs(3000, 1)  # identical models
    few = np.full(3000, -1)
    few[:300] = labels[:300]
    alone = figures(auto(["logits"], [before[:300]], labels[:300]), [before[:300]], [after[:300]], labels[:300])[0]
    pooled = figures(auto(["logits"], [before], few), [before], [after], few)[0]
    assert pooled.bound < alone.bound / 3  # 3,000 samples of evidence against 300
    nothing = figures(auto(["logits"], [before], np.full(3000, -1)), [before], [after], np.full(3000, -1))
    assert nothing[0].metric == "accuracy"  # labels with no labeled sample are still read as labels...


def test_labels_that_are_all_missing_mean_no_labels(tmp_path):
    from onnxprune.data import load_data

    model = make_mlp([6, 16, 3])
    feeds = random_inputs(model, n=40)
    np.savez(tmp_path / "d.npz", labels=np.full(40, -1), **feeds)
    assert load_data(tmp_path / "d.npz", model).labels is None  # ...but a file whose every label is -1 has none
    feeds["labels"] = np.r_[np.zeros(20, int), np.full(20, -1)]
    np.savez(tmp_path / "p.npz", **feeds)
    assert (load_data(tmp_path / "p.npz", model).labels == feeds["labels"]).all()
    one_hot = np.eye(3)[np.zeros(40, int)]
    one_hot[::2] = 0  # a row of zeros: no label
    np.savez(tmp_path / "h.npz", labels=one_hot, input=feeds["input"])
    assert (load_data(tmp_path / "h.npz", model).labels == np.tile([-1, 0], 20)).all()

"""Convolutional networks: output channels are the neurons."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from conftest import SAMPLES, run_model

RNG = np.random.default_rng(0)


def conv_w(name, c_out, c_in, k=3):
    return numpy_helper.from_array((RNG.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32),
                                   name)


def vec(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def image_model(nodes, inits, out_shape=("N", 4), in_channels=2, size=6, domains=()):
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          ["N", in_channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def dead_bias(n, dead):
    b = 0.1 * RNG.standard_normal(n)
    b[list(dead)] = -1e4
    return b


def head(inp, channels, size=6):
    """Flatten -> Gemm: rows in blocks of size*size per channel."""
    return ([helper.make_node("Flatten", [inp], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "Wfc", "bfc"], ["y"], name="fc")],
            [numpy_helper.from_array((RNG.standard_normal((channels * size * size, 4)) / 10).astype(np.float32), "Wfc"),
             vec("bfc", np.zeros(4))])


def depthwise_model():
    """Conv -> Relu -> depthwise Conv -> Relu -> Conv -> Relu -> Flatten -> Gemm."""
    h, i = head("r3", 6)
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "Wdw", "bdw"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3")] + h
    inits = [conv_w("W1", 8, 2), vec("b1", dead_bias(8, (2, 5))), conv_w("Wdw", 8, 1), vec("bdw", np.zeros(8)),
             conv_w("W3", 6, 8), vec("b3", dead_bias(6, (1,)))] + i
    return image_model(nodes, inits)


def test_depthwise_conv_is_pass_through_and_its_group_shrinks():
    m = depthwise_model()
    groups = onnxprune.inspect(m)
    assert [g.name for g in groups] == ["conv1", "conv3", "fc"]
    assert groups[0].region_ops == ["Relu", "Conv", "Relu"] and groups[0].consumers == ["conv3"]
    assert groups[1].consumers == ["fc"] and groups[1].prunable
    x = RNG.standard_normal((40, 2, 6, 6)).astype(np.float32)
    result = onnxprune.prune(m, {"x": x}, criterion="dead")
    assert [g.neurons_after for g in result.report.groups[:2]] == [6, 5]
    dw = next(n for n in result.model.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 6
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(m, {"x": x})[0], atol=1e-5)


def test_pooling_pad_and_resize_pass_through_and_batchnorm_is_sliced():
    h, i = head("r", 5, size=2)
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"], name="bn"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Pad", ["r1", "pads"], ["p1"], name="pad"),
             helper.make_node("MaxPool", ["p1"], ["m1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["m1", "", "scales"], ["u1"], name="up", mode="nearest"),
             helper.make_node("Conv", ["u1", "W2", "b2"], ["c2"], name="conv2", strides=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r"], name="relu2")] + h
    bn_bias = 0.1 * RNG.standard_normal(8)
    bn_bias[[0, 3, 7]] = -1e4  # dead after the Relu
    inits = [conv_w("W1", 8, 2), vec("b1", np.zeros(8)), vec("s", 1 + RNG.random(8)), vec("bb", bn_bias),
             vec("mu", RNG.standard_normal(8)), vec("var", 1 + RNG.random(8)),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             vec("scales", [1, 1, 2, 2]), conv_w("W2", 5, 8), vec("b2", np.zeros(5))] + i
    m = image_model(nodes, inits)
    g = onnxprune.inspect(m)[0]
    assert g.prunable, g.reason
    assert g.region_ops == ["BatchNormalization", "Relu", "Pad", "MaxPool", "Resize"]
    x = RNG.standard_normal((30, 2, 6, 6)).astype(np.float32)
    result = onnxprune.prune(m, {"x": x}, criterion="dead")
    assert result.report.groups[0].neurons_after == 5
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(m, {"x": x})[0], atol=1e-5)


def coupled_model(kind):
    h, i = head("r", 6)
    nodes = [helper.make_node("Conv", ["x", "Wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "Wb", "bb"], ["b"], name="conv_b", pads=[1, 1, 1, 1],
                              group=2 if kind == "grouped" else 1)]
    inits = [conv_w("Wa", 6, 2), vec("ba", dead_bias(6, (0,))),
             conv_w("Wb", 6, 3 if kind == "grouped" else 6), vec("bb", dead_bias(6, (4,)))]
    if kind == "residual":
        nodes += [helper.make_node("Add", ["b", "ra"], ["s"], name="residual"),
                  helper.make_node("Relu", ["s"], ["r"], name="relu")]
    elif kind == "concat":
        nodes += [helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
                  helper.make_node("Concat", ["rb", "ra"], ["cat"], name="concat", axis=1),
                  helper.make_node("Conv", ["cat", "Wc", "bc"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["r"], name="relu")]
        inits += [conv_w("Wc", 6, 12), vec("bc", np.zeros(6))]
    else:
        nodes += [helper.make_node("Relu", ["b"], ["r"], name="relu")]
    return image_model(nodes + h, inits + i)


def test_grouped_conv_channels_dead_in_one_block_only_are_kept():
    """conv_b (group=2) reads conv_a's channels and writes its own in blocks of 3: each side's one dead
    channel lies in one block, so balancing keeps it (tests/test_grouped_conv.py prunes such channels)."""
    m = coupled_model("grouped")
    groups = {g.name: g for g in onnxprune.inspect(m)}
    assert groups["conv_a"].prunable and groups["conv_a"].balanced == [((0, 3), (3, 6))]
    x = RNG.standard_normal((20, 2, 6, 6)).astype(np.float32)
    result = onnxprune.prune(m, {"x": x}, criterion="dead")
    for g in result.report.groups:
        if g.name in ("conv_a", "conv_b"):
            assert g.neurons_after == g.neurons_before
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(m, {"x": x})[0], atol=1e-5)


@pytest.mark.parametrize("kind,kept", [("residual", {"conv_a": 6}), ("concat", {"conv_a": 5, "conv_b": 5})])
def test_residual_and_concat_channels_share_one_mask(kind, kept):
    m = coupled_model(kind)
    groups = {g.id: g for g in onnxprune.inspect(m)}
    assert all(g.prunable for g in groups.values() if g.id != "fc"), [str(g.reason) for g in groups.values()]
    if kind == "residual":  # conv_a and conv_b write one residual stream: one group, read at two taps
        assert groups["conv_a"].producer_names == ["conv_a", "conv_b"] and "conv_b" not in groups
        assert groups["conv_a"].taps == ["ra", "r"] and groups["conv_a"].coupled
    x = RNG.standard_normal((20, 2, 6, 6)).astype(np.float32)
    result = onnxprune.prune(m, {"x": x}, criterion="dead")
    # residual: channel 0 is dead before the Add but not after it, channel 4 the other way round
    assert {g.id: g.neurons_after for g in result.report.groups if g.id in kept} == kept
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(m, {"x": x})[0], atol=1e-5)


def test_folding_into_a_conv_consumer_is_exact_without_padding():
    """Channels 1 and 3 are constant (zero kernel, positive bias); the next Conv has no padding."""
    w1 = numpy_helper.to_array(conv_w("W1", 6, 2)).copy()
    w1[[1, 3]] = 0
    b1 = 0.1 * RNG.standard_normal(6)
    b1[[1, 3]] = [0.8, 1.7]
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),  # valid conv, no bias yet
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wfc"], ["y"], name="fc")]
    inits = [numpy_helper.from_array(w1, "W1"), vec("b1", b1), conv_w("W2", 5, 6),
             numpy_helper.from_array(RNG.standard_normal((5, 4)).astype(np.float32), "Wfc")]
    m = image_model(nodes, inits)
    x = RNG.standard_normal((30, 2, 6, 6)).astype(np.float32)
    folded = onnxprune.prune(m, {"x": x}, std_threshold=1e-9, compensation="fold", align=1)
    assert folded.report.groups[0].neurons_after == 4
    np.testing.assert_allclose(run_model(folded.model, {"x": x})[0], run_model(m, {"x": x})[0], atol=1e-4)
    conv2 = next(n for n in folded.model.graph.node if n.name == "conv2")
    assert len(conv2.input) == 3 and conv2.input[2]  # a bias was created for the fold


def test_conv_channels_are_aligned_to_eight_by_default():
    m = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    data = np.load(SAMPLES / "digits_val_images.npz")
    result = onnxprune.prune(m, {"image": data["image"], "labels": data["labels"]}, fraction=0.5)
    for g in result.report.groups:
        if g.prunable and g.producer_op == "Conv":
            assert g.neurons_after % 8 == 0
    result = onnxprune.prune(m, {"image": data["image"], "labels": data["labels"]}, fraction=0.5, align=1)
    assert result.validation.passed


import torch  # noqa: E402  (the test extra installs it; a missing install must fail, not skip)
from coupled_models import export_image  # noqa: E402


def digits_cnn(dead_channels=(3, 9)):
    import sys

    sys.path.insert(0, str(SAMPLES))
    from build_samples import digits_split, train_cnn

    x, y, xv, yv = digits_split()
    net = train_cnn(x, y, epochs=3)
    with torch.no_grad():
        net[4].bias[list(dead_channels)] = -1e4  # second block's BatchNorm shift: dead after its ReLU
    return net, xv.reshape(-1, 1, 8, 8), yv


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_trained_digits_cnn_both_exporters(tmp_path, dynamo):
    net, images, labels = digits_cnn()
    path = export_image(net, tmp_path / "cnn.onnx", dynamo, shape=images[:2].shape)
    groups = onnxprune.inspect(path)
    convs = [g for g in groups if g.producer_op == "Conv"]
    assert len(convs) == 3 and all(g.prunable for g in convs), [g.reason for g in convs]
    assert convs[2].consumers and groups[-1].reason
    feeds = {"image": images, "labels": labels}
    result = onnxprune.prune(path, feeds, criterion="dead")
    assert result.report.groups[1].neurons_after <= 30
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_allclose(run_model(result.model, {"image": images})[0],
                               net(torch.from_numpy(images)).detach().numpy(), atol=1e-4)
    budget = onnxprune.prune(path, feeds)
    assert budget.validation.passed and budget.report.parameters_after < budget.report.parameters_before


def test_one_dimensional_convolutions(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 16, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.Conv1d(16, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].bias[[1, 6, 11]] = -1e4
    path = tmp_path / "c1d.onnx"
    torch.onnx.export(net, (torch.randn(2, 3, 20),), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}})
    groups = onnxprune.inspect(path)
    assert groups[0].prunable and groups[0].consumers, groups[0].reason
    assert groups[1].prunable, groups[1].reason  # GlobalAveragePool -> Flatten -> Gemm, 1 position per channel
    x = np.random.default_rng(0).standard_normal((50, 3, 20)).astype(np.float32)
    result = onnxprune.prune(path, {"x": x}, criterion="dead")
    assert result.report.groups[0].neurons_after == 13
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], net(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-4)


def test_macs_objective_prunes_compute_on_the_sample_cnn():
    data = str(SAMPLES / "digits_val_images.npz")
    model = str(SAMPLES / "digits_cnn.onnx")
    for objective in ("parameters", "macs"):  # within budget either way
        report = onnxprune.prune(model, data, objective=objective, max_drop=2.0).report
        assert report.certified and all(f["passed"] for f in report.certified)
        assert report.macs_after < report.macs_before
    # at one amount, each objective saves most of what it ranks by (a search may stop at other amounts)
    by_params = onnxprune.prune(model, data, fraction=0.3).report
    by_macs = onnxprune.prune(model, data, objective="macs", fraction=0.3).report
    assert by_macs.macs_after < by_params.macs_after
    assert by_params.parameters_after < by_macs.parameters_after
    assert by_macs.to_dict()["macs_reduction"] > 0.2
    # both: a neuron's cost is its share of the parameters plus its share of the MACs, so it lands between
    both = onnxprune.prune(model, data, objective="both", fraction=0.3).report
    assert by_params.parameters_after < both.parameters_after < by_macs.parameters_after
    assert by_macs.macs_after < both.macs_after < by_params.macs_after


def test_objective_both_weighs_a_model_s_macs_as_much_as_its_parameters():
    from onnxprune.data import load_data
    from onnxprune.run import objective_costs
    from onnxprune.sensitivity import node_parameters

    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    data = load_data(str(SAMPLES / "digits_val_images.npz"), model)
    assert objective_costs(model, data, "parameters") is None
    macs, both, params = objective_costs(model, data, "macs"), objective_costs(model, data, "both"), node_parameters(model)
    total = sum(params.values())
    assert sum(both.values()) == pytest.approx(2 * total)  # the MACs scaled to weigh as much as the parameters
    scale = total / sum(macs.values())
    for node, cost in both.items():
        assert cost == pytest.approx(params.get(node, 0) + scale * macs.get(node, 0))
    convs = [i for i, n in enumerate(model.graph.node) if n.op_type == "Conv"]
    assert all(macs[i] > 0 and both[i] > params[i] for i in convs)


def test_per_channel_constants_are_sliced_on_the_channel_axis():
    """PRelu with a [C, 1, 1] slope and Mul/Add by [1, C, 1, 1] constants, then a Conv consumer."""
    h, i = head("r", 4)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "shift"], ["a1"], name="shift"),
             helper.make_node("PRelu", ["a1", "slope"], ["p1"], name="prelu"),
             helper.make_node("Mul", ["p1", "scale"], ["m1"], name="scale"),
             helper.make_node("Conv", ["m1", "W2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r"], name="relu")] + h
    shift = np.zeros((1, 8, 1, 1))
    w1 = numpy_helper.to_array(conv_w("W1", 8, 2)).copy()
    w1[[2, 6]] = 0  # zero kernels and zero shift: PRelu(0) * scale = 0, exactly dead
    shift[0, :, 0, 0] = 0.1 * RNG.standard_normal(8)
    shift[0, [2, 6], 0, 0] = 0
    inits = [numpy_helper.from_array(w1, "W1"), vec("shift", shift), vec("slope", RNG.random((8, 1, 1))),
             vec("scale", 1 + RNG.random((1, 8, 1, 1))), conv_w("W2", 4, 8), vec("b2", np.zeros(4))] + i
    m = image_model(nodes, inits)
    g = onnxprune.inspect(m)[0]
    assert g.prunable and g.region_ops == ["Add", "PRelu", "Mul"], g.reason
    x = RNG.standard_normal((25, 2, 6, 6)).astype(np.float32)
    result = onnxprune.prune(m, {"x": x}, criterion="dead")
    assert result.report.groups[0].neurons_after == 6
    slope = next(t for t in result.model.graph.initializer if t.name == "slope")
    assert list(slope.dims) == [6, 1, 1]
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(m, {"x": x})[0], atol=1e-5)

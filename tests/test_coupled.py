"""Coupled groups on real exporters' graphs: residual streams, inverted residuals, C2f, squeeze-excitation,
gated FFNs, and a tf2onnx-style NHWC graph; one keep-mask per set, exact removal of dead channels."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.rewrite import apply_masks
from conftest import run_model
from coupled_models import (LlamaBlock, MobileNetV2ish, ResNet, SqueezeExcite, YoloNeck, export_image, randomise_bn,
                            silence, silence_ffn)


def build(case):
    torch.manual_seed(0)
    if case == "resnet basic":
        net = ResNet("basic")
        dead = lambda n: n.silence_streams([1, 5], [2, 9])  # noqa: E731
        removed = 2 + 2
    elif case == "resnet bottleneck":
        net = ResNet("bottleneck")
        dead = lambda n: n.silence_streams([3], [0, 7, 30])  # noqa: E731
        removed = 1 + 3
    elif case == "mobilenetv2":
        net = MobileNetV2ish()
        dead = lambda n: n.silence_stream([2, 6])  # noqa: E731
        removed = 2
    elif case.startswith("c2f"):
        net = YoloNeck(split=case.split()[1])
        dead = lambda n: n.silence(first_half=[1], second_half=[2, 5])  # noqa: E731
        removed = 3
    else:
        net = SqueezeExcite()

        def dead(n):
            silence(n.conv, n.bn, [3], negative=True)
        removed = 1
    randomise_bn(net)
    dead(net)
    return net.eval(), removed


IMAGE_CASES = ["resnet basic", "resnet bottleneck", "mobilenetv2", "c2f split", "c2f slice", "squeeze excitation"]


def assert_explained(groups):
    for g in groups:
        if not g.prunable:
            assert str(g.reason) and g.reason.kind, g
            assert g.to_dict()["skip"]["message"] == str(g.reason)


def members_kept(model, group):
    """The number of output channels each producer of the group has in `model` (same node order)."""
    out = []
    inits = {t.name: t for t in model.graph.initializer}
    for node, _, _ in group.producers:
        n = model.graph.node[node]
        w = inits.get(n.input[1])
        out.append(None if w is None else (w.dims[0] if n.op_type == "Conv" else w.dims[1]))
    return out


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("case", IMAGE_CASES)
def test_coupled_cnn_blocks_are_pruned_with_one_mask(tmp_path, case, dynamo):
    net, removed = build(case)
    path = export_image(net, tmp_path / "net.onnx", dynamo)
    groups = onnxprune.inspect(path)
    assert_explained(groups)
    convs = [g for g in groups if g.producer_op == "Conv"]
    assert convs and all(g.prunable for g in convs), [(g.id, str(g.reason)) for g in convs]
    assert any(len(g.producers) > 1 for g in convs)  # residual stream / C2f / SE gate
    x = np.random.default_rng(0).standard_normal((24, 3, 12, 12)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    out = tmp_path / "dead.onnx"
    result = onnxprune.prune(path, {"image": x}, criterion="dead", output=out)  # dynamo: maybe external data
    onnx.checker.check_model(str(out), full_check=True)
    assert result.report.neurons_removed >= removed
    np.testing.assert_allclose(run_model(onnx.load(str(out)), {"image": x})[0], expected, atol=1e-4, rtol=1e-4)

    # a fixed fraction: every member of a coupled set keeps the same channels, and the model is valid
    model = onnx.load(str(path))
    cut = onnxprune.prune(model, {"image": x}, fraction=0.3, compensation="fold")
    onnx.checker.check_model(cut.model, full_check=True)
    assert run_model(cut.model, {"image": x})[0].shape == expected.shape
    kept = {g.id: g.neurons_after for g in cut.report.groups}
    for g in groups:
        if g.prunable and len(g.producers) > 1:
            sizes = members_kept(cut.model, g)
            full = [size for _, _, size in g.producers]
            # a member covering the whole set keeps exactly the set's kept count
            assert all(s == kept[g.id] for s, f in zip(sizes, full) if f == g.size), (g.id, sizes, kept[g.id])


def test_a_coupled_set_gets_one_mask_on_every_member(tmp_path):
    net, _ = build("resnet basic")
    path = export_image(net, tmp_path / "r.onnx", dynamo=False)
    model = onnx.load(str(path))
    groups = onnxprune.find_groups(model)
    stream = max(groups, key=lambda g: len(g.producers))
    assert len(stream.producers) == 3 and stream.size == 8  # stem + two blocks' conv2
    keep = np.ones(stream.size, bool)
    keep[[0, 3, 4]] = False
    new = apply_masks(model, groups, {stream.id: keep})
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pruned = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    for node, _, _ in stream.producers:
        w = model.graph.node[node].input[1]
        np.testing.assert_array_equal(pruned[w], inits[w][keep])
    for c in stream.consumer_info.values():  # first convs of both blocks and of the next stage's block
        w = model.graph.node[c.node].input[1]
        np.testing.assert_array_equal(pruned[w], inits[w][:, keep])
    onnx.checker.check_model(new, full_check=True)


def test_c2f_split_sizes_follow_the_kept_channels(tmp_path):
    net, _ = build("c2f split")
    path = export_image(net, tmp_path / "c.onnx", dynamo=False)
    model = onnx.load(str(path))
    groups = onnxprune.find_groups(model)
    cv1 = next(g for g in groups if len(g.producers) == 2)
    assert cv1.size == 16 and sorted(offset for _, offset, _ in cv1.producers) == [0, 8]
    cv2 = next(c for c in cv1.consumer_info.values() if c.width == 24)  # Concat of [y0, y1, m(y1)]
    assert [(s.lo, s.hi) for s in cv2.layout] == [(0, 8), (8, 16), (8, 16)]
    keep = np.ones(16, bool)
    keep[[1, 9, 10]] = False
    new = apply_masks(model, groups, {cv1.id: keep})
    split = next(n for n in new.graph.node if n.op_type == "Split")
    sizes = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == split.input[1])).tolist()
    assert sizes == [7, 6]
    x = np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    assert run_model(new, {"image": x})[0].shape == (4, 10)


LLAMA_ACTS = ["silu", "gelu", "gelu_tanh"]


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("act", LLAMA_ACTS)
def test_gated_ffn_gate_and_up_share_one_mask(tmp_path, act, dynamo):
    torch.manual_seed(0)
    net = LlamaBlock(act=act).eval()
    silence_ffn(net.ffn, [3, 17, 30])
    path = tmp_path / "llama.onnx"
    example = (torch.randn(2, 5, 16),)
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
        torch.onnx.export(net, example, str(path), dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: batch, 1: seq},))
    else:
        torch.onnx.export(net, example, str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}})
    groups = onnxprune.inspect(path)
    assert_explained(groups)
    prunable = [g for g in groups if g.prunable and g.kind == "neurons"]
    assert len(prunable) == 1, [(g.id, str(g.reason)) for g in groups]
    ffn = prunable[0]
    assert len(ffn.producers) == 2 and ffn.size == 32 and len(ffn.consumers) == 1
    reasons = " | ".join(str(g.reason) for g in groups if not g.prunable)
    assert "outside" in reasons  # o and down add onto the residual stream
    x = np.random.default_rng(0).standard_normal((6, 7, 16)).astype(np.float32)
    result = onnxprune.prune(path, {"x": x}, criterion="dead")
    assert result.report.neurons_removed == 3
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], net(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-4, rtol=1e-4)
    refit = onnxprune.prune(path, {"x": x}, fraction=0.25, compensation="refit")
    assert refit.report.groups[[g.id for g in groups].index(ffn.id)].compensation in (["refit"], ["fold"])
    onnx.checker.check_model(refit.model, full_check=True)


def nhwc_resnet(dead=(2, 5)):
    """tf2onnx's layout: an NHWC input transposed to NCHW, Convs in NCHW, a residual Add, pooled head."""
    rng = np.random.default_rng(4)

    def conv_w(c_out, c_in, k=3):
        return (rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32)

    w0, w1, w2 = conv_w(8, 3), conv_w(8, 8), conv_w(8, 8)
    b0, b1, b2 = (0.1 * rng.standard_normal(8).astype(np.float32) for _ in range(3))
    for j in dead:  # stream channel j: 0 after the stem's Relu, and the block adds exactly 0 to it
        b0[j] = -1e4
        w2[j] = 0
        b2[j] = 0
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w0, "W0"), (b0, "B0"), (w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"),
              ((rng.standard_normal((8, 10)) / 3).astype(np.float32), "Wfc"), (np.zeros(10, np.float32), "Bfc"),
              (np.array([-1, 8], np.int64), "flat_shape"))]
    pads = dict(pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Transpose", ["input_1"], ["nchw"], name="StatefulPartitionedCall/transpose",
                              perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "W0", "B0"], ["c0"], name="model/conv0/BiasAdd", **pads),
             helper.make_node("Relu", ["c0"], ["r0"], name="model/conv0/Relu"),
             helper.make_node("Conv", ["r0", "W1", "B1"], ["c1"], name="model/conv1/BiasAdd", **pads),
             helper.make_node("Relu", ["c1"], ["r1"], name="model/conv1/Relu"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="model/conv2/BiasAdd", **pads),
             helper.make_node("Add", ["c2", "r0"], ["s"], name="model/add/add"),
             helper.make_node("Relu", ["s"], ["r"], name="model/relu/Relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="model/pool"),
             helper.make_node("Reshape", ["p", "flat_shape"], ["f"], name="model/flatten"),
             helper.make_node("Gemm", ["f", "Wfc", "Bfc"], ["logits"], name="model/dense/MatMul")]
    graph = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT,
                                                                              ["unk__1", 10, 10, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__2", 10])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.checker.check_model(m, full_check=True)
    return m


def test_tf2onnx_style_nhwc_residual(tmp_path):
    model = nhwc_resnet()
    groups = {g.id: g for g in onnxprune.inspect(model)}
    stream = groups["model/conv0/BiasAdd"]
    assert stream.prunable and stream.producer_names == ["model/conv0/BiasAdd", "model/conv2/BiasAdd"]
    assert sorted(stream.consumers) == ["model/conv1/BiasAdd", "model/dense/MatMul"]
    assert groups["model/conv1/BiasAdd"].prunable
    x = np.random.default_rng(2).standard_normal((16, 10, 10, 3)).astype(np.float32)
    out = tmp_path / "p.onnx"
    result = onnxprune.prune(model, {"input_1": x}, criterion="dead", output=out)
    onnx.checker.check_model(str(out), full_check=True)
    assert next(g for g in result.report.groups if g.id == stream.id).neurons_after == 6
    np.testing.assert_allclose(run_model(onnx.load(str(out)), {"input_1": x})[0],
                               run_model(model, {"input_1": x})[0], atol=1e-5)


def test_chunk_sizes_computed_from_the_shape_are_skipped(tmp_path):
    """TorchScript writes chunk(2) as Slices whose bounds are computed from Shape: pruning the two halves
    unequally would make them cut in the wrong place, so the set is skipped, with that reason."""
    net, _ = build("c2f chunk")
    path = export_image(net, tmp_path / "c.onnx", dynamo=False)
    groups = onnxprune.inspect(path)
    assert_explained(groups)
    cv1 = next(g for g in groups if "cv1" in g.id and "m." not in g.id)
    assert not cv1.prunable and cv1.reason.kind == "shape-read" and "Shape" in cv1.reason
    x = np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)
    result = onnxprune.prune(path, {"image": x}, criterion="dead")
    assert next(g for g in result.report.groups if g.id == cv1.id).neurons_after == cv1.size
    np.testing.assert_allclose(run_model(result.model, {"image": x})[0], net(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-4, rtol=1e-4)


def test_a_coupled_neuron_costs_every_member_and_objective_macs_prunes_it(tmp_path):
    from onnxprune.bench import node_macs

    model = nhwc_resnet(dead=())
    x = np.random.default_rng(3).standard_normal((40, 10, 10, 3)).astype(np.float32)
    groups = {g.id: g for g in onnxprune.inspect(model)}
    stream = groups["model/conv0/BiasAdd"]
    macs = node_macs(model, {"input_1": x[:1]})
    # producers conv0 and conv2, consumers conv1 and the dense head: each neuron is 1/8 of each
    expected = sum(macs[i] for i in (1, 3, 5, 10)) / 8
    np.testing.assert_allclose(stream.neuron_costs(macs), np.full(8, expected))
    result = onnxprune.prune(model, {"input_1": x}, fraction=0.4, objective="macs", align=1, compensation="fold")
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.macs_after < result.report.macs_before
    assert next(g for g in result.report.groups if g.id == stream.id).producers == stream.producer_names


def test_variadic_sum_of_three_branches_is_one_group():
    """Sum(a, b, c) of three Gemms' outputs: all three producers lose the same columns."""
    rng = np.random.default_rng(5)
    w = [(rng.standard_normal((4, 6)) / 2).astype(np.float32) for _ in range(3)]
    for m in w:
        m[:, 2] = 0  # feature 2 is exactly zero in every branch
    inits = [numpy_helper.from_array(m, f"W{k}") for k, m in enumerate(w)]
    inits.append(numpy_helper.from_array((rng.standard_normal((6, 2)) / 2).astype(np.float32), "Wout"))
    nodes = [helper.make_node("MatMul", ["x", f"W{k}"], [f"h{k}"], name=f"branch{k}") for k in range(3)]
    nodes += [helper.make_node("Sum", ["h0", "h1", "h2"], ["s"], name="sum"),
              helper.make_node("MatMul", ["s", "Wout"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    group = onnxprune.inspect(model)[0]
    assert group.prunable and group.producer_names == ["branch0", "branch1", "branch2"]
    x = rng.standard_normal((30, 4)).astype(np.float32)
    result = onnxprune.prune(model, {"x": x}, criterion="dead")
    assert result.report.groups[0].neurons_after == 5
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(model, {"x": x})[0], atol=1e-5)


def test_a_residual_stream_through_layernorm_says_so():
    """Post-norm: y = LayerNorm(r + f(r)) read by the next layer; the stream is not sliceable through the norm."""
    from graphs import HIDDEN, layer1, layer2, model as make_model, weights, const

    n1, i1 = layer1()
    n2, i2 = layer2("ln")
    nodes = n1 + [helper.make_node("LayerNormalization", ["h", "ln_s0", "ln_b0"], ["r"], name="ln0", axis=-1),
                  helper.make_node("Gemm", ["r", "Wm", "bm"], ["m"], name="ffn"),
                  helper.make_node("Add", ["m", "r"], ["sum"], name="residual"),
                  helper.make_node("LayerNormalization", ["sum", "ln_s1", "ln_b1"], ["ln"], name="ln1", axis=-1)] + n2
    inits = i1 + i2 + [weights("Wm", HIDDEN, HIDDEN), const("bm", np.zeros(HIDDEN))]
    inits += [const(f"ln_{k}{j}", np.ones(HIDDEN) if k == "s" else np.zeros(HIDDEN)) for k in "sb" for j in "01"]
    groups = {g.id: g for g in onnxprune.inspect(make_model(nodes, inits))}
    reason = groups["ffn"].reason
    assert reason.kind == "outside" and "ln0 (LayerNormalization), which normalises across features" in reason
    assert "normalises across features" in groups["gemm1"].reason

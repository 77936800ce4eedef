"""Graphs nobody wrote for us: PyTorch's two exporters, scikit-learn's converter, exporter quirks."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from conftest import run_model
from graphs import DEAD, HIDDEN, IN, OUT, const, first_bias, layer1, layer2, model, weights

import torch  # noqa: E402  (the test extra installs it; a missing install must fail, not skip)
from torch_models import encoder, encoder_inputs, export  # noqa: E402

ENC_NAMES = (["input_ids", "attention_mask"], ["hidden"])
ENC_DYNAMIC = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
FFN_DEAD = (3, 7, 11)


def assert_every_skip_has_a_reason(groups):
    for g in groups:
        assert g.prunable or (g.reason and len(g.reason) > 10), g


def assert_dead_removed_exactly(model, feeds, groups_expected, atol=1e-5, **kwargs):
    result = onnxprune.prune(model, feeds, criterion="dead", **kwargs)
    assert result.validation.passed, result.validation.failures
    by_name = {g.name: g for g in result.report.groups}
    for name, at_least in groups_expected.items():
        g = by_name[name]
        assert g.neurons_before - g.neurons_after >= at_least, g
    onnx.checker.check_model(result.model, full_check=True)
    inputs = {k: v for k, v in feeds.items() if k != "labels"}
    for before, after in zip(run_model(model, inputs), run_model(result.model, inputs)):
        if isinstance(before, list):  # ZipMap: a list of {class: probability}
            before = np.array([[row[k] for k in sorted(row)] for row in before])
            after = np.array([[row[k] for k in sorted(row)] for row in after])
        np.testing.assert_allclose(after, before, atol=atol, rtol=1e-4)
    return result


ENCODER_CASES = {
    "torchscript erf gelu": dict(dynamo=False, opset=17),
    "torchscript tanh gelu": dict(dynamo=False, opset=17, approximate="tanh"),
    "dynamo gelu op": dict(dynamo=True),
    "dynamo external data": dict(dynamo=True, external_data=True),
}


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_bert_like_encoder_ffn_blocks(tmp_path, case):
    options = dict(ENCODER_CASES[case])
    approximate = options.pop("approximate", "none")
    net = encoder(dead=FFN_DEAD, approximate=approximate)
    ids, mask = encoder_inputs()
    path = export(net, (ids, mask), tmp_path / "enc.onnx", names=ENC_NAMES, dynamic=ENC_DYNAMIC, **options)
    if options.get("external_data"):
        assert (tmp_path / "enc.onnx.data").exists()
    groups = onnxprune.inspect(path)
    assert_every_skip_has_a_reason(groups)
    ffn = [g for g in groups if g.prunable and g.kind == "neurons"]
    assert len(ffn) == 2 and all(g.size == 64 for g in ffn)
    heads = [g for g in groups if g.prunable and g.kind == "heads"]  # q, k, v and out of each layer
    assert len(heads) == 2 and all(len(g.producers) == 3 and len(g.consumers) == 1 for g in heads)
    reasons = " | ".join(g.reason for g in groups if not g.prunable)
    assert "residual" in reasons  # out and ffn_out feed the residual stream, which LayerNorm normalises
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    stats = onnxprune.statistics(path, feeds, mask="attention_mask")
    assert all(s.count == int(mask.sum()) for s in stats.values())  # padding left out
    out = tmp_path / "pruned.onnx"
    result = onnxprune.prune(path, feeds, criterion="dead", mask="attention_mask", output=out)
    for g in result.report.groups:
        if g.prunable and g.kind == "neurons":
            assert g.neurons_before - g.neurons_after >= len(FFN_DEAD)
        elif g.prunable:  # no head is dead: every head stays
            assert g.heads_before == g.heads_after == 4
    onnx.checker.check_model(str(out), full_check=True)
    if options.get("external_data"):
        assert (tmp_path / "pruned.onnx.data").exists()
    expected = net(ids, mask).detach().numpy()
    np.testing.assert_allclose(run_model(out, feeds)[0], expected, atol=2e-4)


def test_encoder_budget_uses_cosine_similarity(tmp_path):
    net = encoder(seed=1)
    ids, mask = encoder_inputs(n=40)
    path = export(net, (ids, mask), tmp_path / "enc.onnx", names=ENC_NAMES, dynamic=ENC_DYNAMIC, dynamo=False)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    result = onnxprune.prune(path, feeds, mask="attention_mask", metric="cosine", min_cosine=0.99)
    assert result.report.settings["metric"] == "cosine"
    out = result.report.validation["outputs"][0]
    assert out["cosine_mean"] >= 0.99 and out["cosine_min"] <= out["cosine_mean"]
    figure = result.report.certified[0]  # cross-fitted on both halves: every sample judged a candidate
    assert figure["metric"] == "cosine" and 1 - figure["bound"] >= 0.99 and figure["samples"] == 40


ACTIVATIONS = {
    "gelu": lambda n: torch.nn.GELU(),
    "gelu tanh": lambda n: torch.nn.GELU(approximate="tanh"),
    "silu": lambda n: torch.nn.SiLU(),
    "hardswish": lambda n: torch.nn.Hardswish(),
    "prelu per channel": lambda n: torch.nn.PReLU(n, init=0.3),
    "relu6 (clip)": lambda n: torch.nn.ReLU6(),
    "elu": lambda n: torch.nn.ELU(),
    "leaky relu": lambda n: torch.nn.LeakyReLU(0.05),
    "mish": lambda n: torch.nn.Mish(),
    "tanh": lambda n: torch.nn.Tanh(),
}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_with_each_activation_form(tmp_path, activation, dynamo):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 24), ACTIVATIONS[activation](24), torch.nn.Linear(24, 4)).eval()
    with torch.no_grad():  # zero pre-activation: every one of these activations gives exactly 0
        net[0].weight[[2, 5, 9]] = 0
        net[0].bias[[2, 5, 9]] = 0
    x = torch.randn(3, 10)
    path = tmp_path / "m.onnx"
    if dynamo:
        torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    groups = onnxprune.inspect(path)
    assert groups[0].prunable, groups[0].reason
    feeds = {"x": np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)}
    assert_dead_removed_exactly(onnx.load(str(path)), feeds, {groups[0].name: 3})


def test_scikit_learn_mlp_classifier_with_zipmap():
    import skl2onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=60, random_state=0).fit(x[:1000], digits.target[:1000])
    clf.intercepts_[0][[1, 4, 6]] = -1e4  # dead after ReLU
    onx = skl2onnx.convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))])
    assert "ZipMap" in [n.op_type for n in onx.graph.node]
    groups = onnxprune.inspect(onx)
    assert_every_skip_has_a_reason(groups)
    assert [g.prunable for g in groups] == [True, True, False]
    feeds = {"input": x[1000:1300]}
    result = assert_dead_removed_exactly(onx, {**feeds, "labels": digits.target[1000:1300]}, {groups[0].name: 3})
    acc = result.report.validation["accuracy"]
    assert acc["before"] == acc["after"] > 0.8
    # a budget run compares the ZipMap probabilities too
    assert onnxprune.prune(onx, {**feeds, "labels": digits.target[1000:1300]}).validation.passed


# ---- hand-made quirks ------------------------------------------------------------------------


def quirk_transposed_weight():
    """The consumer's weight is Transpose(constant [OUT, HIDDEN])."""
    n1, i1 = layer1()
    w2 = np.random.default_rng(1).standard_normal((OUT, HIDDEN)).astype(np.float32)
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Transpose", ["W2t"], ["W2"], name="t", perm=[1, 0]),
                  helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    return model(nodes, i1 + [numpy_helper.from_array(w2, "W2t")])


def quirk_identities():
    """Identity on the producer's weight, on the bias, and between ops; a [1, N] bias."""
    w1 = weights("W1raw", IN, HIDDEN)
    b = numpy_helper.to_array(first_bias("x")).reshape(1, HIDDEN)
    nodes = [helper.make_node("Identity", ["W1raw"], ["W1"], name="id_w"),
             helper.make_node("MatMul", ["x", "W1"], ["m"], name="mm1"),
             helper.make_node("Identity", ["b1raw"], ["b1"], name="id_b"),
             helper.make_node("Add", ["m", "b1"], ["h"], name="bias"),
             helper.make_node("Identity", ["h"], ["hi"], name="id_h"),
             helper.make_node("Relu", ["hi"], ["r"], name="relu")] + layer2()[0]
    return model(nodes, [w1, numpy_helper.from_array(b, "b1raw")] + layer2()[1])


def quirk_microsoft_fused():
    """onnxruntime's fused BiasGelu and FastGelu (com.microsoft) with per-feature biases."""
    w1 = weights("W1", IN, HIDDEN)
    b = numpy_helper.to_array(first_bias("x"))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"], name="mm1"),
             helper.make_node("BiasGelu", ["m", "b1"], ["g"], name="biasgelu", domain="com.microsoft"),
             helper.make_node("FastGelu", ["g", "fb"], ["r"], name="fastgelu", domain="com.microsoft")] + layer2()[0]
    return model(nodes, [w1, numpy_helper.from_array(b, "b1"), const("fb", np.zeros(HIDDEN))] + layer2()[1],
                 domains=("com.microsoft",))


QUIRKS = {"transposed weight": quirk_transposed_weight, "identities": quirk_identities,
          "com.microsoft fused": quirk_microsoft_fused}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_quirks_are_handled(quirk):
    m = QUIRKS[quirk]()
    groups = onnxprune.inspect(m)
    assert groups[0].prunable, groups[0].reason
    feeds = {"x": np.random.default_rng(2).standard_normal((50, IN)).astype(np.float32)}
    result = assert_dead_removed_exactly(m, feeds, {groups[0].name: len(DEAD)})
    refit = onnxprune.prune(m, feeds, fraction=0.5)  # folding and refit go through the same views
    onnx.checker.check_model(refit.model, full_check=True)


def quirk_dequantized_weight():
    n1, i1 = layer1()
    q = numpy_helper.from_array(np.random.default_rng(0).integers(-8, 8, (HIDDEN, OUT)).astype(np.int8), "W2q")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("DequantizeLinear", ["W2q", "scale"], ["W2"], name="dq"),
                  helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    return model(nodes, i1 + [q, const("scale", 0.05)])


def quirk_cast_mul_weight():
    n1, i1 = layer1()
    q = numpy_helper.from_array(np.random.default_rng(0).integers(-8, 8, (HIDDEN, OUT)).astype(np.int8), "W2q")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Cast", ["W2q"], ["W2f"], name="cast", to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["W2f", "scale"], ["W2"], name="scale_mul"),
                  helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    return model(nodes, i1 + [q, const("scale", 0.05)])


def quirk_blocked_dequantized_weight():
    """Blocked quantisation (opset 21): a scale per block of 2 input rows, which onnxprune does not cut."""
    n1, i1 = layer1()
    q = numpy_helper.from_array(np.random.default_rng(0).integers(-8, 8, (HIDDEN, OUT)).astype(np.int8), "W2q")
    scale = numpy_helper.from_array(np.full((HIDDEN // 2, OUT), 0.05, np.float32), "scale")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("DequantizeLinear", ["W2q", "scale"], ["W2"], name="dq", axis=0, block_size=2),
                  helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    return model(nodes, i1 + [q, scale], opset=21)


# weights stored as integers, dequantised on the way (tests/test_quantized.py prunes real exports)
QUIRKS.update({"dequantized weight": quirk_dequantized_weight, "cast-mul weight": quirk_cast_mul_weight})


def trap_decomposed_layernorm():
    n1, i1 = layer1()
    nodes = n1 + [
        helper.make_node("ReduceMean", ["h"], ["mu"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="var", axes=[-1]),
        helper.make_node("Sqrt", ["var"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
        helper.make_node("Relu", ["n"], ["r"], name="relu")] + layer2()[0]
    return model(nodes, i1 + [const("two", 2.0)] + layer2()[1], opset=13)


def trap_transpose():
    n1, i1 = layer1()
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r0"], name="relu"),
                  helper.make_node("Transpose", ["r0"], ["t"], name="transpose", perm=[1, 0]),
                  helper.make_node("Transpose", ["t"], ["r"], name="back", perm=[1, 0])] + layer2()[0]
    return model(nodes, i1 + layer2()[1])


SKIPPED = {
    "blocked dequantized weight": (quirk_blocked_dequantized_weight, 1, "DequantizeLinear"),
    "decomposed layernorm": (trap_decomposed_layernorm, 0, "ReduceMean"),
    "transpose": (trap_transpose, 0, "Transpose"),
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_unsupported_patterns_are_skipped_with_reason_and_outputs_bit_identical(case):
    build, which, word = SKIPPED[case]
    m = build()
    groups = onnxprune.inspect(m)
    assert not groups[which].prunable and word in groups[which].reason, groups[which].reason
    feeds = {"x": np.random.default_rng(3).standard_normal((40, IN)).astype(np.float32)}
    result = onnxprune.prune(m, feeds, criterion="dead")
    if which == 1:  # the first layer's consumer is the quantised one: nothing to prune there either
        assert not groups[0].prunable
    for before, after in zip(run_model(m, feeds), run_model(result.model, feeds)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("opset", range(11, 22))
def test_opsets_11_to_21(opset):
    n1, i1 = layer1()
    clip_inputs = ["h", "lo", "hi"] if opset >= 11 else ["h"]
    nodes = n1 + [helper.make_node("Clip", clip_inputs, ["c"], name="clip"),
                  helper.make_node("Relu", ["c"], ["r"], name="relu")] + layer2()[0]
    m = model(nodes, i1 + [const("lo", -6.0), const("hi", 6.0)] + layer2()[1], opset=opset)
    feeds = {"x": np.random.default_rng(4).standard_normal((30, IN)).astype(np.float32)}
    result = assert_dead_removed_exactly(m, feeds, {"gemm1": len(DEAD)})
    assert result.model.opset_import[0].version == opset


def test_fixed_batch_of_one_model_is_fed_sample_by_sample():
    n1, i1 = layer1()
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu")] + layer2()[0]
    graph = helper.make_graph(nodes, "b1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])], i1 + layer2()[1])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.random.default_rng(5).standard_normal((25, IN)).astype(np.float32)}
    result = onnxprune.prune(m, feeds, criterion="dead")
    assert result.validation.passed and result.report.groups[0].neurons_after == HIDDEN - len(DEAD)
    for i in range(25):
        one = {"x": feeds["x"][i:i + 1]}
        np.testing.assert_allclose(run_model(result.model, one)[0], run_model(m, one)[0], atol=1e-5)
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, IN]

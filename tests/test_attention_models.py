"""The attention test models (tests/attention_models.py): each is valid ONNX, runs in onnxruntime on its
sample data, is shaped as its HeadLayout says, and a silenced head contributes exactly nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import attention_models as am

pytest.importorskip("torch")

# exports that take about a second or more (dynamo, transformers, the optimizer) run only with the slow set
FAST = {"encoder_dynamic", "encoder_static", "sdpa_dynamic", "sdpa_static", "gqa_dynamic", "gqa_static",
        "handmade_Attention", "handmade_MultiHeadAttention", "encoder_dynamic_additive", "sdpa_dynamic_nomask"}
CASES = dict(am.all_cases())


def params(names):
    return [pytest.param(n, id=n, marks=() if n in FAST else pytest.mark.slow) for n in names]


def run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def built():
    cache: dict[str, am.AttentionCase] = {}

    def get(name):
        if name not in cache:
            cache[name] = CASES[name]()
        return cache[name]

    return get


@pytest.mark.parametrize("name", params(CASES))
def test_case_is_valid_and_runs_on_its_sample(built, name):
    case = built(name)
    onnx.checker.check_model(case.model, full_check=True)
    feeds = case.feeds(n=3, seq=10)
    assert sorted(feeds) == sorted(i.name for i in case.model.graph.input)
    out = run(case.model, feeds)
    n = case.batch or 3
    assert out.shape[0] == n and out.shape[-1] == case.layout.hidden
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", params(CASES))
def test_layout_matches_the_graph(built, name):
    case = built(name)
    layout = case.layout
    nodes = case.model.graph.node
    if layout.fused:
        fused = [n for n in nodes if n.op_type == layout.fused and n.domain == "com.microsoft"]
        assert len(fused) == layout.layers
        for n in fused:
            assert onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "num_heads")) == layout.heads
    else:
        assert sum(n.op_type == "Softmax" for n in nodes) == layout.layers
    projections = am.out_projections(case.model)
    assert len(projections) == layout.layers
    weights = {t.name: t for t in case.model.graph.initializer}
    for p in projections:
        assert list(weights[p].dims) == [layout.hidden, layout.hidden]


def test_packed_qkv_weight_of_the_fused_attention():
    case = am.handmade_case("Attention", hidden=32, heads=4)
    node = next(n for n in case.model.graph.node if n.op_type == "Attention")
    weights = {t.name: t for t in case.model.graph.initializer}
    assert list(weights[node.input[1]].dims) == [32, 96] and list(weights[node.input[2]].dims) == [96]


@pytest.mark.parametrize("exporter,target", [("dynamic", "Shape"), ("static", "const")])
def test_reshape_targets_as_the_docstring_says(built, exporter, target):
    """TorchScript with dynamic axes computes every head split/merge target from Shape; static ones are constants."""
    sources = am.describe(built(f"encoder_{exporter}").model)["reshape_target_from"]
    assert sources and all(target in key for key in sources), sources


def test_gqa_repeats_kv_with_expand_and_reshape(built):
    case = built("gqa_static")
    ops = am.op_counts(case.model)
    assert case.layout.kv_heads == 2 and case.layout.groups == 2
    assert ops["Expand"] == 2 * case.layout.layers  # K and V of each layer
    assert ops["MatMul"] == case.layout.layers * (4 + 3 + 2)  # q, k, v, o; gate, up, down; two attention matmuls


DEAD = {
    "encoder_dynamic": lambda: am.own_encoder_case("dynamic", dead={0: [1], 1: [3]}),
    "encoder_static": lambda: am.own_encoder_case("static", dead={0: [1], 1: [3]}),
    "sdpa_dynamic": lambda: am.own_encoder_case("dynamic", sdpa=True, dead={0: [1], 1: [3]}),
    "encoder_dynamic_additive": lambda: am.own_encoder_case("dynamic", mask="additive", dead={0: [1], 1: [3]}),
    "gqa_dynamic": lambda: am.own_decoder_case("dynamic", dead={0: [1], 1: [0]}),
    "handmade_Attention": lambda: am.handmade_case("Attention", dead=[1], mask=True),
    "handmade_MultiHeadAttention": lambda: am.handmade_case("MultiHeadAttention", dead=[1], mask=True),
    "encoder_dynamo": lambda: am.own_encoder_case("dynamo", dead={0: [1], 1: [3]}),
    "encoder_fused_Attention": lambda: am.fused_case("Attention", dead={0: [1], 1: [3]}),
    "encoder_fused_MultiHeadAttention": lambda: am.fused_case("MultiHeadAttention", dead={0: [1], 1: [3]}),
    "bert_dynamic": lambda: am.transformers_case("bert", "dynamic", dead={0: [1], 1: [3]}),
    "llama_dynamo": lambda: am.transformers_case("llama", "dynamo", dead={0: [1], 1: [0]}),
}
DEAD_HEADS = {"gqa_dynamic": {0: [1], 1: [0]}, "llama_dynamo": {0: [1], 1: [0]},
              "handmade_Attention": {0: [1]}, "handmade_MultiHeadAttention": {0: [1]}}


@pytest.mark.parametrize("name", params(DEAD))
def test_silenced_head_contributes_nothing(name):
    """Whatever the out-projection does with a silenced head's context, the output is the same: removing the
    head (its Q/K/V slices and those out-projection rows) must change nothing. A live head's rows do matter."""
    case = DEAD[name]()
    layout = case.layout
    dead = DEAD_HEADS.get(name, {0: [1], 1: [3]})
    feeds = case.feeds(n=4, seq=10)
    before = run(case.model, feeds)
    rows_of = lambda h: range(h * layout.groups * layout.head_dim, (h + 1) * layout.groups * layout.head_dim)  # noqa: E731
    scrambled = case.model
    for layer, weight in enumerate(am.out_projections(case.model)):
        for h in dead.get(layer, ()):
            scrambled = am.scramble_rows(scrambled, weight, rows_of(h), seed=layer)
    np.testing.assert_allclose(run(scrambled, feeds), before, rtol=0, atol=1e-6)
    live = next(h for h in range(layout.heads // layout.groups) if h not in dead[0])
    changed = am.scramble_rows(case.model, am.out_projections(case.model)[0], rows_of(live))
    assert np.abs(run(changed, feeds) - before).max() > 1e-3


def test_static_sample_keeps_the_exported_sequence(built):
    case = built("encoder_static")
    assert case.batch == 2
    assert case.feeds(n=7, seq=30)["x"].shape == (2, 12, 32)


def test_padding_mask_pads_tails_of_different_lengths():
    m = am.padding_mask(8, 12)
    assert m[0].all() and not m[1].all() and len({int(r.sum()) for r in m[:4]}) == 4
    assert all(np.all(np.diff(r) <= 0) for r in m)  # ones then zeros


def test_benchmark_mac_counter_splits_linear_and_attention(built):
    """benchmarks/attention.py counts Q K^T and P V apart from the weight MatMuls: 2 x heads x S x S x D each."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from attention import macs

    case = built("encoder_dynamic")  # hidden 32, 4 heads of 8, FFN 64, 2 layers
    counted = macs(case.model, case.feeds(n=3, seq=12))
    s, layout = 12, case.layout
    assert counted["attention"] == layout.layers * 2 * layout.heads * s * s * layout.head_dim
    assert counted["linear"] == layout.layers * s * (4 * 32 * 32 + 2 * 32 * 64)
    assert counted["total"] == counted["linear"] + counted["attention"]


def test_additive_and_binary_masks_give_the_same_outputs(built):
    binary, additive = built("encoder_dynamic"), built("encoder_dynamic_additive")
    feeds = binary.feeds(n=4, seq=10)
    bias = additive.feeds(n=4, seq=10)["attention_mask"]
    np.testing.assert_array_equal(bias[:, 0, 0] == 0, feeds["attention_mask"] == 1)
    np.testing.assert_allclose(run(additive.model, {"x": feeds["x"], "attention_mask": bias}),
                               run(binary.model, feeds), atol=1e-5)

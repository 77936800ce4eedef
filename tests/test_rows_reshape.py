"""Reshapes that only regroup the rows (a Linear on tokens flattened to 2-D and back, as transformers'
Conv1D and nn.MultiheadAttention's out-projection do): the features pass through, the target's feature
count follows the pruning (a private copy of a target Concat shared between layers)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from conftest import run_model

IN, H = 4, 6
DEAD = {"gemm1": [0, 3], "gemm2": [2]}


def _flattened_mlp() -> onnx.ModelProto:
    """x [B, S, 4] -> rows [-1, 4] -> Gemm1 -> back to [B, S, 6] -> Relu -> rows [-1, width read from its
    Shape] -> Gemm2 -> back to [B, S, 6] (the same target Concat as Gemm1's) -> Relu -> rows -> Gemm3."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    const("rows_in", [-1, IN], np.int64)
    const("feature", [H], np.int64)
    const("lead", [0], np.int64)
    const("lead_end", [2], np.int64)
    const("last", [-1], np.int64)
    const("minus_one", [-1], np.int64)
    nodes += [helper.make_node("Shape", ["x"], ["xs"], name="shape_x"),
              helper.make_node("Slice", ["xs", "lead", "lead_end"], ["bs"], name="batch_seq"),
              helper.make_node("Concat", ["bs", "feature"], ["back"], name="back", axis=0),  # shared by both
              helper.make_node("Reshape", ["x", "rows_in"], ["x2"], name="rows_x")]
    previous, width = "x2", IN
    for k, name in enumerate(("gemm1", "gemm2")):
        w = rng.standard_normal((width, H)) / np.sqrt(width)
        b = 0.1 * rng.standard_normal(H)
        b[DEAD[name]] = -1e4
        const(f"W{k}", w)
        const(f"b{k}", b)
        nodes += [helper.make_node("Gemm", [previous, f"W{k}", f"b{k}"], [f"g{k}"], name=name),
                  helper.make_node("Reshape", [f"g{k}", "back"], [f"t{k}"], name=f"tokens{k}"),
                  helper.make_node("Relu", [f"t{k}"], [f"r{k}"], name=f"relu{k}"),
                  helper.make_node("Shape", [f"r{k}"], [f"s{k}"], name=f"shape{k}"),
                  helper.make_node("Gather", [f"s{k}", "last"], [f"w{k}"], name=f"width{k}", axis=0),
                  helper.make_node("Concat", ["minus_one", f"w{k}"], [f"rows{k}"], name=f"rows_target{k}", axis=0),
                  helper.make_node("Reshape", [f"r{k}", f"rows{k}"], [f"f{k}"], name=f"rows{k}")]
        previous, width = f"f{k}", H
    const("W2", rng.standard_normal((H, 3)))
    const("b2", rng.standard_normal(3))
    nodes.append(helper.make_node("Gemm", [previous, "W2", "b2"], ["y"], name="gemm3"))
    graph = helper.make_graph(nodes, "flattened",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["BS", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_dead_neurons_behind_row_reshapes_go_exactly(tmp_path):
    model = _flattened_mlp()
    groups = {g.name: g for g in onnxprune.inspect(model)}
    assert groups["gemm1"].prunable and groups["gemm2"].prunable, (groups["gemm1"].reason, groups["gemm2"].reason)
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 5, IN)).astype(np.float32)}
    out = tmp_path / "p.onnx"
    result = onnxprune.prune(model, feeds, criterion="dead", output=out)
    kept = {g.name: g.neurons_after for g in result.report.groups if g.prunable}
    assert kept == {"gemm1": H - 2, "gemm2": H - 1}
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(model, feeds)[0], rtol=1e-5, atol=1e-5)
    pruned = onnx.load(str(out))
    targets = {n.name: n.input[1] for n in pruned.graph.node if n.name in ("tokens0", "tokens1")}
    assert len(set(targets.values())) == 2  # the shared target became one of its own per Reshape
    assert "back" not in {n.name for n in pruned.graph.node}  # and the shared one, read by nothing now, went
    inferred = onnx.shape_inference.infer_shapes(pruned, data_prop=True)
    sizes = {v.name: v.type.tensor_type.shape.dim[-1].dim_value for v in inferred.graph.value_info
             if v.name in ("t0", "t1")}
    assert sizes == {"t0": H - 2, "t1": H - 1}


def test_a_reshape_that_cuts_the_features_still_blocks():
    from graphs import TRAPS

    build, keyword = TRAPS["reshape"]
    first = onnxprune.inspect(build())[0]
    assert not first.prunable and keyword in first.reason


@pytest.mark.slow
def test_gpt2_feed_forward_neurons_and_heads_are_pruned(tmp_path):
    """transformers' GPT-2 (random weights, dynamo): Conv1D flattens tokens around addmm, and c_attn packs
    Q, K and V (split after the Reshape back to tokens, merged heads flattened straight to rows); silenced
    FFN neurons and heads of both layers come off with the outputs unchanged."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tf.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=16, vocab_size=50, n_inner=64,
                           attn_implementation="eager")
    gpt2 = tf.GPT2Model(config).eval()
    dead = {0: [1, 5, 9], 1: [0, 2, 63]}
    dead_heads = {0: [1], 1: [0, 3]}
    with torch.no_grad():
        for layer, idx in dead.items():
            gpt2.h[layer].mlp.c_fc.weight[:, idx] = 0.0
            gpt2.h[layer].mlp.c_fc.bias[idx] = 0.0  # GELU(0) = 0
        for layer, heads in dead_heads.items():
            c_attn = gpt2.h[layer].attn.c_attn  # Conv1D: weight [E, 3E] = [Wq | Wk | Wv]
            for h in heads:
                for part in range(3):
                    cols = slice(part * 32 + h * 8, part * 32 + (h + 1) * 8)
                    c_attn.weight[:, cols] = 0.0
                    c_attn.bias[cols] = 0.0

    class Last(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = gpt2

        def forward(self, ids):
            return self.inner(input_ids=ids, use_cache=False).last_hidden_state

    path = tmp_path / "gpt2.onnx"
    ids = torch.randint(0, 50, (2, 7))
    torch.onnx.export(Last().eval(), (ids,), str(path), input_names=["ids"], dynamo=True,
                      dynamic_shapes={"ids": {0: torch.export.Dim("B"), 1: torch.export.Dim("S", max=16)}})
    feeds = {"ids": np.random.default_rng(0).integers(0, 50, (40, 7)).astype(np.int64)}
    out = tmp_path / "p.onnx"
    result = onnxprune.prune(str(path), feeds, criterion="dead", output=out)
    ffn = sorted(g.neurons_after for g in result.report.groups if g.prunable and g.kind == "neurons")
    assert ffn == [61, 61]
    heads = sorted((g.heads_before, g.heads_after) for g in result.report.groups if g.kind == "heads")
    assert heads == [(4, 2), (4, 3)] and len(result.report.settings["split_projections"]) == 2
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(path, feeds)[0], rtol=1e-5, atol=1e-5)

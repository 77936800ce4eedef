"""Packed Q/K/V projections (timm's qkv, a chunked projection): split into one projection per part so
that their heads are pruned; left packed, with the head walk's reason, where the split would not help."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.groups import split_packed_heads
from onnxprune.unpack import unpack_qkv
from conftest import run_model

torch = pytest.importorskip("torch")

E, H, D = 32, 4, 8


class Block(torch.nn.Module):
    """x -> packed qkv -> attention -> out-projection -> ReLU -> Linear, with the parts selected
    the timm way (reshape [B, N, 3, H, D], permute, unbind) or by chunks of the feature axis."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.qkv = torch.nn.Linear(E, 3 * E)
        self.proj = torch.nn.Linear(E, E)
        self.fc = torch.nn.Linear(E, E)

    def forward(self, x):
        b, n, c = x.shape
        if self.form == "timm":
            q, k, v = self.qkv(x).reshape(b, n, 3, H, c // H).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (t.reshape(b, n, H, c // H).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        a = ((q @ k.transpose(-2, -1)) * (c // H) ** -0.5).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(b, n, c)
        return x + self.fc(torch.relu(self.proj(y)))


class Net(torch.nn.Module):
    def __init__(self, form: str, dead: dict[int, list[int]] | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = torch.nn.ModuleList([Block(form), Block(form)])
        with torch.no_grad():
            for layer, heads in (dead or {}).items():
                qkv = self.blocks[layer].qkv
                for h in heads:  # no query, key or value for the head: its context is exactly zero
                    for part in range(3):
                        cols = slice(part * E + h * D, part * E + (h + 1) * D)
                        qkv.weight[cols] = 0.0
                        qkv.bias[cols] = 0.0

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def export(net, path, dynamo: bool) -> str:
    x = torch.randn(2, 5, E)
    if dynamo:
        dims = {"x": {0: torch.export.Dim("B"), 1: torch.export.Dim("N", min=2, max=64)}}
        torch.onnx.export(net.eval(), (x,), str(path), input_names=["x"], dynamic_shapes=dims, dynamo=True)
    else:
        torch.onnx.export(net.eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "N"}}, dynamo=False, opset_version=17)
    return str(path)


def sample(n=120, seq=6, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, seq, E)).astype(np.float32)}


EXPORTS = [pytest.param(f, False, id=f"{f}-torchscript") for f in ("timm", "chunk")] + [
    pytest.param(f, True, id=f"{f}-dynamo", marks=pytest.mark.slow) for f in ("timm", "chunk")]


@pytest.mark.parametrize("form,dynamo", EXPORTS)
def test_split_projections_compute_the_same_outputs(tmp_path, form, dynamo):
    model = onnx.load(export(Net(form), tmp_path / "m.onnx", dynamo))
    split, found = unpack_qkv(model)
    assert len(found) == 2  # one packed projection per block
    onnx.checker.check_model(split, full_check=True)
    feeds = sample(n=4)
    np.testing.assert_allclose(run_model(split, feeds)[0], run_model(model, feeds)[0], rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMul") == [n.op_type for n in model.graph.node].count("MatMul") + 2 * 2
    assert {t.name for t in model.graph.initializer if list(t.dims) == [E, 3 * E]}.isdisjoint(
        t.name for t in split.graph.initializer)  # the packed weights are gone, not kept beside their parts


@pytest.mark.parametrize("form,dynamo", EXPORTS)
def test_silenced_heads_of_packed_projections_are_removed_exactly(tmp_path, form, dynamo):
    dead = {0: [1], 1: [0, 3]}
    path = export(Net(form, dead), tmp_path / "m.onnx", dynamo)
    feeds = sample()
    out = tmp_path / "pruned.onnx"
    result = onnxprune.prune(path, feeds, output=out, criterion="dead")
    assert len(result.report.settings["split_projections"]) == 2
    heads = sorted((g.heads_before, g.heads_after) for g in result.report.groups if g.kind == "heads")
    assert heads == [(4, 2), (4, 3)]
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(path, feeds)[0], rtol=1e-5, atol=1e-5)
    assert result.report.parameters_after < result.report.parameters_before


def test_inspect_lists_the_heads_of_a_packed_projection(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    path = export(Net("timm"), tmp_path / "m.onnx", dynamo=False)
    heads = [g for g in onnxprune.inspect(path) if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable and g.size == E and g.head_dim == D for g in heads)
    assert all(p.endswith("/MatMul") and "/part" in p for g in heads for p in g.producer_names)
    out = CliRunner().invoke(main, ["inspect", path]).output
    assert out.count("split for its heads:") == 2 and "4 heads of 8  prunable" in out


def test_without_heads_in_the_structures_nothing_is_split(tmp_path):
    path = export(Net("timm", {0: [1]}), tmp_path / "m.onnx", dynamo=False)
    result = onnxprune.prune(path, sample(), criterion="dead", structures="neurons")
    assert "split_projections" not in result.report.settings
    assert [n.op_type for n in result.model.graph.node].count("MatMul") == \
        [n.op_type for n in onnx.load(path).graph.node].count("MatMul")


def _handmade(reader: str) -> onnx.ModelProto:
    """x [N, 4] -> MatMul W [4, 3*M] (+ b) -> Split into three on the features -> q*k + v, where the
    packed output may also be read another way (`reader`)."""
    from onnx import TensorProto, helper, numpy_helper

    m = 6
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p0"], name="qkv"),
             helper.make_node("Add", ["p0", "b"], ["p"], name="qkv_bias")]
    if reader in ("slices", "shape"):
        for t in range(3):
            nodes.append(helper.make_node("Slice", ["p", f"s{t}", f"e{t}", "axis"], [f"part{t}"], name=f"slice{t}"))
    else:
        nodes.append(helper.make_node("Split", ["p", "sizes"], ["part0", "part1", "part2"], axis=-1, name="split"))
    nodes += [helper.make_node("Mul", ["part0", "part1"], ["qk"], name="qk"),
              helper.make_node("Add", ["qk", "part2"], ["y"], name="out")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])]
    if reader == "relu":
        nodes.append(helper.make_node("Relu", ["p"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 3 * m]))
    if reader == "shape":  # the packed width read for something other than the parts' bounds
        nodes.append(helper.make_node("Shape", ["p"], ["s"], name="shape"))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.INT64, [2]))
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3 * m)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(3 * m).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([m] * 3, np.int64), "sizes"),
             numpy_helper.from_array(np.array([-1], np.int64), "axis")]
    for t in range(3):
        inits += [numpy_helper.from_array(np.array([t * m], np.int64), f"s{t}"),
                  numpy_helper.from_array(np.array([(t + 1) * m], np.int64), f"e{t}")]
    graph = helper.make_graph(nodes, "packed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("reader", ["split", "slices"])
def test_feature_axis_selections_are_split(reader):
    model = _handmade(reader)
    split, found = unpack_qkv(model)
    assert list(found) == ["qkv"] and len(found["qkv"][1]) == 3
    onnx.checker.check_model(split, full_check=True)
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_model(split, feeds)[0], run_model(model, feeds)[0], rtol=1e-6)
    assert not {"Split", "Slice"} & {n.op_type for n in split.graph.node}


@pytest.mark.parametrize("reader", ["relu", "shape"])
def test_a_packed_output_read_another_way_stays_packed(reader):
    model = _handmade(reader)
    split, found = unpack_qkv(model)
    assert found == {} and split is model


@pytest.mark.slow
def test_multihead_attention_module_stays_packed(tmp_path):
    """nn.MultiheadAttention (dynamo) selects its parts through Unsqueeze/Transpose/Squeeze/Gather: the
    split is possible, but each part then reaches a no-op Reshape the head walk does not follow, so no
    head becomes prunable and the projection is left as it was."""

    class Mha(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = torch.nn.MultiheadAttention(E, H, batch_first=True)
            self.fc = torch.nn.Linear(E, E)

        def forward(self, x):
            return self.fc(self.m(x, x, x, need_weights=False)[0])

    model = onnx.load(export(Mha(), tmp_path / "m.onnx", dynamo=True))
    assert unpack_qkv(model)[1]  # splittable
    kept, _, groups, notes = split_packed_heads(model)
    assert kept is model and notes == [] and not any(g.kind == "heads" and g.prunable for g in groups)


def test_a_split_that_makes_no_head_prunable_is_undone():
    """Splitting the handmade projection gives no head group (there are no heads): it stays packed."""
    model = _handmade("split")
    kept, _, groups, notes = split_packed_heads(model)
    assert kept is model and notes == []


def test_an_ir3_model_keeps_its_initializers_listed_as_inputs():
    """Before IR 4 every initializer is also a graph input: the parts' are added as inputs too, and the
    packed weight goes with its input entry."""
    from onnx import helper

    model = _handmade("split")
    model.ir_version = 3
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 9))
    model.graph.node[2].ClearField("input")  # opset 9's Split: sizes as an attribute
    model.graph.node[2].input.append("p")
    model.graph.node[2].attribute.append(helper.make_attribute("split", [6, 6, 6]))
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    split, found = unpack_qkv(model)
    assert found
    onnx.checker.check_model(split)
    inits = {t.name for t in split.graph.initializer}
    assert inits <= {x.name for x in split.graph.input} and "W" not in {x.name for x in split.graph.input}
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_model(split, feeds)[0], run_model(model, feeds)[0], rtol=1e-6)


def test_a_failure_inside_the_split_leaves_the_model_packed(monkeypatch):
    import onnxprune.unpack as unpack

    def broken(*args, **kwargs):
        raise IndexError("a pattern misread")

    model = _handmade("split")
    monkeypatch.setattr(unpack, "unpack_qkv", broken)
    monkeypatch.delenv("ONNXPRUNE_DEBUG", raising=False)
    kept, _, groups, notes = split_packed_heads(model)
    assert kept is model and notes == [] and groups
    monkeypatch.setenv("ONNXPRUNE_DEBUG", "1")
    with pytest.raises(IndexError):
        split_packed_heads(model)


def test_a_packed_gemm_on_flattened_rows_is_split_with_its_reshape_back():
    """GPT-2's c_attn form: x [B, S, 4] -> rows -> Gemm(W [4, 3M], c) -> back to [B, S, 3M] (target Concat of
    the input's leading sizes and 3M) -> Split on the features. Each part gets a Gemm and a Reshape back
    with its own width."""
    from onnx import TensorProto, helper, numpy_helper

    m = 6
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3 * m)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(3 * m).astype(np.float32), "c"),
             numpy_helper.from_array(np.array([-1, 4], np.int64), "rows"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([3 * m], np.int64), "width")]
    nodes = [helper.make_node("Reshape", ["x", "rows"], ["x2"], name="flatten"),
             helper.make_node("Gemm", ["x2", "W", "c"], ["p2"], name="c_attn"),
             helper.make_node("Shape", ["x"], ["xs"], name="shape"),
             helper.make_node("Slice", ["xs", "zero", "two"], ["bs"], name="lead"),
             helper.make_node("Concat", ["bs", "width"], ["back"], name="back", axis=0),
             helper.make_node("Reshape", ["p2", "back"], ["p"], name="tokens"),
             helper.make_node("Split", ["p"], ["q", "k", "v"], axis=2, num_outputs=3, name="split"),
             helper.make_node("Mul", ["q", "k"], ["qk"], name="qk"),
             helper.make_node("Add", ["qk", "v"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "gemm_rows",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", m])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    split, found = unpack_qkv(model)
    assert list(found) == ["c_attn"] and len(found["c_attn"][1]) == 3
    onnx.checker.check_model(split, full_check=True)
    assert [n.op_type for n in split.graph.node].count("Gemm") == 3
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_model(split, feeds)[0], run_model(model, feeds)[0], rtol=1e-6)

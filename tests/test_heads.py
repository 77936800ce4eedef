"""Attention heads: found in decomposed attention from both PyTorch exporters, removed whole, exactly."""

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attention_models as am
import onnxprune
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.rewrite import apply_masks
from conftest import run_model

E, H = 32, 4
D = E // H


class Block(nn.Module):
    """Post-norm encoder block: separate q/k/v, an additive mask, out-projection, residual, ReLU FFN."""

    def __init__(self, sdpa=False, merge="reshape", full_mask=False):
        super().__init__()
        self.sdpa, self.merge, self.full_mask = sdpa, merge, full_mask
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(E, 64), nn.Linear(64, E)
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)

    def forward(self, x, mask):
        b, s, _ = x.shape
        q, k, v = (lin(x).view(b, s, H, D).transpose(1, 2) for lin in (self.q, self.k, self.v))
        bias = (1.0 - mask[:, None, None, :]) * -1e4
        if self.full_mask:  # onnxruntime's Attention op wants the mask's query axis spelt out
            bias = bias.expand(b, 1, s, s)
        if self.sdpa:
            c = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            c = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D) + bias, dim=-1) @ v
        c = c.transpose(1, 2).reshape(b, s, E) if self.merge == "reshape" else c.transpose(1, 2).flatten(2)
        h = self.ln1(x + self.o(c))
        return self.ln2(h + self.ff2(torch.relu(self.ff1(h))))


class Encoder(nn.Module):
    def __init__(self, layers=2, **options):
        super().__init__()
        self.blocks = nn.ModuleList(Block(**options) for _ in range(layers))
        self.head = nn.Linear(E, 3)

    def forward(self, x, mask):
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x.mean(dim=1))


def silence_head(block: Block, head: int, keep_bias: bool = True) -> None:
    """Make `head` contribute a constant: zero its Q/K/V weight columns (and, without keep_bias, biases)."""
    cols = slice(head * D, (head + 1) * D)
    with torch.no_grad():
        for lin in (block.q, block.k, block.v):
            lin.weight[cols] = 0
            if not keep_bias:
                lin.bias[cols] = 0


def inputs(n=24, s=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, s, E)).astype(np.float32)
    mask = np.ones((n, s), np.float32)
    mask[::3, -2:] = 0  # some padding
    return {"x": x, "mask": mask}


def export(net, path, dynamo: bool, opset: int | None = None, mask: bool = True):
    """Export with a dynamic batch and sequence: inputs x [B, S, E] and, with `mask`, mask [B, S]."""
    names = ["x", "mask"] if mask else ["x"]
    feeds = inputs(2, 5)
    example = tuple(torch.from_numpy(feeds[k]) for k in names)
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
        torch.onnx.export(net, example, str(path), dynamo=True, input_names=names, output_names=["y"],
                          dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), opset_version=opset)
    else:
        torch.onnx.export(net, example, str(path), dynamo=False, input_names=names, output_names=["y"],
                          dynamic_axes={k: {0: "batch", 1: "seq"} for k in names})
    return path


EXPORTS = {
    "torchscript": dict(dynamo=False),
    "torchscript sdpa": dict(dynamo=False, sdpa=True),
    "torchscript flatten": dict(dynamo=False, merge="flatten"),
    "dynamo": pytest.param(dict(dynamo=True), marks=pytest.mark.slow),
    # dynamo decomposes SDPA with Kᵀ = Reshape(Transpose(Reshape(k, [-1, S, D]))), sized by Shape(k): the
    # heads are folded into the batch axis and back
    "dynamo sdpa": pytest.param(dict(dynamo=True, sdpa=True), marks=pytest.mark.slow),
    # at opset 23 dynamo writes SDPA as ONNX's own Attention op on [B, H, S, D] heads
    "dynamo sdpa opset 23": pytest.param(dict(dynamo=True, sdpa=True, opset=23, full_mask=True),
                                         marks=pytest.mark.slow),
}


def _case(case):
    return case if isinstance(case, dict) else case.values[0]


@pytest.mark.parametrize("case", list(EXPORTS.values()), ids=list(EXPORTS))
@pytest.mark.parametrize("keep_bias", [False, True], ids=["zero head", "constant head"])
def test_silenced_head_is_removed_exactly(tmp_path, case, keep_bias):
    options = dict(_case(case))
    dynamo, opset = options.pop("dynamo"), options.pop("opset", None)
    torch.manual_seed(0)
    net = Encoder(**options).eval()
    silence_head(net.blocks[0], 2, keep_bias)
    silence_head(net.blocks[1], 0, keep_bias)
    silence_head(net.blocks[1], 3, keep_bias)
    path = export(net, tmp_path / "enc.onnx", dynamo, opset)
    if opset == 23:
        assert sum(n.op_type == "Attention" for n in onnx.load(path).graph.node) == 2
    groups = onnxprune.inspect(path)
    heads = [g for g in groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable and g.unit == D and g.size == E for g in heads), \
        [(g.id, str(g.reason)) for g in groups]
    assert all(len(g.producers) == 3 and len(g.consumers) == 1 and len(g.attention) == (1 if opset else 2)
               for g in heads)
    feeds = inputs()
    # a constant head (its V bias remains) has zero variance: folding its mean into the
    # out-projection's bias makes removing it exact; a zero head is exactly dead
    result = onnxprune.prune(path, feeds, criterion="seed", std_threshold=1e-6, compensation="fold",
                             structures=("heads",))
    kept = {g.id: (g.heads_before, g.heads_after) for g in result.report.groups if g.kind == "heads"}
    assert sorted(kept.values()) == [(4, 2), (4, 3)]
    onnx.checker.check_model(result.model, full_check=True)
    expected = net(*(torch.from_numpy(feeds[k]) for k in ("x", "mask"))).detach().numpy()
    np.testing.assert_allclose(run_model(result.model, feeds)[0], expected, atol=1e-5, rtol=1e-5)
    # the projections lost whole heads: q/k/v have 2 or 3 heads of columns, out-projections as many rows
    widths = sorted({d for t in result.model.graph.initializer for d in t.dims if d in (2 * D, 3 * D)})
    assert widths == [2 * D, 3 * D]


@pytest.mark.slow
def test_budget_mode_cuts_whole_heads_and_runs(tmp_path):
    torch.manual_seed(1)
    net = Encoder().eval()
    path = export(net, tmp_path / "enc.onnx", dynamo=False)
    feeds = inputs(64, 6, seed=3)
    result = onnxprune.prune(path, feeds, fraction=0.8, compensation="refit", objective="macs")
    heads = [g for g in result.report.groups if g.kind == "heads"]
    assert heads and all(g.neurons_after % D == 0 and 1 <= g.heads_after <= 4 for g in heads)
    assert sum(g.heads_after for g in heads) < 8  # 80 % of the neurons go: some heads with them
    onnx.checker.check_model(result.model, full_check=True)
    for n in (1, 5):  # other batch sizes and sequence lengths still run
        other = inputs(n, 9, seed=n)
        assert run_model(result.model, other)[0].shape == (n, 3)
    assert "heads" in result.report.format_table()


def test_partial_head_masks_are_refused(tmp_path):
    torch.manual_seed(0)
    path = export(Encoder(layers=1).eval(), tmp_path / "enc.onnx", dynamo=False)
    model = onnx.load(path)
    g = next(g for g in find_groups(model) if g.kind == "heads")
    mask = np.ones(g.size, bool)
    mask[3] = False  # one neuron of head 0, not the head
    with pytest.raises(ValueError, match="cuts a head"):
        apply_masks(model, find_groups(model), {g.id: mask})
    mask[:D] = False  # the whole head is fine
    pruned = apply_masks(model, find_groups(model), {g.id: mask})
    onnx.checker.check_model(pruned, full_check=True)


def test_structures_leave_heads_out(tmp_path):
    torch.manual_seed(0)
    net = Encoder(layers=1).eval()
    silence_head(net.blocks[0], 1, keep_bias=False)
    path = export(net, tmp_path / "enc.onnx", dynamo=False)
    result = onnxprune.prune(path, inputs(), criterion="dead", structures="neurons")
    heads = next(g for g in result.report.groups if g.kind == "heads")
    assert not heads.prunable and heads.skip["kind"] == "excluded"
    both = onnxprune.prune(path, inputs(), criterion="dead")
    assert next(g for g in both.report.groups if g.kind == "heads").heads_after == 3
    with pytest.raises(onnxprune.InputError, match="structures"):
        onnxprune.prune(path, inputs(), criterion="dead", structures=("heads", "layers"))


def test_heads_are_scored_as_units():
    """Every neuron of a head gets its head's score; thresholds take the head's max."""
    torch.manual_seed(0)
    from onnxprune.criteria import unit_scores

    class G:
        id, unit = "g", 4

        def unit_scores(self, s, how):
            from onnxprune.groups.model import NeuronGroup
            return NeuronGroup.unit_scores(self, s, how)

    scores = {"g": np.array([0, 0, 0, 4, 1, 1, 1, 1], float)}
    np.testing.assert_array_equal(unit_scores(scores, [G()], "contribution")["g"], [1, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(unit_scores(scores, [G()], "dead")["g"], [4, 4, 4, 4, 1, 1, 1, 1])


def test_head_count_read_at_run_time_is_skipped_with_reason():
    """A Reshape whose head count is computed from the features' own Shape cannot be rewritten."""
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 4, E])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 4, E])
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((E, E)).astype(np.float32), n) for n in "QVO"]
    inits += [onnx.numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("two", [2]), ("d", [D]), ("zero", [0, 0]), ("merge", [0, 0, E]))]
    nodes = [
        h.make_node("MatMul", ["x", "Q"], ["q"]), h.make_node("MatMul", ["x", "V"], ["v"]),
        h.make_node("Shape", ["q"], ["qs"]), h.make_node("Gather", ["qs", "two"], ["feat"], axis=0),
        h.make_node("Div", ["feat", "d"], ["heads"]),
        h.make_node("Concat", ["zero", "heads", "d"], ["target"], axis=0),
        h.make_node("Reshape", ["q", "target"], ["q4"]), h.make_node("Reshape", ["v", "target"], ["v4"]),
        h.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        h.make_node("Transpose", ["q4"], ["kt"], perm=[0, 2, 3, 1]),
        h.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
        h.make_node("MatMul", ["qt", "kt"], ["s"]), h.make_node("Softmax", ["s"], ["p"], axis=-1),
        h.make_node("MatMul", ["p", "vt"], ["c"]), h.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["ct", "merge"], ["m"]), h.make_node("MatMul", ["m", "O"], ["y"]),
    ]
    model = h.make_model(h.make_graph(nodes, "g", [x], [y], inits), opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    groups = find_groups(model, GraphIndex(model))
    reasons = " | ".join(str(g.reason) for g in groups if not g.prunable)
    assert not any(g.prunable for g in groups if "q" in g.name.lower() or g.kind == "heads"), reasons
    assert "Shape" in reasons


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
def test_fused_attention_heads_are_removed_exactly(tmp_path, op):
    case = am.handmade_case(op, hidden=E, heads=H, dead=(1, 2), constant=True)
    model = case.model
    groups = find_groups(model)
    g = next(g for g in groups if g.kind == "heads")
    assert g.prunable and g.units == H and g.unit == D, [(x.id, str(x.reason)) for x in groups]
    feeds = case.sample(16, 7, 1)
    result = onnxprune.prune(model, feeds, criterion="seed", std_threshold=1e-6, compensation="fold")
    (report,) = [r for r in result.report.groups if r.kind == "heads"]
    assert (report.heads_before, report.heads_after) == (4, 2)
    node = next(n for n in result.model.graph.node if n.op_type == op)
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "num_heads")) == 2
    np.testing.assert_allclose(run_model(result.model, feeds)[0], run_model(model, feeds)[0], atol=1e-5, rtol=1e-5)
    packed = [t for t in result.model.graph.initializer  # q/k/v weights and biases, packed or not
              if t.name.startswith(("Wq", "Wk", "Wv", "bq", "bk", "bv"))]
    assert packed and all(2 * D in t.dims or 6 * D in t.dims for t in packed)


def test_fused_attention_with_a_cache_or_head_bias_is_skipped():
    model = am.handmade_case("Attention", hidden=E, heads=H).model
    node = model.graph.node[0]
    node.input.extend(["", "", "rel"])  # mask_index, past, attention_bias (per head)
    model.graph.input.append(onnx.helper.make_tensor_value_info("rel", onnx.TensorProto.FLOAT, [1, H, "s", "s"]))
    groups = find_groups(model)
    assert not any(g.prunable and g.kind == "heads" for g in groups)
    assert any("per-head attention bias" in str(g.reason) for g in groups)


class GroupedQuery(nn.Module):
    """Llama-style grouped-query attention: 4 query heads share 2 key/value heads (repeat_kv, or SDPA's
    enable_gqa, which dynamo writes as ONNX's Attention with fewer K/V heads at opset 23)."""

    def __init__(self, kv=2, sdpa=False):
        super().__init__()
        self.kv, self.sdpa = kv, sdpa
        self.q, self.o = nn.Linear(E, E), nn.Linear(E, E)
        self.k, self.v = nn.Linear(E, kv * D), nn.Linear(E, kv * D)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, H, D).transpose(1, 2)
        k, v = (lin(x).view(b, s, self.kv, D).transpose(1, 2) for lin in (self.k, self.v))

        def repeat_kv(t):
            n = H // self.kv
            return t[:, :, None, :, :].expand(b, self.kv, n, s, D).reshape(b, self.kv * n, s, D)

        if self.sdpa:
            c = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            c = torch.softmax(q @ repeat_kv(k).transpose(-2, -1) / math.sqrt(D), dim=-1) @ repeat_kv(v)
        return x + self.o(c.transpose(1, 2).reshape(b, s, E))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["repeat_kv", "sdpa opset 23"])
def test_grouped_query_attention_removes_whole_kv_groups(tmp_path, form):
    torch.manual_seed(0)
    net = GroupedQuery(sdpa=form != "repeat_kv").eval()
    with torch.no_grad():  # key/value head 1 carries nothing: query heads 2 and 3 read a constant
        for lin in (net.k, net.v):
            lin.weight[D:2 * D] = 0
    path = export(net, tmp_path / "gqa.onnx", dynamo=True, opset=23 if net.sdpa else None, mask=False)
    (g,) = [g for g in onnxprune.inspect(path) if g.kind == "heads"]
    assert g.prunable and g.unit == 2 * D and g.head_dim == D and len(g.producer_names) == 3
    x = np.random.default_rng(0).standard_normal((16, 7, E)).astype(np.float32)
    result = onnxprune.prune(path, {"x": x}, criterion="seed", std_threshold=1e-6, compensation="fold")
    (report,) = [r for r in result.report.groups if r.kind == "heads"]
    assert (report.heads_before, report.heads_after, report.kv_groups) == (4, 2, (2, 1))
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], net(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5, rtol=1e-5)
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert sorted(d for d in shapes.values() if len(d) == 2) == sorted([(E, D), (E, D), (E, 2 * D), (2 * D, E)])


def test_grouped_query_attention_torchscript_is_skipped_with_reason(tmp_path):
    """TorchScript computes repeat_kv's Expand shape through ConstantOfShape/Where: not followed."""
    torch.manual_seed(0)
    path = export(GroupedQuery().eval(), tmp_path / "gqa.onnx", dynamo=False, mask=False)
    groups = onnxprune.inspect(path)
    heads = [g for g in groups if g.kind == "heads"]
    assert heads and not any(g.prunable for g in heads)
    assert all(g.reason.kind in ("attention", "shape-read") for g in heads)


def test_inspect_lists_heads_and_scores_them(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    torch.manual_seed(0)
    net = Encoder(layers=1).eval()
    silence_head(net.blocks[0], 1, keep_bias=False)
    path = export(net, tmp_path / "enc.onnx", dynamo=False)
    np.savez(tmp_path / "d.npz", **inputs())
    out = CliRunner().invoke(main, ["inspect", str(path), "--data", str(tmp_path / "d.npz"), "--mask", "mask"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if "heads of" in x)
    scores = [float(v) for v in line.split("per head:")[1].split()]
    assert "4 heads of 8" in line and len(scores) == 4 and scores[1] == 0 and abs(sum(scores) - 1) < 3e-3
    js = CliRunner().invoke(main, ["inspect", str(path), "--json", "--data", str(tmp_path / "d.npz")])
    import json
    (g,) = [g for g in json.loads(js.output) if g["kind"] == "heads"]
    assert g["heads"] == 4 and g["head_dim"] == 8 and g["head_scores"][1] == 0


def test_absolute_criterion_keeps_scale_across_layers():
    from onnxprune.criteria import GroupEvidence, scores_of
    from onnxprune.stats import ActivationStats

    def evidence(var, w):
        n = len(var)
        stats = ActivationStats(10, np.zeros(n), np.asarray(var) * 10, np.zeros(n), np.ones(n))
        return GroupEvidence(None, stats, [w], [(w ** 2).sum(axis=1)], [np.asarray(var, float)])

    quiet = evidence([0.01, 0.01], np.ones((2, 3)))   # a layer adding little to the stream
    loud = evidence([1.0, 2.0], np.ones((2, 3)))
    shares = scores_of({"q": quiet, "l": loud}, "contribution")
    absolute = scores_of({"q": quiet, "l": loud}, "absolute")
    assert shares["q"].sum() == pytest.approx(1) and shares["q"][0] > shares["l"][0]  # per-layer shares hide it
    np.testing.assert_allclose(absolute["q"], [0.03, 0.03])
    np.testing.assert_allclose(absolute["l"], [3.0, 6.0])


def decomposed_attention(heads: int, dim: int, dead: set, target: str, merge: str, seed: int = 0):
    """x [b, s, 8] -> Q, K, V (MatMul + bias) -> head split -> softmax(Q Kᵀ / sqrt(D)) V -> merge -> out-projection,
    by onnx.helper; heads in `dead` have zero Q/K/V columns and biases. `target`: how the split Reshape's target
    is written ("constant", "concat": computed from Shape(x) with constant counts, "minus1": [0, 0, -1, D]);
    `merge`: the merge Reshape's ("constant" [0, 0, H*D] or "minus1" [0, 0, -1])."""
    h = onnx.helper
    rng = np.random.default_rng(seed)
    e, n = 8, heads * dim
    inits = {}
    for p in "qkv":
        w = rng.standard_normal((e, n)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        for j in dead:
            w[:, j * dim:(j + 1) * dim] = 0
            b[j * dim:(j + 1) * dim] = 0
        inits[f"W{p}"], inits[f"B{p}"] = w, b
    inits["Wo"] = rng.standard_normal((n, e)).astype(np.float32)
    inits["scale"] = np.array(np.sqrt(dim), np.float32)
    inits["merge"] = np.array([0, 0, n] if merge == "constant" else [0, 0, -1], np.int64)
    nodes = []
    if target == "concat":
        inits.update(zero=np.array(0, np.int64), one=np.array(1, np.int64), ax=np.array([0], np.int64),
                     hd=np.array([heads, dim], np.int64))
        nodes += [h.make_node("Shape", ["x"], ["sx"]), h.make_node("Gather", ["sx", "zero"], ["b0"], axis=0),
                  h.make_node("Gather", ["sx", "one"], ["s0"], axis=0), h.make_node("Unsqueeze", ["b0", "ax"], ["b1"]),
                  h.make_node("Unsqueeze", ["s0", "ax"], ["s1"]),
                  h.make_node("Concat", ["b1", "s1", "hd"], ["split"], axis=0)]
    else:
        inits["split"] = np.array([0, 0, heads if target == "constant" else -1, dim], np.int64)
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [h.make_node("MatMul", ["x", f"W{p}"], [f"{p}m"]), h.make_node("Add", [f"{p}m", f"B{p}"], [f"{p}a"]),
                  h.make_node("Reshape", [f"{p}a", "split"], [f"{p}4"]),
                  h.make_node("Transpose", [f"{p}4"], [f"{p}t"], perm=perm)]
    nodes += [h.make_node("MatMul", ["qt", "kt"], ["s"]), h.make_node("Div", ["s", "scale"], ["sd"]),
              h.make_node("Softmax", ["sd"], ["p"], axis=-1), h.make_node("MatMul", ["p", "vt"], ["c"]),
              h.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["ct", "merge"], ["m"]),
              h.make_node("MatMul", ["m", "Wo"], ["y"])]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", e])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", e])
    graph = h.make_graph(nodes, "attention", [x], [y], [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@settings(max_examples=25, deadline=None)
@given(heads=st.integers(2, 5), dim=st.sampled_from([1, 2, 4]), data=st.data(),
       target=st.sampled_from(["constant", "concat", "minus1"]), merge=st.sampled_from(["constant", "minus1"]))
def test_dead_heads_come_off_exactly_whatever_the_shape_constants(heads, dim, data, target, merge):
    dead = data.draw(st.sets(st.integers(0, heads - 1), max_size=heads))
    model = decomposed_attention(heads, dim, dead, target, merge)
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": np.random.default_rng(1).standard_normal((6, 5, 8)).astype(np.float32)}
    result = onnxprune.prune(model, feeds, criterion="dead")
    (g,) = [g for g in result.report.groups if g.kind == "heads"]
    assert g.prunable and g.heads_before == heads
    assert g.heads_after == max(heads - len(dead), 1)  # a group is never emptied
    onnx.checker.check_model(result.model, full_check=True)
    for n, s in ((6, 5), (2, 9)):
        x = {"x": np.random.default_rng(n).standard_normal((n, s, 8)).astype(np.float32)}
        np.testing.assert_allclose(run_model(result.model, x)[0], run_model(model, x)[0], atol=1e-5, rtol=1e-5)

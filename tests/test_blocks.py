"""Whole residual blocks (groups/blocks.py, graph/branch.py, blockselect.py): which Adds are removable
branches and why the others are not; a silenced branch removed exactly (its constant output folded);
blocks ranked with the neurons by the budget search's fractions; reports and inspect."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.blockselect import BlockRank, masks_for_fraction, removals, settle
from onnxprune.groups import find_groups
from onnxprune.groups.blocks import find_blocks
from onnxprune.options import resolve
from onnxprune.rewrite import apply_masks
from onnxprune.run import Run

from conftest import run_model

D, H = 6, 10  # stream width, hidden width of a branch


# ------------------------------------------------------------------------------- hand-made graphs

def _const(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _mlp_branch(prefix, x, rng, *, silenced=False, bias=0.0, norm=False):
    """x -> [LayerNorm] -> MatMul W1 + b1 -> Relu -> MatMul W2 + b2: nodes, initializers, output name.
    Silenced: W2 = 0 (the branch's output is the constant b2, `bias` in every entry)."""
    nodes, inits, h = [], [], x
    if norm:
        inits += [_const(f"{prefix}_g", np.ones(D)), _const(f"{prefix}_beta", np.zeros(D))]
        nodes.append(helper.make_node("LayerNormalization", [x, f"{prefix}_g", f"{prefix}_beta"], [f"{prefix}_ln"],
                                      name=f"{prefix}_ln", axis=-1))
        h = f"{prefix}_ln"
    w2 = np.zeros((H, D)) if silenced else rng.standard_normal((H, D)) / np.sqrt(H)
    b2 = np.full(D, bias) if silenced else 0.1 * rng.standard_normal(D)
    inits += [_const(f"{prefix}_W1", rng.standard_normal((D, H)) / np.sqrt(D)),
              _const(f"{prefix}_b1", 0.1 * rng.standard_normal(H)), _const(f"{prefix}_W2", w2),
              _const(f"{prefix}_b2", b2)]
    nodes += [helper.make_node("MatMul", [h, f"{prefix}_W1"], [f"{prefix}_m1"], name=f"{prefix}_mm1"),
              helper.make_node("Add", [f"{prefix}_m1", f"{prefix}_b1"], [f"{prefix}_a1"], name=f"{prefix}_bias1"),
              helper.make_node("Relu", [f"{prefix}_a1"], [f"{prefix}_r"], name=f"{prefix}_relu"),
              helper.make_node("MatMul", [f"{prefix}_r", f"{prefix}_W2"], [f"{prefix}_m2"], name=f"{prefix}_mm2"),
              helper.make_node("Add", [f"{prefix}_m2", f"{prefix}_b2"], [f"{prefix}_out"], name=f"{prefix}_bias2")]
    return nodes, inits, f"{prefix}_out"


def _graph(nodes, inits, x="x", y="y", extra_outputs=(), inputs=(("x", D),)):
    graph = helper.make_graph(
        nodes, "blocks", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in ((y, 3), *extra_outputs)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def residual_mlp(blocks=("plain", "silenced"), *, post_norm=False, seed=0):
    """x -> embed (MatMul) -> s0; per block k: s_{k+1} = s_k + branch(s_k) ("plain", "silenced": W2 = 0 and
    b2 = 0.3, "pre": x + f(LN(x)), "leak": its hidden Relu is also a graph output, "projection": the skip
    goes through a MatMul P), with LN after the Add when `post_norm`; head MatMul -> y [N, 3]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "We"], ["s0"], name="embed")]
    inits = [_const("We", rng.standard_normal((D, D)) / np.sqrt(D))]
    extra, s = [], "s0"
    for k, kind in enumerate(blocks):
        n, i, out = _mlp_branch(f"b{k}", s, rng, silenced=kind == "silenced", bias=0.3, norm=kind == "pre")
        nodes += n
        inits += i
        skip = s
        if kind == "projection":
            inits.append(_const(f"P{k}", rng.standard_normal((D, D)) / np.sqrt(D)))
            nodes.append(helper.make_node("MatMul", [s, f"P{k}"], [f"p{k}"], name=f"proj{k}"))
            skip = f"p{k}"
        if kind == "leak":
            extra.append((f"b{k}_r", H))
        nodes.append(helper.make_node("Add", [skip, out], [f"sum{k}"], name=f"residual{k}"))
        s = f"sum{k}"
        if post_norm:
            inits += [_const(f"n{k}_g", 1 + 0.1 * rng.standard_normal(D)), _const(f"n{k}_b", np.zeros(D))]
            nodes.append(helper.make_node("LayerNormalization", [s, f"n{k}_g", f"n{k}_b"], [f"s{k + 1}"],
                                          name=f"norm{k}", axis=-1))
            s = f"s{k + 1}"
    inits.append(_const("Wh", rng.standard_normal((D, 3)) / np.sqrt(D)))
    nodes.append(helper.make_node("MatMul", [s, "Wh"], ["y"], name="head"))
    return _graph(nodes, inits, extra_outputs=extra)


def feeds(n=64, seed=1, width=D):
    return {"x": np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)}


def by_name(blocks):
    return {b.name: b for b in blocks}


def remove(model, data, which, **options):
    """`model` with the removable blocks `which` picks removed (their means measured on `data`), and the blocks."""
    opts = resolve("prune", data, dict(structures="neurons,heads,blocks", fraction=0.0, holdout=0,
                                       compensation="none", **options))
    run = Run(model, opts)
    p = run.prepare()
    run.measure(split=False, grams=False)
    masks = {b.id: np.array([not which(b)]) for b in p.removable_blocks}
    assert not all(m.all() for m in masks.values()), [(b.id, b.reason) for b in p.blocks]
    records = removals(p.blocks, settle(masks, p.blocks), run.measured.statistics.tap_stats)
    return apply_masks(p.model, p.groups, settle(masks, p.blocks), index=p.index, blocks=records), p.blocks


def assert_same(original, pruned, data, atol=1e-5):
    onnx.checker.check_model(pruned, full_check=True)
    for a, b in zip(run_model(original, data), run_model(pruned, data)):
        np.testing.assert_allclose(b, a, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------- discovery

def test_residual_adds_are_blocks_with_their_branch_and_inner_groups():
    m = residual_mlp(("plain", "silenced"))
    groups = find_groups(m)
    blocks = by_name(find_blocks(m, groups=groups))
    assert set(blocks) == {"residual0", "residual1"}
    b = blocks["residual0"]
    assert b.removable and b.kind == "mlp" and b.axis == -1 and b.width == D and b.skip == "s0"
    assert b.parameters == D * H + H + H * D + D and len(b.nodes) == 5
    assert b.groups == ["b0_mm1"] and b.neurons == H  # the hidden group goes with it; the stream does not
    assert b.layout[0].group == "embed" and b.id.startswith("block:")


def test_pre_and_post_norm_are_read():
    pre = by_name(find_blocks(residual_mlp(("pre",))))["residual0"]
    post = by_name(find_blocks(residual_mlp(("plain",), post_norm=True)))["residual0"]
    assert pre.removable and pre.norm == "pre" and len(pre.nodes) == 6  # the LayerNormalization goes with f
    assert post.removable and post.norm == "post"


def test_projection_shortcut_and_leaking_branch_are_skipped_with_reasons():
    blocks = by_name(find_blocks(residual_mlp(("projection", "leak", "plain"))))
    assert blocks["residual0"].reason.kind == "projection-shortcut" and "MatMul" in blocks["residual0"].reason
    assert blocks["residual0"].reason.tensor == "s0"
    assert blocks["residual1"].reason.kind == "non-exclusive" and blocks["residual1"].reason.tensor == "b1_r"
    assert blocks["residual2"].removable
    d = blocks["residual1"].to_dict()
    assert d["kind"] == "blocks" and not d["prunable"] and d["skip"]["kind"] == "non-exclusive"


def test_adds_that_are_no_residual_are_not_listed():
    """Two inputs added (token + position embeddings), a bias Add: no branch reads the other side."""
    nodes = [helper.make_node("Add", ["x", "p"], ["e"], name="embeddings"),
             helper.make_node("Add", ["e", "c"], ["f"], name="bias"),
             helper.make_node("MatMul", ["f", "Wh"], ["y"], name="head")]
    m = _graph(nodes, [_const("c", np.ones(D)), _const("Wh", np.ones((D, 3)))], inputs=(("x", D), ("p", D)))
    assert find_blocks(m) == []


def test_a_skip_computed_from_the_input_or_broadcast_is_skipped():
    rng = np.random.default_rng(0)
    n, i, out = _mlp_branch("b", "x", rng)
    nodes = [*n, helper.make_node("Relu", ["x"], ["skip"], name="act"),
             helper.make_node("Add", ["skip", out], ["s"], name="residual"),
             helper.make_node("MatMul", ["s", "Wh"], ["y"], name="head")]
    (b,) = find_blocks(_graph(nodes, [*i, _const("Wh", np.ones((D, 3)))]))
    assert b.reason.kind == "skip-path" and "Relu" in b.reason and b.reason.tensor == "x"
    # x [N, 1, D] + (x W + c [1, 4, 1]) [N, 4, D]: the skip is broadcast, the Add is no pass-through of it
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "c"], ["f"], name="spread"),
             helper.make_node("Add", ["x", "f"], ["s"], name="residual"),
             helper.make_node("ReduceMean", ["s", "axes"], ["y"], name="pool", keepdims=0)]
    graph = helper.make_graph(nodes, "broadcast", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])],
                              [_const("W", np.eye(D)), _const("c", np.ones((1, 4, 1))),
                               numpy_helper.from_array(np.array([1], np.int64), "axes")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    (b,) = find_blocks(m)
    assert b.reason.kind == "broadcast" and b.skip == "x"


# --------------------------------------------------------------------------------------- removal

def test_a_silenced_branch_goes_exactly_with_its_constant_folded():
    m = residual_mlp(("plain", "silenced", "plain"))
    data = feeds(64)
    pruned, blocks = remove(m, data, lambda b: b.name == "residual1")
    assert_same(m, pruned, feeds(16, seed=7))
    names = {n.name for n in pruned.graph.node}
    assert not names & {"b1_mm1", "b1_bias1", "b1_relu", "b1_mm2", "b1_bias2"} and "b0_mm1" in names
    add = next(n for n in pruned.graph.node if n.name == "residual1")
    mean = next(numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == add.input[1])
    np.testing.assert_allclose(mean, np.full(D, 0.3, np.float32))  # b2 of the silenced branch
    assert not {"b1_W1", "b1_W2"} & {t.name for t in pruned.graph.initializer}


def test_a_zero_branch_becomes_a_pass_through_and_post_norm_keeps_its_norm():
    rng_model = residual_mlp(("plain", "plain"), post_norm=True)
    for t in rng_model.graph.initializer:  # branch 0 silenced to exactly 0
        if t.name in ("b0_W2", "b0_b2"):
            t.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(t).shape, np.float32), t.name))
    pruned, _ = remove(rng_model, feeds(64), lambda b: b.name == "residual0")
    assert_same(rng_model, pruned, feeds(16, seed=3))
    names = {n.name for n in pruned.graph.node}
    assert "residual0" not in names and "norm0" in names  # LN(x + 0) = LN(x): the Add is gone, the norm stays
    norm = next(n for n in pruned.graph.node if n.name == "norm0")
    assert norm.input[0] == "s0"


def test_removing_a_block_and_pruning_the_stream_stay_consistent():
    """The stream's neurons pruned (embed's group, coupled through the Adds) while a block goes: the folded
    constant is cut with the stream's mask, the inner group's edits never happen."""
    m = residual_mlp(("plain", "silenced", "plain"))
    opts = resolve("prune", feeds(64), dict(structures="neurons,heads,blocks", fraction=0.0, holdout=0,
                                            compensation="fold"))
    run = Run(m, opts)
    p = run.prepare()
    run.measure(split=False, grams=False)
    stream = next(g for g in p.groups if g.id == "embed")
    assert stream.prunable
    keep = np.ones(stream.size, bool)
    keep[[1, 4]] = False
    block = next(b for b in p.blocks if b.name == "residual1")
    masks = {"embed": keep, block.id: np.array([False]), "b1_mm1": np.zeros(H, bool)}
    masks["b1_mm1"][0] = True
    masks = settle(masks, p.blocks)
    assert masks["b1_mm1"].all()  # its neurons go with the block: no record of theirs applies
    records = removals(p.blocks, masks, run.measured.statistics.tap_stats)
    pruned = apply_masks(p.model, p.groups, masks, index=p.index, blocks=records)
    onnx.checker.check_model(pruned, full_check=True)
    add = next(n for n in pruned.graph.node if n.name == "residual1")
    mean = next(numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == add.input[1])
    assert mean.shape == (D - 2,)
    run_model(pruned, feeds(4))


@st.composite
def residual_stacks(draw):
    kinds = draw(st.lists(st.sampled_from(["plain", "silenced", "pre", "leak", "projection"]), min_size=1,
                          max_size=4))
    return kinds, draw(st.booleans()), draw(st.integers(0, 1000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(residual_stacks())
def test_property_silenced_removable_branches_go_without_changing_outputs(case):
    """Any stack of hand-made blocks: the silenced ones are exactly the removable blocks whose share is 0,
    leaking and projected ones are never removable, and removing every silenced one changes no output."""
    kinds, post_norm, seed = case
    m = residual_mlp(tuple(kinds), post_norm=post_norm, seed=seed)
    blocks = by_name(find_blocks(m, groups=find_groups(m)))
    for k, kind in enumerate(kinds):
        assert blocks[f"residual{k}"].removable == (kind not in ("leak", "projection")), (kind, blocks[f"residual{k}"])
    if "silenced" not in kinds:
        return
    pruned, _ = remove(m, feeds(32, seed=seed), lambda b: kinds[int(b.name[8:])] == "silenced")
    assert_same(m, pruned, feeds(8, seed=seed + 1))


def nested_model(silence_outer=False):
    """x -> embed -> s; outer branch f(s) = g + h(g) with g = MatMul(s) (a residual inside the branch);
    y = s + f(s) is the graph output (no head)."""
    rng = np.random.default_rng(3)
    n, i, out = _mlp_branch("inner", "g", rng)
    w_out = np.zeros((D, D)) if silence_outer else rng.standard_normal((D, D)) / np.sqrt(D)
    nodes = [helper.make_node("MatMul", ["x", "We"], ["s"], name="embed"),
             helper.make_node("MatMul", ["s", "Wg"], ["g"], name="g"), *n,
             helper.make_node("Add", ["g", out], ["f_in"], name="inner_residual"),
             helper.make_node("MatMul", ["f_in", "Wo"], ["f"], name="outer_out"),
             helper.make_node("Add", ["s", "f"], ["y"], name="outer_residual")]
    inits = [*i, _const("We", rng.standard_normal((D, D))), _const("Wg", rng.standard_normal((D, D))),
             _const("Wo", w_out)]
    graph = helper.make_graph(nodes, "nested", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_nested_block_goes_with_its_outer_block_whose_output_is_the_graph_output():
    m = nested_model(silence_outer=True)
    blocks = by_name(find_blocks(m, groups=find_groups(m)))
    outer, inner = blocks["outer_residual"], blocks["inner_residual"]
    assert outer.removable and inner.removable and outer.blocks == [inner.id]
    masks = settle({outer.id: np.array([False]), inner.id: np.array([False])}, list(blocks.values()))
    assert masks[inner.id].all()  # it goes with the outer one: no record of its own
    pruned, _ = remove(m, feeds(32), lambda b: b.name == "outer_residual")
    assert_same(m, pruned, feeds(8, seed=2))
    (last,) = [n for n in pruned.graph.node if "y" in n.output]
    assert last.op_type == "Identity" and list(last.input) == ["s"]  # a graph output keeps its name
    assert [n.name for n in pruned.graph.node] == ["embed", "outer_residual"]


def test_the_walk_counts_a_nested_block_once():
    ranks = [BlockRank("block:outer", 0.1, 8, 0.1, groups=["a"], nested=["block:inner"]),
             BlockRank("block:inner", 0.2, 4, 0.1, groups=["a"])]
    scores = {"a": np.linspace(1, 2, 8), "b": np.linspace(1, 2, 8)}
    masks = masks_for_fraction(scores, 0.5, ranks)  # 8 of 16: the outer block alone
    assert not masks["block:outer"][0] and masks["b"].all()
    masks = masks_for_fraction(scores, 0.6, ranks)  # 10: the inner one is free, then b's lowest two
    assert (~masks["b"]).sum() == 2


# -------------------------------------------------------------------------------------- ranking

def test_blocks_rank_with_neurons_and_larger_fractions_remove_more():
    scores = {"a": np.array([0.1, 0.2, 0.3, 0.4]), "b": np.array([0.05, 0.5, 0.6, 0.7])}
    ranks = [BlockRank("block:x", 0.15, 4, 0.01, groups=["b"])]
    previous = None
    for f in (0.0, 0.125, 0.25, 0.5, 0.75):
        masks = masks_for_fraction(scores, f, ranks)
        removed = {(k, i) for k, m in masks.items() for i in np.flatnonzero(~m)}
        if previous is not None:
            assert previous <= removed
        previous = removed
    masks = masks_for_fraction(scores, 0.125, ranks)  # 1 of 8: the 0.05 neuron
    assert masks["block:x"].all() and not masks["b"][0]
    masks = masks_for_fraction(scores, 0.25, ranks)  # then a's 0.1
    assert masks["block:x"].all() and not masks["a"][0]
    masks = masks_for_fraction(scores, 0.375, ranks)  # then the block (0.15), weighing 4 - 1 already gone: 5 of 8
    assert not masks["block:x"][0] and masks["a"][1]
    masks = masks_for_fraction(scores, 0.75, ranks)  # then a's 0.2 (b's are inside the block: free)
    assert not masks["a"][1] and masks["a"][2] and masks["b"][1:].all()
    assert masks_for_fraction(scores, 0.25)["b"].sum() == 3  # without blocks: neurons only


def test_a_block_goes_before_neurons_of_equal_score():
    scores = {"a": np.zeros(4), "b": np.array([0.0, 0.0, 1.0])}
    masks = masks_for_fraction(scores, 0.1, [BlockRank("block:x", 0.0, 3, 0.0, groups=["b"])])
    assert not masks["block:x"][0] and masks["a"].all()


def test_the_search_removes_a_silenced_block_first():
    m = residual_mlp(("plain", "silenced", "plain"))
    result = onnxprune.prune(m, feeds(200), structures="neurons,blocks", fraction=0.1, holdout=0,
                             compensation="fold")
    report = result.report
    gone = [b for b in report.blocks if b["removed"]]
    assert [b["name"] for b in gone] == ["residual1"] and gone[0]["stream_share"] == 0
    inner = next(g for g in report.groups if g.id == "b1_mm1")
    assert inner.neurons_after == 0 and inner.removed_with == gone[0]["id"]
    assert "block removed" in report.format_table() and "removed with block:residual1" in report.format_table()
    assert json.loads(report.to_json())["blocks"][1]["removed"] is True
    assert_same(m, result.model, feeds(16, seed=9), atol=10)  # neurons went too: runs, checks


def test_blocks_are_left_out_unless_asked_for():
    m = residual_mlp(("plain", "silenced"))
    result = onnxprune.prune(m, feeds(100), fraction=0.1, holdout=0, compensation="fold")
    assert result.report.blocks == [] and len(result.model.graph.node) >= 12
    with pytest.raises(onnxprune.InputError, match="structures must be some of neurons, heads, blocks"):
        onnxprune.prune(m, feeds(100), fraction=0.1, structures="neurons,layers")


def test_blocks_alone_count_their_neurons():
    m = residual_mlp(("plain", "silenced", "plain"))
    result = onnxprune.prune(m, feeds(100), structures="blocks", fraction=0.2, holdout=0, compensation="none")
    assert [b["name"] for b in result.report.blocks if b["removed"]] == ["residual1"]
    assert result.report.nothing_to_prune is None
    assert_same(m, result.model, feeds(8))


def test_inspect_lists_and_scores_blocks(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    path = tmp_path / "m.onnx"
    onnx.save_model(residual_mlp(("plain", "silenced", "projection")), str(path))
    np.savez(tmp_path / "d.npz", **feeds(50))
    out = CliRunner().invoke(main, ["inspect", str(path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.strip().startswith("block:residual1") and "removable" in line for line in lines)
    assert any("block:residual2" in line and "projection" in line for line in lines)
    assert lines[-1] == "2 of 3 residual block(s) removable"
    js = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json", "--data",
                                              str(tmp_path / "d.npz")]).output)
    blocks = {b["name"]: b for b in js if b["kind"] == "blocks"}
    assert blocks["residual1"]["stream_share"] == 0 and blocks["residual0"]["stream_share"] > 0
    assert blocks["residual2"]["skip"]["kind"] == "projection-shortcut"


# ----------------------------------------------------------------------------- exported networks

def _torch():
    torch = pytest.importorskip("torch")
    warnings.filterwarnings("ignore")
    return torch


def _encoder_model(exporter):
    torch = _torch()
    from attention_models import _seq_axes, embeddings_sample, export, own_encoder

    net = own_encoder(layers=2)
    with torch.no_grad():
        net.blocks[0].attention.out.weight.zero_()  # attention branch: constant (its bias)
        net.blocks[1].ffn_out.weight.zero_()        # FFN branch: constant
        net.blocks[1].ffn_out.bias.zero_()          # ... exactly 0
    sample = embeddings_sample(32, mask=True)
    example = sample(2, 12)
    names = ["x", "attention_mask"]
    model = export(net, [torch.from_numpy(example[n]) for n in names], exporter=exporter, input_names=names,
                   output_names=["hidden"], dynamic=_seq_axes(names, ["hidden"]))
    return model, sample


@pytest.mark.parametrize("exporter", ["dynamic", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_own_encoder_silenced_branches_go_exactly(exporter):
    model, sample = _encoder_model(exporter)
    order = sorted((b for b in find_blocks(model) if b.removable), key=lambda b: b.add)
    assert [b.kind for b in order] == ["attention", "mlp", "attention", "mlp"]
    assert {b.norm for b in order} == {"post"}
    wanted = {order[0].id, order[3].id}  # attention of block 0, FFN of block 1
    pruned, blocks = remove(model, sample(64, 12, seed=1), lambda b: b.id in wanted, mask="attention_mask")
    assert_same(model, pruned, sample(8, 12, seed=4))
    assert len(pruned.graph.node) < len(model.graph.node) - 15


def _transformers(kind, exporter, silence, monkeypatch):
    _torch()
    import attention_models as am

    original = am.transformers_model

    def silenced(*args, **kwargs):
        model, config = original(*args, **kwargs)
        modules = dict(model.named_modules())
        for name, keep_bias in silence.items():
            modules[name].weight.data.zero_()
            if not keep_bias:
                modules[name].bias.data.zero_()
        return model, config

    monkeypatch.setattr(am, "transformers_model", silenced)
    return am.transformers_case(kind, exporter)


TRANSFORMERS = {
    "bert": {"encoder.layer.0.attention.output.dense": True, "encoder.layer.1.output.dense": False},
    "vit": {"layers.0.mlp.fc2": True, "layers.1.attention.o_proj": False},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize("exporter", ["dynamic", "dynamo"])
def test_transformers_silenced_branches_go_exactly(kind, exporter, monkeypatch):
    case = _transformers(kind, exporter, TRANSFORMERS[kind], monkeypatch)
    model = case.model
    removable = [b for b in find_blocks(model) if b.removable]
    assert len(removable) == 4, [(b.name, b.reason) for b in find_blocks(model)]
    order = sorted(removable, key=lambda b: b.add)  # attention 0, FFN 0, attention 1, FFN 1
    assert [b.kind for b in order] == ["attention", "mlp", "attention", "mlp"]
    assert {b.norm for b in order} == ({"post"} if kind == "bert" else {"pre", "post"})
    wanted = {order[0].id, order[3].id} if kind == "bert" else {order[1].id, order[2].id}
    data = case.feeds(32, 12, seed=1)
    pruned, _ = remove(model, data, lambda b: b.id in wanted,
                       **({"mask": "attention_mask"} if "attention_mask" in data else {}))
    assert_same(model, pruned, case.feeds(6, 12, seed=2))


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resnet_silenced_block_goes_exactly_and_projection_is_skipped(tmp_path, dynamo):
    torch = _torch()
    from coupled_models import ResNet, export_image, randomise_bn

    net = ResNet("basic", 8).eval()
    randomise_bn(net)
    with torch.no_grad():
        net.stage1[1].conv2.weight.zero_()  # its BN makes a per-channel constant
    model = onnx.load(str(export_image(net, tmp_path / "r.onnx", dynamo=dynamo)))
    blocks = find_blocks(model, groups=find_groups(model))
    assert [b.removable for b in blocks] == [True, True, False, True]
    assert blocks[2].reason.kind == "projection-shortcut" and blocks[0].axis == -3 and blocks[0].kind == "conv"
    rng = np.random.default_rng(0)
    data = {"image": rng.standard_normal((32, 3, 12, 12)).astype(np.float32)}
    pruned, _ = remove(model, data, lambda b: b.id == blocks[1].id)
    assert_same(model, pruned, {"image": rng.standard_normal((4, 3, 12, 12)).astype(np.float32)})
    consts = [numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.endswith("_branch_mean")]
    assert len(consts) == 1 and consts[0].shape == (8, 1, 1)


def test_yolo_bottleneck_is_confirmed_on_the_data(tmp_path):
    """TorchScript's chunk leaves the skip's shape unnamed: the data's shapes show it is the block's."""
    torch = _torch()
    from coupled_models import YoloNeck, export_image

    net = YoloNeck().eval()
    with torch.no_grad():
        net.c2f.m[0].cv2.conv.weight.zero_()  # SiLU(BN(0)): a per-channel constant
    model = onnx.load(str(export_image(net, tmp_path / "y.onnx")))
    (static,) = find_blocks(model)
    assert static.reason.kind == "broadcast"
    data = {"image": np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32)}
    pruned, blocks = remove(model, data, lambda b: True)
    assert blocks[0].removable
    assert_same(model, pruned, data)


def test_the_sequential_refit_reads_the_model_without_its_removed_block(monkeypatch):
    """A block removed while the stream is pruned: the sequential refit solves the consumers downstream on the
    model without the branch (every pruned model it reads gets the block's record), never a consumer inside
    the removed branch (it went with it), and makes up for more of the loss than the independent refit."""
    import onnxprune.sequential as sequential
    from onnxprune.compensate import Compensation, Replay

    m = residual_mlp(("plain", "plain", "plain"))
    opts = resolve("prune", feeds(400), dict(structures="neurons,heads,blocks", fraction=0.0, holdout=0))
    run = Run(m, opts)
    p = run.prepare()
    run.measure(split=False, grams=True)
    passed = run.measured.statistics
    comp = Compensation(p.model, p.index, p.groups, passed.stats, calibration_grams=passed.calibration_grams,
                        fold_grams=passed.fold_grams, tap_stats=passed.tap_stats, replay=Replay(p.data, 256),
                        blocks=p.blocks)
    block = next(b for b in p.blocks if b.name == "residual1")
    keep = np.ones(D, bool)
    keep[[1, 4]] = False
    masks = settle({g.id: np.ones(g.size, bool) for g in comp.groups} | {"embed": keep, block.id: np.array([False])},
                   p.blocks)
    solved, read = [], []
    in_order, apply = sequential._in_order, sequential.apply_masks
    monkeypatch.setattr(sequential, "_in_order", lambda *a: solved.extend(in_order(*a)) or in_order(*a))
    monkeypatch.setattr(sequential, "apply_masks", lambda *a, **k: read.append(k.get("blocks") or []) or apply(*a, **k))
    records = removals(p.blocks, masks, passed.tap_stats)
    fresh = feeds(200, seed=5)
    reference = run_model(m, fresh)[0]
    errors = {}
    for sequentially in (False, True):
        updates = comp.updates(masks, sequential=sequentially)
        pruned = apply_masks(p.model, p.groups, masks, updates=updates, index=p.index, blocks=records)
        errors[sequentially] = float(np.mean((run_model(pruned, fresh)[0] - reference) ** 2))
    inside = {p.model.graph.node[n].name for _, nodes in solved for n in nodes} & {"b1_mm1", "b1_mm2"}
    assert solved and not inside
    assert read and all([r.stream for r, _ in removed] == [block.stream] for removed in read)
    assert errors[True] < errors[False], errors

"""Compensation of Conv consumers and of coupled groups (onnxprune/compensate.py): exact where the removed
channels are linear in the kept ones, never worse than folding out of sample, folded where the Gram
matrix would be too large."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.compensate import Compensation
from onnxprune.data import load_data
from onnxprune.graph import GraphIndex
from onnxprune.groups import find_groups
from onnxprune.rewrite import apply_masks
from onnxprune.runtime import collect_statistics
from conftest import run_model

RNG = np.random.default_rng(7)


def dependent_model(consumer: dict | None = None, flatten=False, residual=False):
    """x [N, 3, 9, 9] -> Conv a (3 -> 6, 3x3, pad 1) -> Relu -> t, where channel 4 is 0.5 x channel 1 and channel 5
    is 2 x channel 0 (scaled kernels and biases: Relu keeps positive scales), then a consumer of t: a Conv with
    `consumer`'s attributes (6 outputs), or Flatten -> Gemm. With `residual`, t also feeds Conv r (6 -> 6,
    1x1, its channels scaled the same way) and u = Relu(t + r) is read by a second 3x3 Conv: one coupled
    group of two producers read at two taps."""
    wa = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32) / 4
    ba = RNG.standard_normal(6).astype(np.float32) / 4
    for w in (wa, ba):
        w[4], w[5] = 0.5 * w[1], 2 * w[0]
    if consumer and consumer.get("group", 1) == 2:  # blocks {0,1,2}, {3,4,5}: keep each block's dependence inside
        for w in (wa, ba):
            w[1], w[4] = 3 * w[0], 0.5 * w[3]
    inits = [numpy_helper.from_array(wa, "Wa"), numpy_helper.from_array(ba, "ba")]
    nodes = [helper.make_node("Conv", ["x", "Wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["t"], name="relu")]
    read = "t"
    if residual:
        wr = RNG.standard_normal((6, 6, 1, 1)).astype(np.float32) / 3
        br = np.abs(RNG.standard_normal(6)).astype(np.float32)
        for w in (wr, br):
            w[4], w[5] = 0.5 * w[1], 2 * w[0]
        wr[:, [4, 5]] = 0  # r's channels are then linear in t's kept ones, so u's are too (positive scales)
        inits += [numpy_helper.from_array(wr, "Wr"), numpy_helper.from_array(br, "br"),
                  numpy_helper.from_array(RNG.standard_normal((4, 6, 3, 3)).astype(np.float32) / 5, "Wu"),
                  numpy_helper.from_array(np.zeros(4, np.float32), "bu")]
        nodes += [helper.make_node("Conv", ["t", "Wr", "br"], ["r"], name="conv_r"),
                  helper.make_node("Add", ["t", "r"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["u"]),
                  helper.make_node("Conv", ["u", "Wu", "bu"], ["y2"], name="conv_u", pads=[1, 1, 1, 1])]
    if flatten:
        nodes += [helper.make_node("Flatten", [read], ["f"], name="flatten", axis=1),
                  helper.make_node("Gemm", ["f", "Wb", "bb"], ["y"], name="consumer", transB=1)]
        wb, out = RNG.standard_normal((5, 6 * 81)).astype(np.float32) / 10, ["N", 5]
    else:
        attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], **(consumer or {})}
        wb = RNG.standard_normal((6, 6 // attrs.get("group", 1), *attrs["kernel_shape"])).astype(np.float32) / 5
        nodes.append(helper.make_node("Conv", [read, "Wb", "bb"], ["y"], name="consumer", **attrs))
        out = ["N", 6, "H", "W"]
    inits += [numpy_helper.from_array(wb, "Wb"), numpy_helper.from_array(RNG.standard_normal(len(wb))
                                                                          .astype(np.float32), "bb")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)]
    if residual:
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4, 9, 9]))
    graph = helper.make_graph(nodes, "dependent", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["N", 3, 9, 9])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def compensated(model, feeds, keep, mode="refit", ridge=1e-9, grams=True):
    """The model without the channels `keep` drops from its one prunable group, and each consumer's update."""
    pruned, updates, _ = compensation(model, feeds, keep, mode, ridge, grams)
    return pruned, updates


def compensation(model, feeds, keep, mode="refit", ridge=1e-9, grams=True):
    index = GraphIndex(model)
    groups = find_groups(model, index)
    (group,) = [g for g in groups if g.prunable and len(g.consumer_info) and g.size == len(keep)]
    passed = collect_statistics(model, groups, load_data(feeds, model), grams=grams, index=index)
    comp = Compensation(model, index, groups, passed.stats, mode=mode, calibration_grams=passed.calibration_grams,
                        fold_grams=passed.fold_grams, tap_stats=passed.tap_stats, ridge=ridge)
    masks = {group.id: keep}
    updates = comp.updates(masks)
    return apply_masks(model, groups, masks, updates=updates, index=index), updates, comp


def x(n=200, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 9, 9)).astype(np.float32)}


KEEP = np.array([True, True, True, True, False, False])
CONSUMERS = [{}, {"strides": [2, 2]}, {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
             {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER", "pads": None},
             {"kernel_shape": [1, 1], "pads": [0, 0, 0, 0]}]


@pytest.mark.parametrize("consumer", CONSUMERS, ids=["3x3", "strided", "dilated", "same-upper", "1x1"])
def test_a_conv_consumer_of_dependent_channels_is_refit_exactly(consumer):
    """Channels 4 and 5 are multiples of channels 1 and 0: the refit moves their kernels onto those, and the
    outputs do not change (to the ridge's small bias); folding their means into the bias changes them."""
    consumer = {k: v for k, v in consumer.items() if v is not None}
    if consumer.get("auto_pad"):
        consumer = {**consumer, "pads": None}
    model = dependent_model({k: v for k, v in consumer.items() if v is not None})
    if "auto_pad" in consumer:  # pads and auto_pad are exclusive
        node = model.graph.node[-1]
        kept = [a for a in node.attribute if a.name != "pads"]
        del node.attribute[:]
        node.attribute.extend(kept)
    feeds, fresh = x(), x(50, seed=1)
    reference = run_model(model, fresh)[0]
    pruned, updates = compensated(model, feeds, KEEP)
    assert [u.method for u in updates.values()] == ["refit"]
    np.testing.assert_allclose(run_model(pruned, fresh)[0], reference, atol=1e-4)
    folded, _ = compensated(model, feeds, KEEP, mode="fold")
    assert np.abs(run_model(folded, fresh)[0] - reference).max() > 1e-2
    onnx.checker.check_model(pruned, full_check=True)


def test_a_grouped_conv_consumer_is_refit_per_block_exactly():
    """group=2: channel 1 = 3 x channel 0 in block 0, channel 4 = 0.5 x channel 3 in block 1; one of each goes."""
    model = dependent_model({"group": 2})
    feeds, fresh = x(), x(50, seed=1)
    keep = np.array([True, False, True, True, False, True])
    pruned, updates = compensated(model, feeds, keep)
    assert [u.method for u in updates.values()] == ["refit"]
    np.testing.assert_allclose(run_model(pruned, fresh)[0], run_model(model, fresh)[0], atol=1e-4)
    assert next(t for t in pruned.graph.initializer if t.name.startswith("Wb")).dims[1] == 2


def test_flattened_channels_into_a_gemm_are_refit_exactly():
    """A channel is 81 rows of the Gemm's weight (9 x 9 positions), refit together (one row per sample: enough
    samples for 4 x 81 + 1 unknowns on each cross-fitting fold)."""
    model = dependent_model(flatten=True)
    feeds, fresh = x(1200), x(50, seed=1)
    pruned, updates = compensated(model, feeds, KEEP)
    assert [u.method for u in updates.values()] == ["refit"]
    np.testing.assert_allclose(run_model(pruned, fresh)[0], run_model(model, fresh)[0], atol=1e-4)


def test_a_coupled_group_refits_each_consumer_from_its_own_tap():
    """t and u = Relu(t + conv_r(t)) share one keep-mask (a residual stream); conv_r reads t, conv_u reads u,
    the consumer reads t: each is refit from the Gram matrix of what it reads, and every output is kept."""
    model = dependent_model(residual=True)
    index = GraphIndex(model)
    coupled = [g for g in find_groups(model, index) if g.prunable and g.coupled]
    assert len(coupled) == 1 and len(coupled[0].taps) == 2
    feeds, fresh = x(), x(50, seed=1)
    pruned, updates = compensated(model, feeds, KEEP)
    methods = {model.graph.node[i].name: u.method for i, u in updates.items()}
    # conv_r never read channels 4 and 5 (zero kernels there): folding is exact for it, and chosen
    assert methods == {"conv_r": "fold", "conv_u": "refit", "consumer": "refit"}
    for got, want in zip(run_model(pruned, fresh), run_model(model, fresh)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_refit_is_kept_only_where_it_beats_folding_out_of_sample():
    """Random channels (nothing linear to exploit) of a k x k Conv consumer: for every mask, a kept refit
    has the lower cross-fitted error, and on unseen data it changes the consumer's output less than folding."""
    model = dependent_model()
    for w in model.graph.initializer:  # independent channels
        if w.name in ("Wa", "ba"):
            w.CopyFrom(numpy_helper.from_array(RNG.standard_normal(numpy_helper.to_array(w).shape)
                                               .astype(np.float32) / 4, w.name))
    feeds, fresh = x(300), x(100, seed=2)
    reference = run_model(model, fresh)[0]
    for seed in range(3):
        keep = np.random.default_rng(seed).permutation(np.arange(6) < 3)
        refit, updates = compensated(model, feeds, keep, ridge=1e-3)
        (u,) = updates.values()
        assert u.method in ("refit", "fold") and (u.method == "refit") == (u.error_refit < u.error_fold)
        folded, _ = compensated(model, feeds, keep, mode="fold")
        if u.method == "refit":
            assert np.mean((run_model(refit, fresh)[0] - reference) ** 2) < \
                np.mean((run_model(folded, fresh)[0] - reference) ** 2)


def test_a_refit_that_would_fit_noise_folds():
    """4 samples, a Gemm over 6 x 81 flattened values: the refit fits the calibration rows exactly but loses
    to folding on the other fold, so it is not kept."""
    model = dependent_model(flatten=True)
    for w in model.graph.initializer:
        if w.name in ("Wa", "ba"):
            w.CopyFrom(numpy_helper.from_array(RNG.standard_normal(numpy_helper.to_array(w).shape)
                                               .astype(np.float32), w.name))
    _, updates = compensated(model, x(4), KEEP, ridge=1e-6)
    (u,) = updates.values()
    assert u.method == "fold" and u.error_refit > u.error_fold


def test_a_consumer_whose_gram_would_be_too_large_folds_and_says_why(monkeypatch):
    import onnxprune.reading as reading

    monkeypatch.setattr(reading, "MAX_GRAM_FEATURES", 53)  # the consumer multiplies 6 x 9 = 54 columns
    _, updates, comp = compensation(dependent_model(), x(), KEEP)
    (u,) = updates.values()
    assert u.method == "fold" and "MAX_GRAM_FEATURES" in u.note and "54 columns" in u.note
    assert comp.note_lines() == [u.note] and u.note.startswith("consumer is folded, not refit")


def test_removing_dead_channels_with_refit_leaves_the_outputs_unchanged():
    """Channels 4 and 5 of t are exactly zero: folding is exact there, so it wins over the refit's ridge."""
    model = dependent_model(residual=True)
    for w in model.graph.initializer:
        if w.name in ("Wa", "ba", "Wr", "br"):
            a = numpy_helper.to_array(w).copy()
            a[[4, 5]] = 0 if w.name != "ba" else -1e4
            w.CopyFrom(numpy_helper.from_array(a, w.name))
    feeds = x(64)
    # the two lowest scores are the dead ones (align=1: Conv groups keep multiples of 8 channels by default)
    result = onnxprune.prune(model, feeds, fraction=2 / 6, holdout=0, align=1)
    (group,) = [g for g in result.report.groups if g.prunable]
    assert group.neurons_after == 4 and "refit" not in group.compensation
    for got, want in zip(run_model(result.model, feeds), run_model(model, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-5)




def residual_stream_model(seed=3, width=8, hidden=12, conv=False):
    """x [N, 8] -> E -> Relu -> h1 -> P -> s, the stream; beside it h2 = Relu(x E') with E' = E and one more
    column, a copy of E's first (h2 holds h1 exactly, and a channel linear in another) -> D -> d;
    y = s + (d + c), a graph output (s's own features stay). Removing channels of h1 damages s, which the
    residual Add passes on to y; D sees h1 whole in h2, so it can make up for it exactly. With `conv`, the
    same over x [N, 3, 6, 6]: E, E' 1x1 Convs, P and D 3x3 Convs (padding 1) into `width` channels."""
    rng = np.random.default_rng(seed)
    c_in = 3 if conv else width
    e = (rng.standard_normal((c_in, hidden)) / np.sqrt(c_in)).astype(np.float32)
    weights = {"E": e, "E2": np.hstack([e, e[:, :1]]),
               "P": (rng.standard_normal((hidden, width)) / np.sqrt(hidden)).astype(np.float32),
               "D": (rng.standard_normal((hidden + 1, width)) / np.sqrt(hidden)).astype(np.float32)}
    if conv:  # [out, in, kh, kw]
        weights = {k: w.T[:, :, None, None] for k, w in weights.items()}
        for k in ("P", "D"):
            weights[k] = (rng.standard_normal((width, weights[k].shape[1], 3, 3)) / 6).astype(np.float32)
    weights["c"] = rng.standard_normal((width, 1, 1) if conv else width).astype(np.float32)
    inits = [numpy_helper.from_array(w, k) for k, w in weights.items()]
    op, pads = ("Conv", {"pads": [1, 1, 1, 1]}) if conv else ("MatMul", {})
    nodes = [helper.make_node(op, ["x", "E"], ["e"], name="E"), helper.make_node("Relu", ["e"], ["h1"]),
             helper.make_node(op, ["h1", "P"], ["s"], name="P", **pads),
             helper.make_node(op, ["x", "E2"], ["e2"], name="E2"), helper.make_node("Relu", ["e2"], ["h2"]),
             helper.make_node(op, ["h2", "D"], ["d"], name="D", **pads),
             helper.make_node("Add", ["d", "c"], ["dc"], name="bias"),
             helper.make_node("Add", ["s", "dc"], ["y"], name="residual")]
    shape = ["N", c_in, 6, 6] if conv else ["N", width]
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_residual_input_is_the_other_side_of_the_add_a_consumer_feeds():
    from onnxprune.sequential import residual_input

    model = residual_stream_model()
    index = GraphIndex(model)
    names = {n.name: k for k, n in enumerate(model.graph.node)}
    assert residual_input(index, names["D"]) == "s"  # through the constant bias Add
    assert residual_input(index, names["P"]) == "dc"  # either side of an Add makes up for the other's loss
    assert residual_input(index, names["E"]) is None  # a Relu reads e


def _sequentially_compensated(model, feeds, masks_of, batch_size=256):
    from onnxprune.compensate import Replay

    index = GraphIndex(model)
    groups = find_groups(model, index)
    data = load_data(feeds, model)
    passed = collect_statistics(model, groups, data, index=index, grams=True)
    comp = Compensation(model, index, groups, passed.stats, calibration_grams=passed.calibration_grams,
                        fold_grams=passed.fold_grams, tap_stats=passed.tap_stats, ridge=1e-9,
                        replay=Replay(data, batch_size))
    masks = masks_of([g for g in groups if g.prunable])
    updates = comp.updates(masks, sequential=True)
    return apply_masks(model, groups, masks, updates=updates, index=index), updates


def _half_h1_and_h2s_copy(groups):
    """Every second of h1's 12 channels removed, and h2's copied channel (its 13th): the masks are given (align 1)."""
    (h1,) = [g for g in groups if g.size == 12]
    (h2,) = [g for g in groups if g.size == 13]
    return {h1.id: np.arange(12) % 2 == 0, h2.id: np.arange(13) < 12}


def _stream_and_samples(conv: bool):
    """residual_stream_model, 400 samples to compensate from, 200 fresh ones and the original's outputs on them."""
    model = residual_stream_model(conv=conv)
    rng = np.random.default_rng(0)
    shape = (3, 6, 6) if conv else (8,)
    feeds, fresh = {"x": rng.standard_normal((400, *shape)).astype(np.float32)}, \
        {"x": rng.standard_normal((200, *shape)).astype(np.float32)}
    return model, feeds, fresh, run_model(model, fresh)[0]


@pytest.mark.parametrize("conv", [False, True], ids=["matmul", "conv"])
def test_the_sequential_refit_makes_up_at_the_block_output_for_what_the_skip_lost(monkeypatch, conv):
    """Half of h1 removed, h2's copied channel removed: P cannot reproduce s, but D, whose output joins s at
    the residual Add, sees all of h1 in h2. With residual targets D is solved for y = s + d and y comes out
    exact; solved for d alone, y keeps s's error. Removing nothing changes nothing either way."""
    import onnxprune.sequential as sequential

    model, feeds, fresh, reference = _stream_and_samples(conv)

    errors = {}
    for residual in (False, True):
        monkeypatch.setattr(sequential, "RESIDUAL_TARGETS", residual)
        pruned, updates = _sequentially_compensated(model, feeds, _half_h1_and_h2s_copy)
        methods = {model.graph.node[n].name: u.method for n, u in updates.items()}
        assert methods["D"] == "refit", methods
        errors[residual] = float(np.mean((run_model(pruned, fresh)[0] - reference) ** 2))
    assert errors[False] > 1e-2 and errors[True] < 1e-8, errors
    kept, _ = _sequentially_compensated(model, feeds, lambda groups: {g.id: np.ones(g.size, bool)
                                                                      for g in groups})
    np.testing.assert_allclose(run_model(kept, fresh)[0], reference, atol=1e-5)


def test_replay_parts_interleave_the_samples_and_cover_each_once():
    from onnxprune.compensate import REPLAY_PARTS, Replay
    from onnxprune.data import Dataset

    x = np.arange(2000, dtype=np.float32)[:, None]
    replay = Replay(Dataset({"x": x}, None), 100)
    assert replay.parts == REPLAY_PARTS == 8
    seen, ends, numbers = [], [], []
    for b, feeds, last in replay.batches():
        numbers.append(b)
        seen.append(feeds["x"][:, 0])
        ends.append(last)
    assert numbers == list(range(len(numbers))) and sum(ends) == 8 and ends[-1]
    order = np.concatenate(seen).astype(int)
    np.testing.assert_array_equal(np.sort(order), np.arange(2000))  # every sample once
    first = order[:250]  # the first part: every 8th sample, from the start of the data to its end
    np.testing.assert_array_equal(first, np.arange(0, 2000, 8))
    # fewer than two batches of samples: one part, the data's own order
    small = Replay(Dataset({"x": x[:150]}, None), 100)
    assert small.parts == 1
    np.testing.assert_array_equal(np.concatenate([f["x"][:, 0] for _, f, _ in small.batches()]), np.arange(150))


@pytest.mark.parametrize("rows_per_unknown, parts_read", [(1, 1), (10 ** 6, 8)])
def test_the_sequential_refit_stops_after_the_parts_that_hold_enough_rows(monkeypatch, rows_per_unknown, parts_read):
    """A Conv reading gets 36 rows per sample: with one row per unknown asked, the first of 8 interleaved parts
    (50 of 400 samples) is read and the pass stops; the block output is still reproduced exactly (the solution
    is determined by those rows). Asked for more rows than the data holds, every part is read."""
    import onnxprune.sequential as sequential

    counts = []

    class Counted(sequential.SequentialGram):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            counts.append(self)

    monkeypatch.setattr(sequential, "SequentialGram", Counted)
    monkeypatch.setattr(sequential, "ROWS_PER_UNKNOWN", rows_per_unknown)
    caches, record = [], sequential.OriginalTaps.record.__func__

    def recorded(cls, *args, **kwargs):
        caches.append(record(cls, *args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(sequential.OriginalTaps, "record", classmethod(recorded))
    model = residual_stream_model(conv=True)
    rng = np.random.default_rng(0)
    feeds, fresh = {"x": rng.standard_normal((400, 3, 6, 6)).astype(np.float32)}, \
        {"x": rng.standard_normal((200, 3, 6, 6)).astype(np.float32)}

    pruned, updates = _sequentially_compensated(model, feeds, _half_h1_and_h2s_copy, batch_size=25)
    assert counts and {c.count for c in counts} == {400 // 8 * parts_read * 36}
    # the original's taps are kept for the parts a pass can read: 2 batches of 25 a part
    assert {len(shapes) for shapes in caches[0].shapes.values()} == {2 * parts_read}
    error = float(np.mean((run_model(pruned, fresh)[0] - run_model(model, fresh)[0]) ** 2))
    assert error < 1e-8, error


@pytest.mark.parametrize("conv", [False, True], ids=["matmul", "conv"])
def test_consumers_that_keep_every_input_are_solved_where_the_damage_reaches_them(monkeypatch, conv):
    """Half of h1 removed, h2 kept whole: D removes nothing, but its output joins s, which P cannot reproduce,
    at the residual Add. Solved too (DOWNSTREAM), D takes new weights, written into the model, and makes up
    for s at y exactly (h2 holds h1); left alone, y keeps s's error. Nothing removed, nothing is solved."""
    import onnxprune.sequential as sequential

    model, feeds, fresh, reference = _stream_and_samples(conv)

    def half_h1(groups):
        return {g.id: (np.arange(12) % 2 == 0) if g.size == 12 else np.ones(g.size, bool) for g in groups}

    errors = {}
    for downstream in (False, True):
        monkeypatch.setattr(sequential, "DOWNSTREAM", downstream)
        pruned, updates = _sequentially_compensated(model, feeds, half_h1)
        methods = {model.graph.node[n].name: u.method for n, u in updates.items()}
        assert methods["D"] == ("refit" if downstream else "none"), methods
        errors[downstream] = float(np.mean((run_model(pruned, fresh)[0] - reference) ** 2))
    assert errors[False] > 1e-2 and errors[True] < 1e-8, errors
    kept, updates = _sequentially_compensated(model, feeds, lambda groups: {g.id: np.ones(g.size, bool)
                                                                            for g in groups})
    assert {u.method for u in updates.values()} == {"none"}


def test_a_consumer_downstream_of_exactly_dead_neurons_keeps_its_weights():
    """h1's last 4 channels are exactly zero (E's columns zeroed, no bias): removing them changes neither s nor
    h2, so D, which feeds the Add with s, is not solved again (nothing moved) and y is unchanged."""
    model = residual_stream_model()
    for w in model.graph.initializer:
        if w.name in ("E", "E2"):
            a = numpy_helper.to_array(w).copy()
            a[:, 8:12] = 0
            w.CopyFrom(numpy_helper.from_array(a, w.name))
    feeds = {"x": np.random.default_rng(2).standard_normal((400, 8)).astype(np.float32)}
    pruned, updates = _sequentially_compensated(model, feeds, lambda groups: {
        g.id: (np.arange(12) < 8) if g.size == 12 else np.ones(g.size, bool) for g in groups})
    methods = {model.graph.node[n].name: u.method for n, u in updates.items()}
    assert methods["P"] != "none" and methods["D"] == "none", methods
    np.testing.assert_allclose(run_model(pruned, feeds)[0], run_model(model, feeds)[0], atol=1e-5)

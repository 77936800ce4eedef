import gc
import pickle

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.data import load_data
from onnxprune.groups import find_groups
from onnxprune.refit import Gram, consumer_update
from onnxprune.runtime import collect_statistics
from conftest import make_mlp, random_inputs, run_model


def test_gram_is_independent_of_batch_size():
    model = make_mlp([6, 10, 4])
    feeds = random_inputs(model, n=130)
    data = load_data(feeds, model)
    groups = find_groups(model)
    one = collect_statistics(model, groups, data, batch_size=1, grams=True)
    many = collect_statistics(model, groups, data, batch_size=64, grams=True)
    tap = groups[0].single_tap  # Gram matrices are keyed by what consumers read: here the tap itself
    g1, g64 = one.calibration_grams[tap], many.calibration_grams[tap]
    assert g1.count == g64.count == 130
    # float32 activations: per-batch products are float32, accumulated in float64
    np.testing.assert_allclose(g1.matrix, g64.matrix, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one.stats["gemm0"].std, many.stats["gemm0"].std, rtol=1e-6)


def test_gram_merge_and_error():
    x = np.random.default_rng(0).standard_normal((50, 3))
    g = Gram(3).update(x[:20]).merge(Gram(3).update(x[20:]))
    np.testing.assert_allclose(g.matrix, Gram(3).update(x).matrix)
    change = np.random.default_rng(1).standard_normal((4, 2))
    direct = np.mean(((np.c_[x, np.ones(50)] @ change) ** 2).sum(axis=1))
    assert g.error(change) == pytest.approx(direct)


def constant_neuron_model(form):
    """Neurons 1 and 4 of the first layer are constant but not zero (zero in-weights, positive bias)."""
    model = make_mlp([5, 8, 6, 3], form=form, trans_b=False, seed=3)
    for t in model.graph.initializer:
        if t.name in ("W0", "b0"):
            a = numpy_helper.to_array(t).copy()
            if t.name == "W0":
                a[:, [1, 4]] = 0
            else:
                a[[1, 4]] = [0.7, 1.3]
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return model


@pytest.mark.parametrize("form", ["gemm", "matmul"])
def test_folding_makes_removing_constant_neurons_exact(form):
    model = constant_neuron_model(form)
    feeds = random_inputs(model, n=64)
    reference = run_model(model, feeds)[0]
    folded = onnxprune.prune(model, feeds, std_threshold=1e-9, compensation="fold")
    assert folded.report.groups[0].neurons_after == 6
    np.testing.assert_allclose(run_model(folded.model, feeds)[0], reference, atol=1e-5)
    unfolded = onnxprune.prune(model, feeds, std_threshold=1e-9, compensation="none")
    assert np.abs(run_model(unfolded.model, feeds)[0] - reference).max() > 1e-2
    onnx.checker.check_model(folded.model, full_check=True)


def test_folding_creates_a_bias_where_there_is_none():
    model = constant_neuron_model("matmul")
    # Take the bias Add of the second layer away: the fold must insert one.
    nodes = list(model.graph.node)
    add1 = next(n for n in nodes if n.name == "add1")
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == add1.output[0]:
                n.input[i] = add1.input[0]
    model.graph.node.remove(add1)
    feeds = random_inputs(model, n=32)
    result = onnxprune.prune(model, feeds, std_threshold=1e-9, compensation="fold")
    assert sum(n.op_type == "Add" for n in result.model.graph.node) == 3
    np.testing.assert_allclose(run_model(result.model, feeds)[0], run_model(model, feeds)[0], atol=1e-5)


def test_refit_recovers_a_duplicated_neuron_exactly():
    """Neuron 2 duplicates neuron 0: refit moves its outgoing weight onto neuron 0."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 5)).astype(np.float32)
    w1[:, 2] = w1[:, 0]
    b1 = np.zeros(5, np.float32)
    w2 = rng.standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="l1"), helper.make_node("Add", ["h", "b1"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"], name="l2")],
        "dup", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((400, 4)).astype(np.float32)}
    groups = find_groups(model)
    data = load_data(feeds, model)
    measured = collect_statistics(model, groups, data, grams=True,
                                  calibration=np.arange(400) % 2 == 0)
    keep = np.array([True, True, False, True, True])
    gram = measured.calibration_grams["r"]
    update = consumer_update(w2.astype(np.float64), keep, measured.stats["l1"].mean, mode="refit",
                             calibration=gram, fold=measured.fold_grams["r"])
    assert update.method == "refit" and update.error_refit < 1e-3 * update.error_fold  # ridge: not exactly 0
    np.testing.assert_allclose(update.weight[0], w2[0] + w2[2], atol=2e-2)


def test_refit_decision_is_cross_fitted_on_calibration_folds():
    """With as many features as samples the refit fits noise: judged on the other fold it loses
    to folding, while on its own data it always wins. With plenty of samples it is kept."""
    rng = np.random.default_rng(5)
    n = 40
    w = rng.standard_normal((n, 4))
    keep = np.arange(n) % 4 != 0
    for samples, expected in ((44, "fold"), (4000, "refit")):
        x = rng.standard_normal((samples, n)) + rng.standard_normal((samples, 1))  # correlated features
        cal, fold = Gram(n).update(x), Gram(n).update(x[1::2])
        u = consumer_update(w, keep, x.mean(axis=0), mode="refit", calibration=cal, fold=fold, ridge=1e-9)
        assert u.method == expected
        if expected == "fold":
            assert u.error_refit > u.error_fold > 0  # out of sample, not on the fitted rows
            in_sample = consumer_update(w, keep, x.mean(axis=0), mode="refit", calibration=cal, ridge=1e-9)
            assert in_sample.method == "refit"


def test_refit_on_a_pruned_model_changes_consumers_only_where_it_helps(tmp_path):
    model = make_mlp([8, 24, 12, 4], seed=2)
    feeds = random_inputs(model, n=200)
    result = onnxprune.prune(model, feeds, fraction=0.4, compensation="refit")
    assert result.validation.passed
    onnx.checker.check_model(result.model, full_check=True)
    methods = [m for g in result.report.groups if g.compensation for m in g.compensation]
    assert methods and set(methods) <= {"fold", "refit"}
    folded = onnxprune.prune(model, feeds, fraction=0.4, compensation="fold")
    err = lambda m: np.mean((run_model(m, feeds)[0] - run_model(model, feeds)[0]) ** 2)  # noqa: E731
    assert err(result.model) <= err(folded.model) + 1e-9


def test_sequential_refit_fits_the_pruned_models_own_activations():
    """On the data it was fitted on, refitting layer by layer reproduces the logits at least as well."""
    from conftest import SAMPLES

    data = dict(np.load(SAMPLES / "digits_val.npz"))
    model = onnx.load(str(SAMPLES / "digits_mlp_gemm.onnx"))
    feeds = {"input": data["input"]}
    reference = run_model(model, feeds)[0]
    errors = {}
    for sequential in (False, True):
        result = onnxprune.prune(model, data, fraction=0.7, sequential=sequential)
        assert result.report.settings["sequential_refit"] is sequential
        errors[sequential] = np.mean((run_model(result.model, feeds)[0] - reference) ** 2)
    assert errors[True] <= errors[False] * 1.001


def _direct_update(weight, keep, mean, cal, fold, ridge=1e-3):
    """consumer_update written out the plain way: every Gram whole, every error over all rows."""
    from onnxprune.refit import fold_change, refit_change, refit_theta

    other = cal.minus(fold)
    theta = refit_theta(cal, keep, weight, ridge)
    e_refit = (fold.error(refit_change(weight, keep, refit_theta(other, keep, weight, ridge))) * fold.count
               + other.error(refit_change(weight, keep, refit_theta(fold, keep, weight, ridge))) * other.count
               ) / cal.count
    return theta, e_refit, cal.error(fold_change(weight, keep, mean))


@pytest.mark.parametrize("offload", [False, True])
def test_consumer_update_matches_the_direct_algebra(tmp_path, offload):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12)) + rng.standard_normal(12)
    x[:, 3] = 0.5  # a constant neuron: folding is exact for it
    weight = rng.standard_normal((12, 5))
    cal, fold = Gram(12).update(x), Gram(12).update(x[1::2])
    theta, e_refit, e_fold = _direct_update(weight, np.arange(12) % 3 != 0, x.mean(axis=0), cal, fold)
    if offload:
        cal.offload(tmp_path), fold.offload(tmp_path)
        assert cal._matrix is None and len(list(tmp_path.iterdir())) == 2
    keep = np.arange(12) % 3 != 0
    update = consumer_update(weight, keep, x.mean(axis=0), mode="refit", calibration=cal, fold=fold)
    assert update.error_refit == pytest.approx(e_refit, rel=1e-9)
    assert update.error_fold == pytest.approx(e_fold, rel=1e-9)
    assert update.method == ("refit" if e_refit < e_fold else "fold")
    if update.method == "refit":
        np.testing.assert_allclose(np.vstack([update.weight, update.bias_delta]), theta, rtol=1e-9, atol=1e-12)


def test_offloaded_gram_reads_back_and_merges(tmp_path):
    x = np.random.default_rng(2).standard_normal((30, 4))
    g = Gram(4).update(x)
    before = g.matrix.copy()
    g.offload(tmp_path)
    np.testing.assert_array_equal(g.matrix, before)
    np.testing.assert_array_equal(g.merge(Gram(4)).matrix, before)
    g.matrix[0, 0] = 1e9  # a copy: the stored matrix cannot be changed by a reader
    np.testing.assert_array_equal(g.matrix, before)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(g)).matrix, before)
    with pytest.raises(ValueError):
        g.update(x)
    del g
    gc.collect()
    assert not list(tmp_path.iterdir())  # the file goes with the Gram


@pytest.mark.parametrize("width", [6, 256, 600])  # one panel, exactly one, several and a partial one
def test_fold_grams_equal_the_two_grams_they_replace(width):
    from onnxprune.refit import FoldGrams

    rng = np.random.default_rng(5)
    pair, cal, fold = FoldGrams(width), Gram(width), Gram(width)
    for n in (7, 1, 12):  # batches [samples, positions, features] with a padding mask
        x = rng.standard_normal((n, 3, width)).astype(np.float32)
        second = rng.random(n) < 0.5
        mask = rng.random((n, 3)) < 0.8
        pair.update(x, second, mask)
        cal.update(x, mask)
        fold.update(x[second], mask[second])
    both, second_fold = pair.grams()
    assert (both.count, second_fold.count) == (cal.count, fold.count)
    np.testing.assert_allclose(both.matrix, cal.matrix, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second_fold.matrix, fold.matrix, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(both.matrix, both.matrix.T)


def _problem(n=600, samples=3000, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, n)) @ rng.standard_normal((n, n)) + rng.standard_normal(n)
    x[:, 5], x[:, 7] = 0.0, 0.3  # a dead and a constant neuron
    return x, rng.standard_normal((n, 9)), rng.random(n)


def test_ridge_systems_solve_leading_kept_sets_from_one_factorisation():
    """Kept sets removing neurons in score order share one Cholesky factor per problem; every solution
    equals the direct solve of its own block. A kept set out of that order is solved directly."""
    from onnxprune.refit import RidgeSystems, refit_theta

    x, w, score = _problem()  # 600 features: several substitution blocks, the last one partial
    cal, fold = Gram(600).update(x), Gram(600).update(x[1::2])
    systems = RidgeSystems(w, order=np.argsort(-score, kind="stable"))
    for threshold in (0.03, 0.2, 0.45, 0.9):
        keep = score > threshold
        thetas = systems.solve(keep, {"all": cal.matrix, "fold": fold.matrix})
        direct = refit_theta(cal, keep, w), refit_theta(fold, keep, w)
        for got, want in zip((thetas["all"], thetas["fold"]), direct):
            np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-9 * np.abs(want).max())
    assert (systems.solves, systems.by_prefix) == (4, 8)
    keep = np.arange(600) % 3 != 0  # not removed in score order
    theta = systems.solve(keep, {"all": cal.matrix})["all"]
    assert systems.by_prefix == 8
    np.testing.assert_allclose(theta, refit_theta(cal, keep, w), rtol=1e-12)


def test_ridge_systems_take_their_order_from_the_first_kept_set_and_fall_back_without_a_ridge():
    from onnxprune.refit import RidgeSystems, refit_theta

    x, w, score = _problem(n=40, samples=300)
    cal = Gram(40).update(x)
    systems = RidgeSystems(w)
    first = score > 0.2
    np.testing.assert_allclose(systems.solve(first, {"all": cal.matrix})["all"], refit_theta(cal, first, w),
                               rtol=1e-8, atol=1e-10)
    assert systems.by_prefix == 1  # the first kept set leads its own order
    # no ridge and a dead neuron kept: not positive definite, so the block is solved directly
    plain = RidgeSystems(w, ridge=0.0, order=np.argsort(-score, kind="stable"))
    keep = score > 0.5
    keep[5] = True
    theta = plain.solve(keep, {"all": cal.matrix})["all"]
    assert plain.by_prefix == 0 and np.isfinite(theta).all()


def _digits_selector():
    from onnxprune.options import DataSpec, Options
    from onnxprune.progress import Console
    from onnxprune.run import Run
    from onnxprune.selection import SelectionConfig
    from onnxprune.session import RuntimeOptions
    from conftest import SAMPLES

    # contribution: criterion auto's walks would refit candidates of their own before the search
    config = SelectionConfig.from_options(max_drop=2.0, sequential=False, criterion="contribution")
    run = Run(SAMPLES / "digits_mlp_gemm.onnx", Options(DataSpec(SAMPLES / "digits_val.npz"), config, RuntimeOptions()),
              Console())
    run.prepare()
    run.measure(split=True, grams=True)
    return run.selector()


def test_one_kept_set_is_solved_directly():
    """Outside a search (--fraction, thresholds) each consumer is solved once: no factor is made."""
    selector = _digits_selector()
    selector.build(selector.masks_at(0.3))
    systems = selector.comp._systems
    assert systems and all(s.solves == 1 and s.by_prefix == 0 and not s._factors for s in systems.values())


def test_a_search_refits_from_shared_factors_and_matches_independent_updates():
    """In the default (cross-fitted) search, every fold's consumers refit each candidate from their stored
    factors; the model written is solved once from all the data, and its updates equal those computed
    alone for its masks."""
    selector = _digits_selector()
    chosen, tried = selector.choose([0.1, 0.2, 0.3, 0.4])
    assert selector.folds
    for fold in selector.folds:
        systems = fold.builder.comp._systems
        assert systems and all(s.by_prefix == 3 * s.solves for s in systems.values())  # all, fold, other
    assert all(s.solves == 1 and s.by_prefix == 0 for s in selector.comp._systems.values())
    assert chosen is not None and chosen.fraction > 0
    comp = selector.comp
    for node, update in chosen.updates.items():
        if update.method != "refit":
            continue
        c = comp.consumers[node]
        key = comp.readings[node].key
        alone = consumer_update(comp.effects[node][0], chosen.masks[c.single_group], comp.tap_stats[c.tap].mean,
                                mode="refit", calibration=comp.cal_grams[key], fold=comp.fold_grams[key],
                                ridge=comp.ridge)
        assert alone.method == "refit"
        np.testing.assert_allclose(update.weight, alone.weight, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(update.bias_delta, alone.bias_delta, rtol=1e-7, atol=1e-9)


def test_sequential_refit_runs_the_original_once_and_refits_the_same(monkeypatch):
    """The original's activations at the refit taps are recorded in one pass and read back for every
    layer and candidate; the refits equal those of the pass-per-layer form (the cache turned off)."""
    from conftest import SAMPLES
    from onnxprune.sequential import OriginalTaps
    from onnxprune.session import RuntimeOptions

    data = dict(np.load(SAMPLES / "digits_val.npz"))
    model = onnx.load(str(SAMPLES / "digits_mlp_gemm.onnx"))
    results, runs = {}, {}
    for cached, limit in ((True, OriginalTaps.LIMIT), (False, 0)):
        monkeypatch.setattr(OriginalTaps, "LIMIT", limit)
        options = RuntimeOptions()
        results[cached] = onnxprune.sweep(model, data, grid=[0.3, 0.5, 0.7], sequential=True, options=options)
        runs[cached] = options.runs["refit"]
    cached, plain = results[True], results[False]
    # three candidates, each refitting up to three layers: one original pass in all against one per layer
    assert runs[True] < runs[False] - 5
    for a, b in zip(cached.candidates, plain.candidates):
        assert [(f.metric, f.loss) for f in a.figures] == [(f.metric, f.loss) for f in b.figures]
        assert a.parameters == b.parameters

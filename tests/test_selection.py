import json
import math
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import InputError
from onnxprune.run import calibration_split
from onnxprune.session import RuntimeOptions
from conftest import SAMPLES, make_mlp, random_inputs, run_model

MODEL = SAMPLES / "digits_mlp_gemm.onnx"
DATA = SAMPLES / "digits_val.npz"


def test_budget_choice_is_the_last_candidate_before_the_first_failure():
    result = onnxprune.prune(MODEL, DATA, max_drop=2.0, holdout=0.5)
    candidates = result.candidates
    fractions = [c.fraction for c in candidates]
    assert fractions == sorted(fractions)  # a fixed order, walked upwards
    assert all(c.within_budget for c in candidates[:-1]) and not candidates[-1].within_budget
    chosen = candidates[-2]
    assert result.report.chosen == chosen.label
    assert result.report.parameters_after == chosen.parameters
    assert all(f.passed for f in chosen.figures)
    assert any(not f.passed for f in candidates[-1].figures)
    # The final validation is on the same held-out data: the same figures, bounds included.
    final = result.report.validation["figures"]
    assert [(f["loss"], f["bound"]) for f in final] == [(f.loss, f.bound) for f in chosen.figures]
    assert "held-out" in result.report.provenance["evaluation"]
    assert result.report.provenance["statistics"].endswith("(300 of 600 samples)")


def test_by_default_every_sample_judges_candidates_by_cross_fitting():
    result = onnxprune.prune(MODEL, DATA, max_drop=2.0)
    candidates = result.candidates
    assert all(c.within_budget for c in candidates[:-1]) and not candidates[-1].within_budget
    chosen = candidates[-2]
    assert result.report.chosen == chosen.label and result.report.parameters_after == chosen.parameters
    # every sample is evidence: the figures pool both folds, each judged by the other's statistics
    assert all(f.samples == 600 and f.folds == 2 for f in chosen.figures)
    assert [(f["loss"], f["bound"]) for f in result.report.certified] == [(f.loss, f.bound) for f in chosen.figures]
    assert "2-fold cross-fitting" in result.report.provenance["candidates"]
    assert result.report.provenance["statistics"].endswith("(all 600 samples)")
    # the written model, built from all the data, is checked on it too (in-sample, not the evidence)
    assert all(not f["held_out"] and f["loss"] <= f["budget"] for f in result.report.validation["figures"])


def test_cross_fitted_figures_pool_each_fold_judged_by_the_others_statistics(tmp_path):
    """A candidate's cross-fitted figure is the sum of what each fold sees of the model built from the
    other fold: the same as sweeping with one fold as data and the other as --eval-data, both ways."""
    from onnxprune.run import crossfit_folds

    d = dict(np.load(DATA))
    first, second = crossfit_folds(600, 2)
    halves = [{k: v[idx] for k, v in d.items()} for idx in (first, second)]
    grid = [0.0, 0.3, 0.5]
    pooled = onnxprune.sweep(MODEL, d, grid=grid, max_drop=2.0, sequential=False).candidates
    one = onnxprune.sweep(MODEL, halves[1], eval_data=halves[0], grid=grid, max_drop=2.0, sequential=False)
    other = onnxprune.sweep(MODEL, halves[0], eval_data=halves[1], grid=grid, max_drop=2.0, sequential=False)
    for c, a, b in zip(pooled, one.candidates, other.candidates):
        acc, fa, fb = c.figures[0], a.figures[0], b.figures[0]
        assert acc.evidence["n"] == fa.evidence["n"] + fb.evidence["n"] == 600
        assert acc.evidence["broken"] == fa.evidence["broken"] + fb.evidence["broken"]
        assert acc.evidence["fixed"] == fa.evidence["fixed"] + fb.evidence["fixed"]


def test_a_tighter_budget_never_gives_a_smaller_model():
    loose = onnxprune.prune(MODEL, DATA, max_drop=3.0).report.parameters_after
    tight = onnxprune.prune(MODEL, DATA, max_drop=1.5).report.parameters_after
    assert tight >= loose


def test_too_little_data_is_said_before_the_search_and_only_dead_neurons_go():
    messages = []

    from onnxprune.progress import Console

    class Recorder(Console):
        def log(self, message):
            messages.append(message)

    result = onnxprune.prune(MODEL, DATA, max_drop=0.2, console=Recorder())
    warning = next(i for i, m in enumerate(messages) if m.startswith("warning:"))
    search = next(i for i, m in enumerate(messages) if m.startswith("searching"))
    # an identical model's 95 % bound on n samples is 1 - 0.05 ** (1 / n): 0.2 pp needs 1,497
    assert warning < search and "about 1497 samples would be needed" in messages[warning]
    assert any("cannot show" in n for n in result.report.notes)
    assert result.report.settings["mode"] == "dead"  # the only provably lossless removal
    assert result.validation.passed and "outputs unchanged" in " ".join(result.validation.checks)


def test_prune_and_sweep_report_the_same_interval_for_the_same_candidate():
    swept = onnxprune.sweep(MODEL, DATA, grid=[0.0, 0.2, 0.4], max_drop=2.0)
    pruned = onnxprune.prune(MODEL, DATA, grid=[0.0, 0.2, 0.4], max_drop=2.0)
    for a, b in zip(swept.candidates, pruned.candidates):
        assert a.label == b.label
        assert [(f.metric, f.loss, f.bound, f.samples) for f in a.figures] == \
            [(f.metric, f.loss, f.bound, f.samples) for f in b.figures]
    assert swept.chosen.label == pruned.report.chosen


def test_candidates_never_trigger_a_second_statistics_pass():
    options = RuntimeOptions()
    result = onnxprune.sweep(MODEL, DATA, grid=[0.0, 0.2, 0.4, 0.6], batch_size=128, options=options, holdout=0.5)
    assert len(result.candidates) == 4
    assert options.runs["statistics"] == math.ceil(600 / 128)  # one pass over all the data
    # one held-out pass per candidate; the first removes nothing: it is the original, whose outputs are known
    assert options.runs["candidate"] == 3 * math.ceil(300 / 128)
    assert options.runs["original"] == 0  # reference outputs came from the statistics pass
    # cross-fitting: a pass per fold, which keeps the original's outputs on it; each candidate runs once per
    # fold, on that fold only
    options = RuntimeOptions()
    onnxprune.sweep(MODEL, DATA, grid=[0.0, 0.2, 0.4, 0.6], batch_size=128, options=options, sequential=False)
    assert options.runs["statistics"] == 2 * math.ceil(300 / 128)
    assert options.runs["candidate"] == 3 * 2 * math.ceil(300 / 128)
    assert options.runs["original"] == 0


def test_split_is_deterministic_and_disjoint():
    a, b = calibration_split(600, 0.5), calibration_split(600, 0.5)
    assert np.array_equal(a, b) and a.sum() == 300
    assert not a[:50].all() and a[:50].any()  # shuffled, not the first half
    assert calibration_split(10, 0.5) is None


def test_eval_data_is_used_and_reported(tmp_path):
    d = np.load(DATA)
    np.savez(tmp_path / "cal.npz", input=d["input"][:400], labels=d["labels"][:400])
    np.savez(tmp_path / "eval.npz", input=d["input"][400:], labels=d["labels"][400:])
    result = onnxprune.prune(MODEL, tmp_path / "cal.npz", eval_data=tmp_path / "eval.npz")
    assert "eval.npz (200 samples, --eval-data)" in result.report.provenance["evaluation"]
    assert "all 400 samples" in result.report.provenance["statistics"]
    assert result.validation.samples == 200


def test_auto_metric_follows_the_outputs():
    model = make_mlp([6, 16, 4])
    feeds = random_inputs(model, n=80)
    result = onnxprune.sweep(model, feeds, grid=[0.0, 0.3])
    assert [f.metric for f in result.candidates[0].figures] == ["agreement", "score"]
    single = make_mlp([6, 16, 1], activation="Relu")
    result = onnxprune.sweep(single, random_inputs(single, n=80), grid=[0.0, 0.3])
    assert [f.metric for f in result.candidates[0].figures] == ["agreement", "score"]  # decisions at 0.5
    wide = make_mlp([6, 16, 4])
    wide.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    hidden = onnxprune.sweep(wide, feeds, grid=[0.0], metric="channel")
    assert hidden.metric == "channel" and hidden.candidates[0].primary.loss == pytest.approx(0.0)
    with pytest.raises(InputError, match="needs labels"):
        onnxprune.sweep(model, feeds, metric="accuracy")


def test_cosine_budget_is_respected():
    model = make_mlp([6, 32, 8])
    feeds = random_inputs(model, n=120)
    result = onnxprune.prune(model, feeds, metric="cosine", min_cosine=0.995)
    chosen = next(c for c in result.candidates if c.label == result.report.chosen)
    assert 1 - chosen.primary.bound >= 0.995  # the lower confidence bound of the mean cosine
    assert result.report.settings["metric"] == "cosine"


def test_sweep_json_matches_the_table():
    runner = CliRunner()
    args = ["sweep", str(MODEL), "--data", str(DATA), "--grid", "0,0.3,0.6", "--max-drop", "2", "-q"]
    table = runner.invoke(main, args[:-1])
    data = json.loads(runner.invoke(main, args + ["--json"]).stdout)
    assert table.exit_code == 0
    rows = [line for line in table.stdout.splitlines() if line.startswith("remove ")]
    assert len(rows) == len(data["candidates"]) == 3
    for row, c in zip(rows, data["candidates"]):
        assert row.startswith(c["label"])
        assert f"{c['parameters']:,}" in row
        assert (" ok" in row) == c["within_budget"]
    assert data["chosen"] in [c["label"] for c in data["candidates"]]


def test_bad_grid_is_a_usage_error():
    result = CliRunner().invoke(main, ["sweep", str(MODEL), "--data", str(DATA), "--grid", "0.5,abc"])
    assert result.exit_code == 2 and "comma-separated" in result.stderr


def png_pixels(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(str(path))


def test_plots_are_real_pictures(tmp_path):
    runner = CliRunner()
    s = runner.invoke(main, ["stats", str(MODEL), "--data", str(DATA), "--plot", str(tmp_path / "s.png"), "-q"])
    t = runner.invoke(main, ["sweep", str(MODEL), "--data", str(DATA), "--grid", "0,0.5,0.7",
                             "--plot", str(tmp_path / "t.png"), "-q"])
    assert s.exit_code == 0 and t.exit_code == 0, (s.stderr, t.stderr)
    stats_img, trade_img = png_pixels(tmp_path / "s.png"), png_pixels(tmp_path / "t.png")
    assert stats_img.shape[:2] == (450, 1350)  # three layers: three panels side by side, and a title
    assert trade_img.shape[:2] == (480, 750)
    for img in (stats_img, trade_img):
        assert img[..., :3].std() > 0.05  # not blank
    # each panel has ink of its own
    thirds = np.array_split(stats_img[..., :3].mean(axis=2), 3, axis=1)
    assert all(part.std() > 0.05 for part in thirds)


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    """Without matplotlib --plot is a warning (it used to stop the run with exit 2 and no table)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["stats", str(MODEL), "--data", str(DATA), "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 0 and "/0/Gemm" in result.stdout
    assert "pip install 'onnxprune[plot]'" in result.stderr
    assert not (tmp_path / "x.png").exists()
    # everything else still works without it
    assert CliRunner().invoke(main, ["stats", str(MODEL), "--data", str(DATA), "-q"]).exit_code == 0


def test_stats_json_and_table():
    runner = CliRunner()
    table = runner.invoke(main, ["stats", str(MODEL), "--data", str(DATA), "-q"]).stdout
    data = json.loads(runner.invoke(main, ["stats", str(MODEL), "--data", str(DATA), "--json", "-q"]).stdout)
    assert list(data) == ["/0/Gemm", "/2/Gemm", "/4/Gemm"]
    assert [d["dead"] for d in data.values()] == [16, 25, 9]
    for name, d in data.items():
        line = next(line for line in table.splitlines() if line.startswith(name))
        assert line.split()[1:3] == [str(d["neurons"]), str(d["dead"])]




def test_budget_mode_on_too_few_samples_to_split():
    model = make_mlp([6, 16, 4])
    result = onnxprune.prune(model, random_inputs(model, n=12))
    assert result.validation.passed
    assert "the same as the statistics" in result.report.provenance["evaluation"]
    assert onnxprune.prune(model, random_inputs(model, n=60), holdout=0.0).validation.passed


def test_fixed_batch_model_gets_a_held_out_split_in_whole_batches():
    model = make_mlp([6, 16, 4], batch=4)
    result = onnxprune.prune(model, random_inputs(model, n=60))  # batch fixed to 4
    assert result.validation.passed and result.validation.samples % 4 == 0
    assert calibration_split(60, 0.5, multiple=4).sum() % 4 == 0


def _selector(batch_size=256):
    from onnxprune.options import DataSpec, Options
    from onnxprune.progress import Console
    from onnxprune.run import Run
    from onnxprune.selection import SelectionConfig

    run = Run(MODEL, Options(DataSpec(DATA, batch_size=batch_size, holdout=0.5), SelectionConfig(), RuntimeOptions()),
              Console())
    run.prepare()
    run.measure(split=True, grams=True)
    return run.prepared, run.selector()


def test_a_candidate_removing_nothing_is_judged_on_the_reference_itself():
    p, selector = _selector()
    ran = selector.evaluate(p.model)  # the original model, run again
    runs = selector.options.runs["candidate"]
    candidate = selector.at_fraction(0.0)
    assert selector.options.runs["candidate"] == runs  # no run for the candidate
    assert [(f.metric, f.loss, f.bound, f.samples) for f in candidate.figures] == \
        [(f.metric, f.loss, f.bound, f.samples) for f in ran]
    assert candidate.parameters == selector.parameters_before


def test_runs_in_pieces_give_the_same_figures():
    p, whole = _selector()
    masks = whole.masks_at(0.3)
    expected = whole.candidate(masks, "whole").figures
    whole.run_samples = 7  # what the statistics pass sets for a model with big activations
    before = whole.options.runs["candidate"]
    pieces = whole.candidate(masks, "pieces").figures
    assert whole.options.runs["candidate"] - before == math.ceil(300 / 7)
    for a, b in zip(expected, pieces):
        assert (a.metric, a.samples, a.passed) == (b.metric, b.samples, b.passed)
        assert a.loss == pytest.approx(b.loss, rel=1e-9, abs=1e-12)
        assert a.bound == pytest.approx(b.bound, rel=1e-9, abs=1e-12)


def test_only_the_chosen_candidate_keeps_its_refit_weights():
    result = onnxprune.prune(MODEL, DATA, max_drop=2.0, compensation="refit")
    chosen = next(c for c in result.candidates if c.label == result.report.chosen)
    for c in result.candidates:
        weights = [u.weight is not None for u in c.updates.values()]
        refit = [u.method == "refit" for u in c.updates.values()]
        assert weights == (refit if c is chosen else [False] * len(refit))
    assert any(c.to_dict(1)["refit_consumers"] for c in result.candidates)  # the count survives


def test_dead_only_fallback_keeps_a_neuron_that_fires_on_held_out_samples_only():
    """When no candidate can be shown within the budget, only neurons dead on every sample are removed:
    one that is zero on the calibration rows but fires on a held-out row stays (else the exact check
    of the written model fails, as it did)."""
    from onnx import helper, numpy_helper

    from onnxprune.run import calibration_split

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    b1 = np.zeros(6, np.float32)
    w1[:, 0], b1[0] = [1, 0, 0, 0], -10.0  # neuron 0 fires only when x0 > 10
    b1[5] = -1e3                           # neuron 5 never fires
    w2 = rng.standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "B1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(a, n) for n, a in (("W1", w1), ("B1", b1), ("W2", w2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((40, 4)).astype(np.float32)
    held = np.flatnonzero(~calibration_split(40, 0.5))
    x[held[0], 0] = 20.0
    labels = np.argmax(x @ w1 @ w2, axis=1)  # any labels: 20 held-out samples cannot resolve 0.5 pp
    result = onnxprune.prune(model, {"x": x, "labels": labels})
    assert any("only exactly-dead neurons" in n for n in result.report.notes)
    (g,) = [g for g in result.report.groups if g.prunable]
    assert (g.neurons_before, g.neurons_after) == (6, 5)  # neuron 5 goes, neuron 0 stays
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], run_model(model, {"x": x})[0], atol=1e-5)


def test_a_budget_the_data_cannot_certify_says_what_it_can():
    """0.2 pp needs about 1,500 samples even for an identical model: nothing is certified, and the
    report says which looser budget this data certifies, from a few more steps of the same walk."""
    result = onnxprune.prune(MODEL, DATA, max_drop=0.2, sequential=False)
    report = result.report
    assert report.settings["mode"] == "dead"
    summary = report.certifiable
    assert summary["looser"], "a looser budget certifies something on this data"
    first = summary["looser"][0]
    assert first["option"].startswith("--max-drop ") and first["budget"] > 0.2 and first["parameter_reduction"] > 0
    assert any(n.startswith(f"this data certifies {first['candidate']}") for n in report.notes)
    # the claim is what the fixed sequence would certify at that budget: every candidate up to the one named
    # has its bound within it, and the JSON says so too
    walk = [c for c in result.candidates]
    upto = next(i for i, c in enumerate(walk) if c.label == first["candidate"])
    assert all(c.primary.bound <= first["budget"] for c in walk[: upto + 1])
    assert json.loads(report.to_json())["certifiable"]["looser"][0]["candidate"] == first["candidate"]


def test_the_report_says_what_stopped_the_search_and_how_many_samples_would_pass_it():
    result = onnxprune.prune(MODEL, DATA, max_drop=1.0, sequential=False)
    stop = result.report.certifiable["stopped_at"]
    last = result.candidates[-1]
    assert stop["candidate"] == last.label and not last.within_budget
    assert stop["failed"] and all(" > " in f for f in stop["failed"])
    if stop["samples_needed"] is not None:  # at its observed rates, that many samples would certify it
        from onnxprune.bounds import paired_drop_upper

        acc = last.figures[0].evidence
        n = stop["samples_needed"]
        rate_b, rate_f = acc["broken"] / acc["n"], acc["fixed"] / acc["n"]
        assert 100 * paired_drop_upper(round(rate_b * n), round(rate_f * n), n, 0.05) <= 1.0
        assert n > 600
    assert any(n.startswith(f"the search stopped at {last.label}") for n in result.report.notes)


def test_folds_are_deterministic_disjoint_and_cover_every_sample():
    from onnxprune.run import crossfit_folds

    a, b = crossfit_folds(600, 3), crossfit_folds(600, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    joined = np.concatenate(a)
    assert len(joined) == 600 and len(np.unique(joined)) == 600
    assert [len(f) for f in a] == [200, 200, 200] and not np.array_equal(a[0], np.arange(200))
    assert [len(f) % 8 for f in crossfit_folds(96, 2, multiple=8)] == [0, 0]  # whole fixed batches
    assert crossfit_folds(10, 2) is None and crossfit_folds(100, 2, multiple=7) is None


def test_folds_holdout_and_eval_data_are_alternatives(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, [str(MODEL), "--data", str(DATA), "--folds", "2", "--holdout", "0.5"])
    assert result.exit_code == 2 and "not two of them" in result.stderr
    three = onnxprune.sweep(MODEL, DATA, grid=[0.0, 0.3], folds=3, sequential=False)
    assert all(f.folds == 3 and f.samples == 600 for c in three.candidates for f in c.figures)
    assert "3-fold" in three.provenance["candidates"]

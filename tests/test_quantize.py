"""--quantize: every candidate quantized by onnxruntime's quantizer before the budget judges it (onnxprune/quantize.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxprune
from conftest import SAMPLES, make_mlp, run_model
from onnxprune.cli import main
from test_cli import RUNNER
from onnxprune.errors import InputError, QuantizationOverBudget
from onnxprune.options import SMALL_MODEL_FOLDS, DataSpec, Options
from onnxprune.run import Run
from onnxprune.selection import SelectionConfig
from quantized_models import ort_quantized

DEAD = {0: list(range(0, 24, 3)), 1: [0, 3, 5]}


def mlp(form="gemm", batch="N"):
    return make_mlp([16, 48, 24, 4], dead=DEAD, dead_by="zero", form=form, batch=batch, seed=3)


def data(model, n=400, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return {"input": x, "labels": run_model(model, {"input": x})[0].argmax(1)}


def ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_static_candidates_are_judged_quantized_and_the_written_model_is_quantized(tmp_path):
    model = mlp()
    feeds = data(model)
    out = tmp_path / "small.onnx"
    result = onnxprune.prune(model, feeds, quantize="static", max_drop=5.0, max_class_drop=50.0, output=out)
    assert result.validation.passed and out.exists()
    written = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(written)
    onnx.checker.check_model(written, full_check=True)
    # the first candidate is the original quantized alone, and it is quantized: its loss is not the reference's 0
    first = result.candidates[0]
    assert first.fraction == 0 and first.label == "remove 0.0%"
    names = [v["name"] for v in result.report.variants]
    assert names == ["original", "quantized only", "pruned only", "pruned + quantized"]
    by_name = {v["name"]: v for v in result.report.variants}
    chosen = next(c for c in result.candidates if c.label == result.report.chosen)
    assert by_name["pruned + quantized"]["figures"] == [f.to_dict() for f in chosen.figures]
    assert by_name["quantized only"]["figures"] == [f.to_dict() for f in first.figures]
    assert all(f["folds"] == SMALL_MODEL_FOLDS for v in result.report.variants for f in v["figures"])
    sizes = {v["name"]: v["file_size"] for v in result.report.variants}
    assert sizes["quantized only"] < sizes["original"]  # (a file this small is mostly names and metadata)
    parameters = {v["name"]: v["parameters"] for v in result.report.variants}
    assert parameters["pruned + quantized"] < parameters["quantized only"]
    assert result.report.settings["quantize"] == "static"
    assert "calibrated" in result.report.provenance["quantization"]
    text = result.report.format_table()
    assert "pruned + quantized" in text and "then quantized (static" in text


def test_cross_fitted_candidates_are_calibrated_on_the_other_folds_samples():
    model = mlp()
    feeds = data(model, n=200)
    options = Options(DataSpec(feeds), SelectionConfig(quantize="static"))
    run = Run(model, options)
    run.prepare()
    run.measure(split=True, grams=True)
    selector = run.selector()
    assert selector.quantizer.data.n_samples == 200  # the written model: every calibration sample
    everything = feeds["input"]
    for fold, judge in zip(run.measured.folds, selector.folds):
        calibration = next(judge.builder.quantizer.data.batches(1000))["input"]
        others = np.setdiff1d(np.arange(200), fold.indices)
        np.testing.assert_array_equal(calibration, everything[others])
        np.testing.assert_array_equal(next(judge.data.batches(1000))["input"], everything[fold.indices])


def test_when_the_quantized_original_breaks_the_budget_it_says_so_and_stops(tmp_path):
    model = mlp()
    feeds = data(model)
    with pytest.raises(QuantizationOverBudget, match="quantizing the original model alone breaks the budget"):
        onnxprune.prune(model, feeds, quantize="static", metric="cosine", min_cosine=0.999999999,
                        output=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    np.savez(tmp_path / "d.npz", **feeds)
    r = RUNNER.invoke(main, ["prune", str(path), "--data", str(tmp_path / "d.npz"), "--quantize", "static",
                                  "--metric", "cosine", "--min-cosine", "0.999999999", "-q"])
    assert r.exit_code == 4, r.output
    assert r.stderr.startswith("Error: quantizing the original model alone breaks the budget") and \
        r.stderr.count("\n") == 1


def test_dynamic_quantization_for_matmul_models():
    model = mlp(form="matmul")
    feeds = data(model)
    result = onnxprune.prune(model, feeds, quantize="dynamic", max_drop=5.0, max_class_drop=50.0)
    assert result.validation.passed
    assert "MatMulInteger" in ops(result.model) and "DynamicQuantizeLinear" in ops(result.model)
    assert result.report.variants[3]["parameters"] < result.report.variants[1]["parameters"]


def test_an_already_quantized_model_is_refused_with_one_line(tmp_path):
    model = mlp()
    feeds = data(model)
    quantized = ort_quantized(model, {"input": feeds["input"]}, "qdq")
    with pytest.raises(InputError, match="already quantized"):
        onnxprune.prune(quantized, feeds, quantize="static")
    with pytest.raises(InputError, match="unknown quantization"):
        onnxprune.prune(model, feeds, quantize="int4")


def test_a_dynamic_batch_and_external_data_survive(tmp_path):
    model = make_mlp([64, 96, 48, 4], dead={0: list(range(0, 96, 4))}, dead_by="zero", seed=1)
    x = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    feeds = {"input": x, "labels": run_model(model, {"input": x})[0].argmax(1)}
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    out = tmp_path / "m.small.onnx"
    result = onnxprune.prune(path, feeds, quantize="static", max_drop=5.0, max_class_drop=50.0, output=out)
    assert result.validation.passed and (tmp_path / "m.small.onnx.data").exists()
    for n in (1, 7, 64):
        y = run_model(out, {"input": x[:n]})[0]
        assert y.shape == (n, 4)
        assert (y.argmax(1) == feeds["labels"][:n]).mean() > 0.7


def test_stale_shapes_are_reinferred_before_the_quantizer_sees_them():
    """A hand-written model whose value_info lists every tensor's shape: pruning changes some of them, and the
    quantizer (which runs shape inference on what it is given) must not see the old ones."""
    model = mlp()
    inferred = onnx.shape_inference.infer_shapes(model)
    assert len(inferred.graph.value_info) >= 4
    feeds = data(inferred)
    result = onnxprune.prune(inferred, feeds, quantize="static", fraction=0.3)
    assert result.validation.passed
    onnx.checker.check_model(result.model, full_check=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in result.model.graph.value_info}
    kept = result.report.groups[0].neurons_after
    assert all(s[-1] in (kept, 0) for name, s in shapes.items() if name in ("linear0", "act0"))


def test_a_sweep_judges_quantized_candidates():
    model = mlp()
    feeds = data(model)
    result = onnxprune.sweep(model, feeds, quantize="static", grid=[0.0, 0.2])
    assert [c.fraction for c in result.candidates] == [0.0, 0.2]
    assert result.to_dict()["candidates"][0]["figures"]


def test_cli_bench_times_each_model_and_its_quantized_copy(tmp_path):
    model = mlp()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    np.savez(tmp_path / "d.npz", **data(model, n=64))
    r = RUNNER.invoke(main, ["bench", str(path), "--quantize", "static", "--data", str(tmp_path / "d.npz"),
                                  "--batch-sizes", "1", "--min-seconds", "0", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["model"].rsplit("/", 1)[-1] for row in rows] == ["m.onnx", "m.static-int8.onnx"]
    assert rows[1]["file_size"] < rows[0]["file_size"]
    r = RUNNER.invoke(main, ["prune", str(path), "--data", str(tmp_path / "d.npz"), "--quantize", "int3"])
    assert r.exit_code == 2


def test_cli_prune_with_bench_times_the_four_variants(tmp_path):
    model = mlp()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    np.savez(tmp_path / "d.npz", **data(model))
    r = RUNNER.invoke(main, ["prune", str(path), "--data", str(tmp_path / "d.npz"), "--quantize", "static",
                                  "--max-drop", "5", "--max-class-drop", "50", "--bench", "--batch-sizes", "1", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [v["name"] for v in report["variants"]][3] == "pruned + quantized"
    assert [row["model"].rsplit("/", 1)[-1] for row in report["bench"]] == [
        "m.onnx", "m.pruned.quantized-only.onnx", "m.pruned.pruned-only.onnx", "m.pruned.onnx"]


def test_a_grid_without_zero_still_judges_the_quantized_original_first():
    model = mlp()
    feeds = data(model)
    result = onnxprune.prune(model, feeds, quantize="static", max_drop=5.0, max_class_drop=50.0, grid=[0.1, 0.2])
    assert [c.fraction for c in result.candidates][:2] == [0.0, 0.1]


def test_quantized_layers_take_the_measured_alignment():
    from onnxprune.groups import NeuronGroup
    from onnxprune.quantize import QUANTIZED_ALIGN, default_align

    conv, gemm, qconv = (NeuronGroup("n", op, 16) for op in ("Conv", "Gemm", "QLinearConv"))
    assert default_align(conv, "none") == 0 and default_align(gemm, "none") == 0  # the float defaults hold
    assert default_align(conv, "static") == QUANTIZED_ALIGN["conv"]
    assert default_align(gemm, "dynamic") == QUANTIZED_ALIGN["matmul"]
    assert default_align(qconv, "none") == QUANTIZED_ALIGN["conv"]  # already quantized: its kernels are int8


def weight_sources(model) -> list[str]:
    """Each Conv's weight producer, in order: 'DequantizeLinear' (int8) or 'float' (an initializer as it is)."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return [producers.get(n.input[1], "float") for n in model.graph.node if n.op_type == "Conv"]


def test_static_quantization_leaves_a_one_channel_stem_in_float_unless_asked(tmp_path):
    from onnxprune.data import Dataset
    from onnxprune.quantize import FLOAT_STEM_CHANNELS, Quantizer

    cnn = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    images = np.load(SAMPLES / "digits_val_images.npz")["image"][:128]
    for node in cnn.graph.node:
        node.name = ""  # unnamed nodes (the quantizer excludes by name): named for it, left unnamed here
    before = cnn.SerializeToString()
    assert FLOAT_STEM_CHANNELS >= 1
    default = Quantizer("static", Dataset({"image": images}, None))(cnn)
    assert cnn.SerializeToString() == before
    sources = weight_sources(default)
    assert sources == ["float", "DequantizeLinear", "DequantizeLinear"]  # the 1-channel stem alone stays float
    everything = Quantizer("static", Dataset({"image": images}, None), quantize_stem=True)(cnn)
    assert weight_sources(everything) == ["DequantizeLinear"] * 3
    for model in (default, everything):  # both run, and stay close to the float model on its own digits
        onnx.checker.check_model(model, full_check=True)
        y, y0 = run_model(model, {"image": images})[0], run_model(cnn, {"image": images})[0]
        assert np.mean(y.argmax(1) == y0.argmax(1)) > 0.9


def test_cli_quantize_stem_is_a_setting_and_reaches_the_written_model(tmp_path):
    out = tmp_path / "small.onnx"
    args = ["prune", str(SAMPLES / "digits_cnn.onnx"), "--data", str(SAMPLES / "digits_val_images.npz"),
            "--fraction", "0.2", "--holdout", "0", "--quantize", "static", "-o", str(out), "--json", "--quiet"]
    for flag, first in (([], "float"), (["--quantize-stem"], "DequantizeLinear")):
        result = RUNNER.invoke(main, args + flag + ["--force"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["settings"]["quantize_stem"] is bool(flag)
        assert weight_sources(onnx.load(str(out)))[0] == first


def test_quantize_stem_without_static_quantization_is_refused_with_one_line(tmp_path):
    model = str(SAMPLES / "digits_cnn.onnx")
    data = str(SAMPLES / "digits_val_images.npz")
    for args in (["prune", model, "--data", data, "--fraction", "0.2", "-o", str(tmp_path / "o.onnx")],
                 ["prune", model, "--data", data, "--quantize", "dynamic", "-o", str(tmp_path / "o.onnx")],
                 ["bench", model, "--quantize", "dynamic"]):
        result = RUNNER.invoke(main, args + ["--quantize-stem"])
        assert result.exit_code == 2, result.output
        assert "--quantize-stem applies to --quantize static only" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "o.onnx").exists()

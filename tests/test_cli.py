import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune.run
from onnxprune.cli import main
from conftest import SAMPLES, make_mlp, random_inputs, save

# Click >= 8.2 keeps stderr apart by default; older versions need mix_stderr=False.
try:
    RUNNER = CliRunner(mix_stderr=False)
except TypeError:
    RUNNER = CliRunner()


@pytest.fixture
def case(tmp_path):
    model = make_mlp([6, 16, 8, 3], dead={0: [0, 3, 5], 1: [2]})
    path = save(model, tmp_path / "m.onnx")
    feeds = random_inputs(model, n=50)
    labels = np.random.default_rng(0).integers(0, 3, 50)
    data = tmp_path / "d.npz"
    np.savez(data, input=feeds["input"], labels=labels)
    return path, data, tmp_path


def invoke(*args):
    return RUNNER.invoke(main, [str(a) for a in args], catch_exceptions=False)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(result, code, text):
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # progress lines may precede it
    assert text in errors[0]
    assert "Traceback" not in result.stderr


def test_prune_writes_beside_the_input_by_default(case):
    path, data, tmp = case
    before = digest(path)
    result = invoke(path, "--data", data, "--criterion", "dead")
    assert result.exit_code == 0, result.stderr
    out = tmp / "m.pruned.onnx"
    onnx.checker.check_model(str(out), full_check=True)
    assert "16 -> 13" in result.stdout and "8 -> 7" in result.stdout
    assert "validation passed" in result.stdout and "accuracy" in result.stdout
    assert "measuring activations on 50 samples" in result.stderr
    assert digest(path) == before
    assert sorted(p.name for p in tmp.iterdir()) == ["d.npz", "m.onnx", "m.pruned.onnx"]


def test_explicit_thresholds_report_and_json(case):
    path, data, tmp = case
    result = invoke("prune", path, "--data", data, "-o", tmp / "s.onnx", "--mean-threshold", "0.1",
                    "--std-threshold", "0.4", "--report", tmp / "r.json", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    printed = json.loads(result.stdout)
    written = json.loads((tmp / "r.json").read_text())
    assert printed == written
    assert printed["settings"]["criterion"] == "seed" and printed["settings"]["mode"] == "thresholds"
    assert printed["settings"]["mean_threshold"] == 0.1
    assert printed["validation"]["passed"] is True
    assert printed["written"] is True
    assert [g["neurons_before"] for g in printed["groups"]] == [16, 8, 3]
    assert printed["parameters_after"] < printed["parameters_before"]
    assert printed["validation"]["accuracy"]["before"] is not None


def test_quiet_prints_nothing(case):
    path, data, tmp = case
    result = invoke(path, "--data", data, "-o", tmp / "q.onnx", "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_existing_output_needs_force(case):
    path, data, tmp = case
    out = tmp / "o.onnx"
    out.write_bytes(b"keep me")
    assert_one_line_error(invoke(path, "--data", data, "-o", out), 2, "use --force")
    assert out.read_bytes() == b"keep me"
    assert invoke(path, "--data", data, "-o", out, "--force", "-q").exit_code == 0
    onnx.checker.check_model(str(out))


def bad(tmp, kind):
    """Make one kind of bad input; return (args, expected message)."""
    model = tmp / "m.onnx"
    data = tmp / "d.npz"
    x = np.load(data)["input"]
    if kind == "missing model":
        return [tmp / "nope.onnx", "--data", data], "model file not found"
    if kind == "corrupt model":
        (tmp / "c.onnx").write_bytes(os.urandom(300))
        return [tmp / "c.onnx", "--data", data], "not"
    if kind == "text file as model":
        (tmp / "t.onnx").write_text("hello, I am not a model\n")
        return [tmp / "t.onnx", "--data", data], "not an ONNX model"
    if kind == "truncated model":
        (tmp / "tr.onnx").write_bytes(model.read_bytes()[:200])
        return [tmp / "tr.onnx", "--data", data], "not"
    if kind == "missing data":
        return [model, "--data", tmp / "nope.npz"], "data file not found"
    if kind == "missing key":
        np.savez(tmp / "k.npz", a=x, b=x)
        return [model, "--data", tmp / "k.npz"], "no array for model input(s) 'input'"
    if kind == "pickled":
        np.savez(tmp / "p.npz", input=np.array([object()] * 3, dtype=object))
        return [model, "--data", tmp / "p.npz"], "pickled"
    if kind == "wrong shape":
        np.savez(tmp / "s.npz", input=x[:, :4])
        return [model, "--data", tmp / "s.npz"], "axis 1: 4 != 6"
    if kind == "wrong dtype":
        np.savez(tmp / "t.npz", input=x.astype(np.float64))
        return [model, "--data", tmp / "t.npz"], "expects float32"
    if kind == "nan":
        y = x.copy()
        y[3, 2] = np.nan
        np.savez(tmp / "n.npz", input=y)
        return [model, "--data", tmp / "n.npz"], "1 NaN or infinite"
    if kind == "inf":
        y = x.copy()
        y[0, 0] = np.inf
        np.savez(tmp / "i.npz", input=y)
        return [model, "--data", tmp / "i.npz"], "NaN or infinite"
    if kind == "zero samples":
        np.savez(tmp / "z.npz", input=x[:0])
        return [model, "--data", tmp / "z.npz"], "zero samples"
    if kind == "output is input":
        return [model, "--data", data, "-o", model, "--force"], "output path is the input model"
    if kind == "missing output directory":
        return [model, "--data", data, "-o", tmp / "no" / "dir" / "o.onnx"], "output directory does not exist"
    if kind == "output directory is a file":
        return [model, "--data", data, "-o", tmp / "d.npz" / "o.onnx"], "not a directory"
    if kind == "negative mean threshold":
        return [model, "--data", data, "--mean-threshold", "-0.5"], "--mean-threshold"
    if kind == "negative std threshold":
        return [model, "--data", data, "--std-threshold", "-1"], "--std-threshold"
    if kind == "nan threshold":
        return [model, "--data", data, "--std-threshold", "nan"], "std threshold must be a non-negative number"
    if kind == "missing --data":
        return [model], "--data"
    if kind == "labels of wrong length":
        np.savez(tmp / "l.npz", input=x, labels=np.arange(3))
        return [model, "--data", tmp / "l.npz"], "3 labels for 50 samples"
    raise AssertionError(kind)


BAD_INPUTS = ["missing model", "corrupt model", "text file as model", "truncated model", "missing data",
              "missing key", "pickled", "wrong shape", "wrong dtype", "nan", "inf", "zero samples",
              "output is input", "missing output directory", "output directory is a file",
              "negative mean threshold", "negative std threshold", "nan threshold", "missing --data",
              "labels of wrong length"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, kind):
    path, data, tmp = case
    before = digest(path)
    args, message = bad(tmp, kind)
    existing = sorted(p.name for p in tmp.rglob("*"))
    assert_one_line_error(invoke(*args), 2, message)
    assert digest(path) == before
    assert sorted(p.name for p in tmp.rglob("*")) == existing  # no partial or temporary file


def test_failed_validation_writes_nothing_and_exits_3(case, monkeypatch):
    path, data, tmp = case
    real = onnxprune.run.apply_masks

    def wrong(*args, **kwargs):  # a rewrite bug: one weight silently changed
        model = real(*args, **kwargs)
        w = model.graph.initializer[0]
        array = onnx.numpy_helper.to_array(w) + 1.0
        w.CopyFrom(onnx.numpy_helper.from_array(array, w.name))
        return model

    monkeypatch.setattr(onnxprune.run, "apply_masks", wrong)
    result = invoke(path, "--data", data, "-o", tmp / "bad.onnx", "--report", tmp / "r.json", "--criterion", "dead")
    assert_one_line_error(result, 3, "changed by up to")
    assert not (tmp / "bad.onnx").exists()
    report = json.loads((tmp / "r.json").read_text())
    assert report["validation"]["passed"] is False and report["written"] is False
    assert not [p for p in tmp.iterdir() if p.name.startswith(".onnxprune")]


def test_internal_error_is_one_line_exit_1(case, monkeypatch):
    path, data, tmp = case

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(onnxprune.run, "apply_masks", boom)
    assert_one_line_error(invoke(path, "--data", data, "-o", tmp / "x.onnx"), 1, "RuntimeError: something broke")


def test_inspect_lists_groups_and_reasons():
    result = invoke("inspect", SAMPLES / "digits_mlp_gemm.onnx")
    assert result.exit_code == 0
    signature, lines = result.stdout.splitlines()[:2], result.stdout.splitlines()[3:]
    assert signature == ["inputs     input float32 [batch, 64]  (the .npz: one array per input, under its name)",
                         "outputs    logits float32 [batch, 10]"]
    assert "256 neurons  prunable" in lines[0] and "Gemm -> Relu -> [/2/Gemm]" in lines[0]
    assert "skipped   graph-output: tensor 'logits' is a graph output" in lines[3]  # the kind, as --json gives it
    assert lines[-1] == "3 of 4 group(s) prunable, 448 neurons"
    groups = json.loads(invoke("inspect", SAMPLES / "digits_mlp_matmul.onnx", "--json").stdout)
    assert [g["neurons"] for g in groups] == [256, 128, 64, 10]
    assert groups[0]["region_ops"] == ["Add", "Relu"]


def test_inspect_bad_model(tmp_path):
    (tmp_path / "x.onnx").write_text("nope")
    assert_one_line_error(invoke("inspect", tmp_path / "x.onnx"), 2, "not an ONNX model")


def test_installed_console_script_and_module(case):
    path, data, tmp = case
    script = shutil.which("onnxprune", path=str(Path(sys.executable).parent))
    assert script, "the onnxprune console script is not installed beside this Python"
    done = subprocess.run([script, str(path), "--data", str(data), "-o", str(tmp / "sub.onnx"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] is True
    bad_run = subprocess.run([sys.executable, "-m", "onnxprune", str(tmp / "missing.onnx"), "--data", str(data)],
                             capture_output=True, text=True, timeout=120)
    assert bad_run.returncode == 2
    assert bad_run.stderr.strip() == f"Error: model file not found: {tmp / 'missing.onnx'}"


def test_inspect_names_what_a_coupled_group_shares(tmp_path):
    from graphs import residual_add

    path = tmp_path / "res.onnx"
    onnx.save_model(residual_add(), str(path))
    lines = invoke("inspect", path).stdout.splitlines()[3:]
    assert "coupled: producers gemm1, gemm_mid; taps r, sum;" in lines[0]
    records = json.loads(invoke("inspect", path, "--json").stdout)
    groups = [r for r in records if r["kind"] != "blocks"]  # residual blocks are listed after the groups
    assert groups[0]["producers"] == ["gemm1", "gemm_mid"] and groups[-1]["skip"]["kind"] == "graph-output"
    assert [r["id"] for r in records if r["kind"] == "blocks"] == ["block:residual"]


def test_every_output_path_is_checked_before_any_work(case):
    """--report in a missing directory used to fail after the model was written."""
    path, data, tmp = case
    out = tmp / "o.onnx"
    assert_one_line_error(invoke(path, "--data", data, "-o", out, "--report", tmp / "nodir" / "r.json"), 2,
                          "output directory does not exist")
    assert not out.exists()
    (tmp / "r.json").write_text("keep me")
    assert_one_line_error(invoke(path, "--data", data, "-o", out, "--report", tmp / "r.json"), 2,
                          "output file exists: " + str(tmp / "r.json") + " (use --force")
    assert not out.exists() and (tmp / "r.json").read_text() == "keep me"
    assert_one_line_error(invoke(path, "--data", data, "-o", out, "--report", out), 2, "--report")
    assert invoke(path, "--data", data, "-o", out, "--report", tmp / "r.json", "--force", "-q").exit_code == 0
    assert json.loads((tmp / "r.json").read_text())["written"] is True


@pytest.mark.parametrize("command", ["stats", "sweep"])
def test_a_plot_is_an_output_like_the_others(case, command):
    path, data, tmp = case
    extra = ["--grid", "0,0.2"] if command == "sweep" else []
    plot = tmp / "p.png"
    assert_one_line_error(invoke(command, path, "--data", data, "--plot", tmp / "nodir" / "p.png", *extra), 2,
                          "output directory does not exist")
    plot.write_bytes(b"keep me")
    assert_one_line_error(invoke(command, path, "--data", data, "--plot", plot, *extra), 2, "use --force")
    assert plot.read_bytes() == b"keep me"
    result = invoke(command, path, "--data", data, "--plot", plot, "--force", *extra)
    assert result.exit_code == 0, result.stderr
    assert plot.read_bytes()[:4] == b"\x89PNG" and f"plot written to {plot}" in result.stderr
    assert result.stdout.strip()  # the table too


@pytest.mark.parametrize("command", ["stats", "sweep"])
def test_plot_without_matplotlib_only_warns(case, command, monkeypatch):
    import onnxprune.plots

    path, data, tmp = case
    monkeypatch.setattr(onnxprune.plots, "has_matplotlib", lambda: False)
    extra = ["--grid", "0,0.2"] if command == "sweep" else []
    result = invoke(command, path, "--data", data, "--plot", tmp / "p.png", *extra)
    assert result.exit_code == 0, result.stderr
    assert "warning: --plot needs matplotlib" in result.stderr and "onnxprune[plot]" in result.stderr
    assert result.stdout.strip() and not (tmp / "p.png").exists()


def test_help_is_grouped_with_the_common_options_first():
    text = invoke("prune", "--help").stdout
    headings = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == ["Input and output:", "Budget and metrics:", "Method:", "Runtime:", "Reporting:"]
    listed = text.split("Input and output:")[1]
    options = [line.split()[0].rstrip(",") for line in listed.splitlines() if line.startswith("  -")]
    assert options[:2] == ["-d", "-o"]
    budget = text.split("Budget and metrics:")[1].split()[0]
    assert budget == "--max-drop"
    assert "at most 5 % of samples" in text and "%%" not in text


def test_main_help_shows_the_data_layout_and_the_budget_and_cuts_nothing():
    text = invoke("--help").stdout
    assert "np.savez(" in text and "labels" in text and "--max-drop" in text
    assert "..." not in text.split("Commands:")[1] and "…" not in text


def test_the_table_tells_the_written_file_from_the_outputs_compared(case):
    path, data, tmp = case
    result = invoke(path, "--data", data, "-o", tmp / "o.onnx", "--fraction", "0.2")
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("output ")] == [f"output     {tmp / 'o.onnx'}"]
    assert any(line.startswith("difference linear2: max |diff|") for line in lines)


def test_sweep_table_says_which_check_failed_and_by_how_much():
    result = invoke("sweep", SAMPLES / "digits_mlp_gemm.onnx", "--data", SAMPLES / "digits_val.npz",
                    "--grid", "0,0.9")
    assert result.exit_code == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("remove 90.0%") and "accuracy: bound " in last and " pp > 0.5 pp" in last
    assert "- (" not in result.stdout


def test_graphsurgeon_is_neither_imported_nor_required():
    done = subprocess.run([sys.executable, "-c", "import sys, onnxprune.cli, onnxprune.api, onnxprune.unpack; "
                                                 "print(any('graphsurgeon' in m for m in sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
    from conftest import ROOT

    assert "graphsurgeon" not in (ROOT / "pyproject.toml").read_text()

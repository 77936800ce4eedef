"""Regression tests for issue 14: side figures never fail a run, impossible labels are refused,
onnxruntime's objections are bad input, --force with external data, nothing to prune, and
inputs that are not batched along axis 0."""

import io
import json
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune import InputError, prune, statistics
from onnxprune.bench import bench, macs_per_sample
from onnxprune.data import check_labels, load_data
from onnxprune.report import _percent
from conftest import make_mlp, random_inputs, run_model, save
from test_cli import assert_one_line_error, digest, invoke
from vad import make_vad, vad_data


def listing(directory):
    return sorted(p.name for p in directory.rglob("*"))


@pytest.fixture
def mlp(tmp_path):
    model = make_mlp([6, 16, 8, 10], dead={0: [0, 3, 5]})
    path = save(model, tmp_path / "m.onnx")
    x = random_inputs(model, n=40)["input"]
    return model, path, x, tmp_path


# 1. A side figure never kills the job ---------------------------------------------------------

def unknown_rank_mlp():
    """An MLP whose first Gemm reads a tensor of unknown rank: a Reshape to a shape whose length
    is only known at run time (a Slice of Shape(x) ending at min(Size(x), 2))."""
    model = make_mlp([6, 16, 8, 3], dead={0: [1]})
    g = model.graph
    g.node[0].input[0] = "xr"
    g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), name)
                          for v, name in ((0, "zero"), (1, "one"), (2, "two"))])
    for i, node in enumerate([helper.make_node("Shape", ["input"], ["shp"]),
                              helper.make_node("Size", ["input"], ["size"]),
                              helper.make_node("Min", ["size", "two"], ["end0"]),
                              helper.make_node("Reshape", ["end0", "one"], ["end"]),
                              helper.make_node("Slice", ["shp", "zero", "end"], ["target"]),
                              helper.make_node("Reshape", ["input", "target"], ["xr"])]):
        g.node.insert(i, node)
    return model


def test_macs_of_a_tensor_of_unknown_rank_are_unknown_not_an_index_error(tmp_path, monkeypatch):
    model = unknown_rank_mlp()
    x = np.random.default_rng(0).standard_normal((30, 6)).astype(np.float32)
    real = onnx.shape_inference.infer_shapes

    def rank_unknown(m, **kwargs):
        # What shape inference gives for such a model on some onnx versions: the Gemm's input
        # listed with a type but no dimensions (the MAC count used to read a[-1] of it).
        inferred = real(m, **kwargs)
        for v in inferred.graph.value_info:
            if v.name == "xr":
                v.type.tensor_type.ClearField("shape")
                v.type.tensor_type.shape.SetInParent()
        return inferred

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", rank_unknown)
    assert macs_per_sample(model, {"input": x[:1]}) is None
    monkeypatch.undo()
    path = save(model, tmp_path / "c.onnx")
    np.savez(tmp_path / "d.npz", input=x)
    result = invoke(path, "--data", tmp_path / "d.npz", "--criterion", "dead", "-o", tmp_path / "o.onnx", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["written"] is True


def test_failed_timing_is_reported_as_unknown(mlp, monkeypatch):
    model, path, x, tmp = mlp
    np.savez(tmp / "d.npz", input=x)

    def broken(*args, **kwargs):
        raise RuntimeError("the timer broke")

    monkeypatch.setattr("onnxprune.cli.bench", broken)
    result = invoke(path, "--data", tmp / "d.npz", "--criterion", "dead", "-o", tmp / "o.onnx", "--bench", "--json")
    assert result.exit_code == 0, result.stderr
    assert "timing failed, reported as unknown: the timer broke" in result.stderr
    assert json.loads(result.stdout)["bench"] is None
    onnx.checker.check_model(str(tmp / "o.onnx"), full_check=True)


def test_unknown_file_size_is_a_question_mark():
    from onnxprune.modelio import model_file_size
    from onnxprune.report import Report

    assert model_file_size("/nonexistent/model.onnx") is None
    report = Report("m", None, "d", 1, {"mode": "dead"}, file_size_before=None, file_size_after=10)
    assert "file size  ? -> 10 B (?)" in report.format_table()
    assert report.to_dict()["file_size_reduction"] is None


# 2. Labels that cannot be right ---------------------------------------------------------------

@pytest.mark.parametrize("labels,message", [
    (np.full(40, 99), "label 99 cannot be right: the model's output has 10 classes (labels 0 to 9)"),
    (np.r_[np.zeros(39, int), -2], "label -2 cannot be right"),  # -1 marks a sample without a label
    (np.eye(7)[np.arange(40) % 7], "one-hot labels have 7 columns but the model's output has 10 classes"),
])
def test_impossible_labels_are_refused_naming_the_class_count(mlp, labels, message):
    model, path, x, tmp = mlp
    np.savez(tmp / "d.npz", input=x, labels=labels)
    before = listing(tmp)
    result = invoke(path, "--data", tmp / "d.npz", "-o", tmp / "o.onnx")
    assert_one_line_error(result, 2, message)
    assert str(tmp / "d.npz") in result.stderr
    assert listing(tmp) == before
    with pytest.raises(InputError) as e:
        load_data(tmp / "d.npz", model)
    assert e.value.path == str(tmp / "d.npz") and e.value.field == "labels"


def test_labels_are_checked_against_the_class_count_seen_at_run_time(tmp_path):
    # The class dimension is symbolic: only the outputs tell that there are 10 classes.
    model = make_mlp([6, 16, 8, 10], dead={0: [0]})
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    x = random_inputs(model, n=40)["input"]
    assert load_data({"input": x, "labels": np.full(40, 12)}, model).labels[0] == 12  # unknown yet
    with pytest.raises(InputError, match="label 12 cannot be right: the model's output has 10 classes"):
        prune(model, {"input": x, "labels": np.full(40, 12)})


def test_check_labels_is_reusable():
    check_labels(np.array([0, 9]), 10, "x.npz['labels']")
    check_labels(np.array([0, 99]), None, "x.npz['labels']")  # class count unknown: only negatives refused
    with pytest.raises(InputError, match=r"^x.npz\['labels'\]: label 10 cannot be right") as e:
        check_labels(np.array([0, 10]), 10, "x.npz['labels']", path="x.npz", field="labels")
    assert (e.value.path, e.value.field) == ("x.npz", "labels")


# 3. Errors that were reported as bugs ---------------------------------------------------------

def test_opset_newer_than_supported_is_bad_input(mlp):
    model, path, x, tmp = mlp
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 2
    save(model, tmp / "new.onnx")
    np.savez(tmp / "d.npz", input=x)
    result = invoke(tmp / "new.onnx", "--data", tmp / "d.npz", "--criterion", "dead")
    assert_one_line_error(result, 2, f"opset {onnx.defs.onnx_opset_version() + 2} is newer than")
    assert "new.onnx" in result.stderr


def test_duplicate_node_names_are_made_unique_in_the_output(mlp):
    model, path, x, tmp = mlp
    expected = run_model(model, {"input": x})[0]
    for node in model.graph.node:
        node.name = "dense"
    save(model, tmp / "dup.onnx")
    before = digest(tmp / "dup.onnx")
    np.savez(tmp / "d.npz", input=x)
    result = invoke(tmp / "dup.onnx", "--data", tmp / "d.npz", "--criterion", "dead", "-o", tmp / "o.onnx", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # -q: nothing on stderr but errors
    out = onnx.load(str(tmp / "o.onnx"))
    names = [n.name for n in out.graph.node]
    assert len(set(names)) == len(names) and names[0] == "dense"
    onnx.checker.check_model(str(tmp / "o.onnx"), full_check=True)
    np.testing.assert_allclose(run_model(tmp / "o.onnx", {"input": x})[0], expected, rtol=1e-4, atol=1e-5)
    assert digest(tmp / "dup.onnx") == before


def test_any_onnxruntime_refusal_of_the_input_model_is_bad_input(mlp):
    model, path, x, tmp = mlp
    # Valid ONNX (an operator of an unregistered domain), which onnxruntime cannot run.
    model.opset_import.append(helper.make_opsetid("org.example", 1))
    node = model.graph.node[-1]
    model.graph.node.append(helper.make_node("Mystery", [node.output[0]], ["extra"], domain="org.example"))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
    save(model, tmp / "custom.onnx")
    np.savez(tmp / "d.npz", input=x)
    result = invoke(tmp / "custom.onnx", "--data", tmp / "d.npz", "--criterion", "dead", "-o", tmp / "o.onnx")
    assert_one_line_error(result, 2, "onnxruntime")
    assert "custom.onnx" in result.stderr and "internal error" not in result.stderr
    assert not (tmp / "o.onnx").exists()


def test_npz_header_claiming_a_huge_array_is_refused_before_loading(mlp):
    model, path, x, tmp = mlp
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})
    member.write(b"\0" * 96)
    with zipfile.ZipFile(tmp / "huge.npz", "w") as z:
        z.writestr("input.npy", member.getvalue())
    result = invoke(path, "--data", tmp / "huge.npz", "--criterion", "dead")
    assert_one_line_error(result, 2, "claims shape (1000000, 1000000) of float32 (4.0 TB) but holds only 96 B")
    with pytest.raises(InputError) as e:
        load_data(tmp / "huge.npz", model)
    assert e.value.path == str(tmp / "huge.npz") and e.value.field == "input"


# 4. --force with external data ----------------------------------------------------------------

def test_force_replaces_output_and_its_external_data(tmp_path):
    model = make_mlp([6, 300, 8, 3], dead={0: [0, 3, 5]})
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    np.savez(tmp_path / "d.npz", input=random_inputs(model, n=30)["input"])
    args = [tmp_path / "ext.onnx", "--data", tmp_path / "d.npz", "--criterion", "dead", "-o", tmp_path / "o.onnx"]
    assert invoke(*args, "-q").exit_code == 0
    assert (tmp_path / "o.onnx.data").exists()
    first = digest(tmp_path / "o.onnx.data")
    result = invoke(*args, "--force", "-q")  # the cwd is not the output directory
    assert result.exit_code == 0, result.stderr
    assert digest(tmp_path / "o.onnx.data") == first
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    # Only the data file is left from an earlier run: refused before any work, without --force.
    (tmp_path / "o.onnx").unlink()
    result = invoke(*args)
    assert_one_line_error(result, 2, "output data file exists")
    assert "o.onnx.data" in result.stderr and "measuring" not in result.stderr
    assert digest(tmp_path / "o.onnx.data") == first


def test_force_with_external_data_from_the_output_directory(tmp_path, monkeypatch):
    # onnx checks a data file's existence relative to the current directory: run from there.
    model = make_mlp([6, 300, 8, 3], dead={0: [0]})
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    np.savez(tmp_path / "d.npz", input=random_inputs(model, n=30)["input"])
    monkeypatch.chdir(tmp_path)
    args = ["ext.onnx", "--data", "d.npz", "--criterion", "dead", "-o", "o.onnx", "-q"]
    assert invoke(*args).exit_code == 0
    result = invoke(*args, "--force")
    assert result.exit_code == 0, result.stderr
    assert listing(tmp_path) == ["d.npz", "ext.onnx", "ext.onnx.data", "o.onnx", "o.onnx.data"]


# 5. Nothing to prune --------------------------------------------------------------------------

def test_nothing_to_prune_says_so_and_why(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    save(model, tmp_path / "t.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((5, 4), np.float32))
    result = invoke(tmp_path / "t.onnx", "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0, result.stderr
    assert "nothing to prune: the model has no Gemm/MatMul/Conv layer" in result.stdout
    assert "--" not in result.stdout.split("file size")[1].splitlines()[0]
    assert "(+" in result.stdout.split("file size")[1].splitlines()[0]  # the output grew: metadata


def test_nothing_removed_says_why(mlp):
    model, path, x, tmp = mlp
    np.savez(tmp / "d.npz", input=x)
    alive = make_mlp([6, 16, 8, 10])
    save(alive, tmp / "alive.onnx")
    result = invoke(tmp / "alive.onnx", "--data", tmp / "d.npz", "--criterion", "dead", "-o", tmp / "o.onnx", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["nothing_to_prune"] == "no neuron was exactly zero on every sample"


@pytest.mark.parametrize("before,after,text", [
    (100, 77, "-23.0%"), (94, 474, "+404%"), (100, 104, "+4.0%"), (0, 0, "0%"), (5, 5, "0%"),
    (None, 4, "?"), (0, 10, "?"),
])
def test_percent_is_signed(before, after, text):
    assert _percent(before, after) == text


# 6. Inputs not batched along axis 0 ------------------------------------------------------------

def vad_stats(model, data, **layout):
    return statistics(model, data, batch_size=7, **layout)


def test_vad_model_in_every_data_format_gives_the_same_statistics(tmp_path):
    model = make_vad()
    arrays = vad_data(60)
    np.savez(tmp_path / "vad.npz", **arrays)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 25), (25, 26), (26, 60)]):
        np.savez(shards / f"p{i}.npz", input=arrays["input"][a:b], state=arrays["state"][:, a:b], sr=arrays["sr"])
    reference = vad_stats(model, arrays)
    assert sorted(reference) == ["gemm1", "gemm3"]
    assert reference["gemm1"].count == 60 and int(reference["gemm1"].dead.sum()) == 3
    for source in (tmp_path / "vad.npz", shards):
        got = vad_stats(model, source)
        for name, s in reference.items():
            assert got[name].count == s.count
            np.testing.assert_allclose(got[name].mean, s.mean, rtol=1e-10)
            np.testing.assert_allclose(got[name].m2, s.m2, rtol=1e-8)
    # Statistics equal those of running each sample on its own.
    one = {k: v for k, v in arrays.items()}
    per_sample = [run_model(model, {"input": one["input"][i:i + 1], "state": one["state"][:, i:i + 1],
                                    "sr": one["sr"]})[1] for i in range(3)]
    batch = run_model(model, {k: (v[:3] if k == "input" else v[:, :3] if k == "state" else v)
                              for k, v in arrays.items()})[1]
    np.testing.assert_allclose(np.concatenate(per_sample, axis=1), batch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", [["--criterion", "dead"], [], ["--fraction", "0.3"]])
def test_vad_model_prunes_from_the_command_line(tmp_path, mode):
    save(make_vad(), tmp_path / "vad.onnx")
    arrays = vad_data(60)
    np.savez(tmp_path / "vad.npz", **arrays)
    result = invoke(tmp_path / "vad.onnx", "--data", tmp_path / "vad.npz", "-o", tmp_path / "o.onnx", *mode, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written"] and report["validation"]["passed"]
    assert report["macs_before"] == 45088
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    outputs = run_model(tmp_path / "o.onnx", arrays)
    assert outputs[0].shape == (60, 1) and outputs[1].shape == (2, 60, 128)
    if mode[:2] == ["--criterion", "dead"]:
        for got, want in zip(outputs, run_model(make_vad(), arrays)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_batch_axis_option_when_the_model_does_not_name_it(tmp_path):
    save(make_vad(state_batch="B"), tmp_path / "vad.onnx")  # state's batch dim named apart from input's
    np.savez(tmp_path / "vad.npz", **vad_data(30))
    args = [tmp_path / "vad.onnx", "--data", tmp_path / "vad.npz", "--criterion", "dead", "-o", tmp_path / "o.onnx"]
    assert_one_line_error(invoke(*args), 2, "--batch-axis NAME=AXIS")
    assert_one_line_error(invoke(*args, "--batch-axis", "state"), 2, "is not INPUT=AXIS")
    assert_one_line_error(invoke(*args, "--batch-axis", "nope=1"), 2, "'nope' is not a model input")
    assert_one_line_error(invoke(*args, "--batch-axis", "state=3"), 2, "batch axis 3 of input 'state' is out of range")
    assert invoke(*args, "--batch-axis", "state=1", "-q").exit_code == 0


def test_constant_input_with_a_shape(tmp_path):
    # sr declared [1]: not a scalar, so nothing says it is given once; --constant-input does.
    model = make_vad(sr_shape=(1,))
    arrays = vad_data(30, sr_shape=(1,))
    layout = {"constant_inputs": ["sr"]}
    with pytest.raises(InputError, match="different numbers of samples"):
        load_data(arrays, model)
    data = load_data(arrays, model, **layout)
    assert data.batch_axes == {"input": 0, "state": 1, "sr": None}
    batches = list(data.batches(8))
    assert [b["state"].shape for b in batches] == [(2, 8, 128)] * 3 + [(2, 6, 128)]
    assert all(b["sr"].shape == (1,) and b["sr"][0] == 16000 for b in batches)
    assert list(batches[0]) == ["input", "state", "sr"]
    held = data.subset(np.arange(0, 30, 2))
    assert held.n_samples == 15 and next(held.batches(4))["state"].shape == (2, 4, 128)
    result = prune(model, arrays, criterion="dead", **layout)
    assert result.validation and result.report.groups[0].neurons_after == 61
    rows = bench([model], data=arrays, batch_sizes=[4], min_seconds=0, min_runs=2, **layout)
    assert rows[0].batch_size == 4 and rows[0].macs_per_sample == 45088


def test_constant_input_of_the_wrong_shape_names_it(tmp_path):
    model = make_vad()
    arrays = vad_data(30)
    arrays["sr"] = np.array([16000, 8000], np.int64)
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(InputError, match=r"v.npz\['sr'\] has shape \(2,\) but constant input 'sr'") as e:
        load_data(tmp_path / "v.npz", model)
    assert e.value.field == "sr" and e.value.path == str(tmp_path / "v.npz")


# Found by benchmarks/fuzz.py ---------------------------------------------------------------------

def test_node_name_that_is_not_utf8_is_bad_input(mlp):
    model, path, x, tmp = mlp
    blob = path.read_bytes()
    # A flipped byte inside a node name: still valid protobuf, not valid text.
    at = blob.index(b"gemm1") + 1
    (tmp / "bad.onnx").write_bytes(blob[:at] + b"\xcc" + blob[at + 1:])
    np.savez(tmp / "d.npz", input=x)
    result = invoke(tmp / "bad.onnx", "--data", tmp / "d.npz", "--criterion", "dead", "-o", tmp / "o.onnx")
    assert_one_line_error(result, 2, "field model.graph.node.name holds text that is not valid UTF-8")
    assert "bad.onnx" in result.stderr


def test_model_without_outputs_is_bad_input(mlp):
    model, path, x, tmp = mlp
    del model.graph.output[:]
    save(model, tmp / "none.onnx")
    np.savez(tmp / "d.npz", input=x)
    assert_one_line_error(invoke(tmp / "none.onnx", "--data", tmp / "d.npz"), 2, "the model has no graph outputs")


def test_an_input_with_the_batch_dimension_cannot_be_constant():
    with pytest.raises(InputError, match="input 'state' has the batch dimension 'N' \\(axis 1\\), so it cannot be "
                                         "given once") as e:
        load_data(vad_data(20), make_vad(), constant_inputs=["state"])
    assert e.value.field == "state"


def test_damaged_compressed_npz_is_bad_input(mlp):
    model, path, x, tmp = mlp
    np.savez_compressed(tmp / "c.npz", input=np.random.default_rng(0).standard_normal((400, 6)).astype(np.float32))
    blob = bytearray((tmp / "c.npz").read_bytes())
    middle = len(blob) // 2
    blob[middle:middle + 64] = b"\xff" * 64  # inside the deflate stream: zlib.error, not a zip error
    (tmp / "c.npz").write_bytes(bytes(blob))
    result = invoke(path, "--data", tmp / "c.npz", "--criterion", "dead", "-o", tmp / "o.onnx")
    assert_one_line_error(result, 2, "c.npz")
    assert "not a readable .npz file" in result.stderr or "is unreadable" in result.stderr


class TorchVad(torch.nn.Module):
    """A small voice-activity detector as PyTorch writes them: frames [N, 64], an LSTM-like state
    [2, N, 16] carried between calls (samples on axis 1) and the sample rate as a scalar."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
        self.head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        with torch.no_grad():
            self.encoder[0].bias[[2, 5, 11]] = -1e4  # dead after ReLU

    def forward(self, frames, state, sr):
        h = torch.tanh(self.encoder(frames) + state.sum(0))
        p = torch.sigmoid(self.head(h)) * (sr.float() / 16000.0)
        return p, torch.stack([h, state[1]])


@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_exported_vad_model_is_pruned(tmp_path, dynamo):
    model = TorchVad().eval()
    n = 3
    args = (torch.randn(n, 64), torch.randn(2, n, 16), torch.tensor(16000))
    path = tmp_path / "vad.onnx"
    names = dict(input_names=["input", "state", "sr"], output_names=["output", "stateN"])
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, args, str(path), dynamo=True, dynamic_shapes=({0: batch}, {1: batch}, None), **names)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, dynamic_axes={
            "input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"}, "stateN": {1: "batch"}}, **names)
    rng = np.random.default_rng(0)
    arrays = {"input": rng.standard_normal((40, 64)).astype(np.float32),
              "state": rng.standard_normal((2, 40, 16)).astype(np.float32), "sr": np.array(16000, np.int64)}
    np.savez(tmp_path / "vad.npz", **arrays)
    for mode in (["--criterion", "dead"], []):
        result = invoke(path, "--data", tmp_path / "vad.npz", "-o", tmp_path / "o.onnx", "--force", "--json", *mode)
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["validation"]["passed"] and report["groups"][0]["neurons_after"] <= 29
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    outputs = run_model(tmp_path / "o.onnx", arrays)
    assert outputs[0].shape == (40, 1) and outputs[1].shape == (2, 40, 16)


def test_input_model_failing_the_full_check_is_bad_input_not_failed_validation(mlp):
    model, path, x, tmp = mlp
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7  # declared 7 classes, computes 10
    save(model, tmp / "lying.onnx")
    np.savez(tmp / "d.npz", input=x)
    result = invoke(tmp / "lying.onnx", "--data", tmp / "d.npz", "--criterion", "dead", "-o", tmp / "o.onnx",
                    "--report", tmp / "r.json")
    assert_one_line_error(result, 2, "the input model itself fails onnx's full check")
    assert "lying.onnx" in result.stderr
    assert not (tmp / "o.onnx").exists()


def test_model_that_cannot_run_on_the_data_is_bad_input_even_with_nothing_prunable(mlp):
    model, path, x, tmp = mlp
    # Gemm(W1, act0): the weight as A. onnxruntime loads it but cannot run it on 40 samples, and
    # no group is prunable, so validation was the first run of the original (it blamed the pruning).
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][1]
    gemm.input[0], gemm.input[1] = gemm.input[1], gemm.input[0]
    save(model, tmp / "swapped.onnx")
    np.savez(tmp / "d.npz", input=x)
    result = invoke(tmp / "swapped.onnx", "--data", tmp / "d.npz", "--fraction", "0.3", "-o", tmp / "o.onnx")
    assert_one_line_error(result, 2, "onnxruntime cannot run the input model on the data")
    assert "d.npz" in result.stderr and not (tmp / "o.onnx").exists()

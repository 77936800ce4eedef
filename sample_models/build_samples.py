"""Rebuild the bundled sample models and their data (needs the `test` extra: torch, scikit-learn).

    python sample_models/build_samples.py            # rebuild the files in sample_models/
    python sample_models/build_samples.py --check    # rebuild into a scratch directory and compare

Trains a 64-256-128-64-10 ReLU MLP on scikit-learn's digits (8x8 images shipped inside
scikit-learn; no download) and exports it two ways, as real exporters do:

- digits_mlp_gemm.onnx:   torch.onnx.export(dynamo=False) of nn.Linear layers: Gemm with transB=1;
- digits_mlp_matmul.onnx: torch.onnx.export(dynamo=True) of the same weights written as x @ W + b:
                          MatMul + Add, weights stored [in, out].

and a small CNN on the same images as 8x8 pictures: Conv-BN-ReLU blocks, max pooling,
Flatten -> Linear head (digits_cnn.onnx, torch.onnx.export(dynamo=False)).

The 1,797 digits are shuffled once (seed 0) and cut three ways, none shared:
- 897 train the models;
- 600 are the validation data the README's commands prune with: digits_val.npz (`input` float32
  [n, 64], `labels` int64 [n]) and digits_val_images.npz (the same images as `image` [n, 1, 8, 8]);
- 300 are test data no command uses, for measuring a pruned model on digits it never saw:
  digits_test.npz and digits_test_images.npz, laid out the same way.

Reproducible bit for bit on the versions in BUILT_WITH below (pyproject.toml pins torch): torch runs
on one thread with its deterministic algorithms (several threads sum in a schedule-dependent order,
and 150 epochs turn that rounding into different weights), every random draw is seeded, the dynamo
export's per-node debugging metadata (stack traces with this script's absolute path) is dropped,
and the .npz files are written with fixed zip timestamps. `--check` rebuilds and compares every
file's bytes (and, where they differ, the weights). Other versions of torch, or a CPU whose kernels sum in another order, can train slightly different
weights; `--check` then says which files differ and by how much.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HIDDEN = (256, 128, 64)
SEED = 0
TRAIN, VALIDATION, TEST = 897, 600, 300  # of scikit-learn's 1,797 digits
BUILT_WITH = {"torch": "2.13.0", "numpy": "2.4.6", "scikit-learn": "1.9.1", "onnx": "1.23.2", "onnxscript": "0.7.2"}
FILES = ("digits_mlp_gemm.onnx", "digits_mlp_matmul.onnx", "digits_cnn.onnx", "digits_val.npz",
         "digits_val_images.npz", "digits_test.npz", "digits_test_images.npz")


def digits_order():
    """scikit-learn's digits as float32 [1797, 64] in [0, 1] and int64 labels, in the seeded shuffle."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    return x[order], y[order]


def digits_splits():
    """{"train", "test", "val"}: (x, y) each; 897 training, 300 test and the 600 validation digits."""
    x, y = digits_order()
    cuts = {"train": slice(0, TRAIN), "test": slice(TRAIN, TRAIN + TEST), "val": slice(TRAIN + TEST, None)}
    return {name: (x[s], y[s]) for name, s in cuts.items()}


def digits_split():
    """(x_rest, y_rest, x_val, y_val): the 1,197 digits outside digits_val.npz (training and test
    images, which benchmarks may train or calibrate on) and the 600 validation digits."""
    x, y = digits_order()
    rest = TRAIN + TEST
    return x[:rest], y[:rest], x[rest:], y[rest:]


@contextmanager
def deterministic_torch():
    """One thread and deterministic kernels while training: the same weights on every run of the same
    versions. The caller's settings come back afterwards (tests train in their own process)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    try:
        yield torch
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train_mlp(x, y, epochs=150):
    with deterministic_torch() as torch:
        return _train_mlp(torch, x, y, epochs)


def _train_mlp(torch, x, y, epochs):
    layers, width = [], x.shape[1]
    for h in HIDDEN:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


class DigitsCNN:
    """Built lazily so that importing this script needs no torch."""

    @staticmethod
    def make():
        import torch

        def block(c_in, c_out):
            return [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]

        return torch.nn.Sequential(*block(1, 16), *block(16, 32), torch.nn.MaxPool2d(2), *block(32, 32),
                                   torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(),
                                   torch.nn.Linear(64, 10))


def train_cnn(x, y, epochs=40):
    with deterministic_torch() as torch:
        return _train_cnn(torch, x, y, epochs)


def _train_cnn(torch, x, y, epochs):
    model = DigitsCNN.make()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x.reshape(-1, 1, 8, 8)), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def matmul_form(mlp):
    """The same function as `mlp`, written as x @ W + b with W stored [in, out]."""
    import torch

    class MatMulMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
            self.weights = torch.nn.ParameterList([torch.nn.Parameter(m.weight.detach().T.contiguous()) for m in linears])
            self.biases = torch.nn.ParameterList([torch.nn.Parameter(m.bias.detach().clone()) for m in linears])

        def forward(self, x):
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                x = torch.matmul(x, w) + b
                if i < len(self.weights) - 1:
                    x = torch.relu(x)
            return x

    return MatMulMLP().eval()


def strip_provenance(path: Path) -> None:
    """Drop the dynamo exporter's per-node debugging metadata: its stack traces hold this script's
    absolute path and line numbers, and its class names how the script was started, so the bytes would
    depend on where and how it ran."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save_model(model, str(path))


def write_npz(path: Path, **arrays) -> None:
    """np.savez_compressed with fixed zip timestamps, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def build(out: Path) -> dict[str, float]:
    """Train and export everything into `out`; the accuracies, for the log."""
    import torch

    splits = digits_splits()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    mlp = train_mlp(x_train, y_train)
    example = (torch.from_numpy(x_val[:2]),)
    torch.onnx.export(mlp, example, str(out / "digits_mlp_gemm.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    torch.onnx.export(matmul_form(mlp), example, str(out / "digits_mlp_matmul.onnx"), dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    strip_provenance(out / "digits_mlp_matmul.onnx")
    cnn = train_cnn(x_train, y_train)
    images = x_val.reshape(-1, 1, 8, 8)
    torch.onnx.export(cnn, (torch.from_numpy(images[:2]),), str(out / "digits_cnn.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    write_npz(out / "digits_val.npz", input=x_val, labels=y_val)
    write_npz(out / "digits_val_images.npz", image=images, labels=y_val)
    write_npz(out / "digits_test.npz", input=x_test, labels=y_test)
    write_npz(out / "digits_test_images.npz", image=x_test.reshape(-1, 1, 8, 8), labels=y_test)
    accuracy = {}
    with torch.no_grad():
        for name, net, shape in (("MLP", mlp, (-1, 64)), ("CNN", cnn, (-1, 1, 8, 8))):
            for split, (x, y) in (("validation", (x_val, y_val)), ("test", (x_test, y_test))):
                predicted = net(torch.from_numpy(x.reshape(shape))).argmax(1).numpy()
                accuracy[f"{name} {split}"] = float((predicted == y).mean())
    return accuracy


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in BUILT_WITH:
        try:
            found[name] = version(name).split("+")[0]
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def weight_difference(a: Path, b: Path) -> str:
    """How two ONNX files' weights differ (the largest absolute difference), or how two .npz differ."""
    if a.suffix == ".npz":
        with np.load(a) as x, np.load(b) as y:
            same = x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
        return "same arrays, other bytes" if same else "other arrays"
    import onnx
    from onnx import numpy_helper

    wa = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(a)).graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(b)).graph.initializer}
    if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape for k in wa):
        return "other weight names or shapes"
    worst = max((float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa), default=0.0)
    return "same weights, other bytes (graph or metadata)" if worst == 0 else f"weights differ by up to {worst:.3g}"


def check() -> int:
    """Rebuild into a scratch directory and compare with the bundled files; 0 when every byte matches."""
    with tempfile.TemporaryDirectory() as scratch:
        build(Path(scratch))
        differ = 0
        for name in FILES:
            ours, rebuilt = HERE / name, Path(scratch) / name
            if not ours.exists():
                print(f"{name}: not bundled", file=sys.stderr)
                differ += 1
            elif ours.read_bytes() == rebuilt.read_bytes():
                print(f"{name}: identical", file=sys.stderr)
            else:
                print(f"{name}: DIFFERS: {weight_difference(ours, rebuilt)}", file=sys.stderr)
                differ += 1
    return 1 if differ else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a scratch directory and compare with the bundled files")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the files [default: beside this script]")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    found = versions()
    other = {k: (v, BUILT_WITH[k]) for k, v in found.items() if v != BUILT_WITH[k]}
    if other:
        print("warning: not the versions the bundled files were built with, so they may differ slightly: "
              + ", ".join(f"{k} {v} (built with {p})" for k, (v, p) in other.items()), file=sys.stderr)
    if args.check:
        return check()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, value in build(args.out).items():
        print(f"digits {name} accuracy {value:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

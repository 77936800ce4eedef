"""Rebuild the bundled sample models and their validation data (needs the `test` extra: torch, scikit-learn).

    python sample_models/build_samples.py

Trains a 64-256-128-64-10 ReLU MLP on scikit-learn's digits (8x8 images shipped
inside scikit-learn; no download) and exports it two ways, as real exporters do:

- digits_mlp_gemm.onnx:   torch.onnx.export(dynamo=False) of nn.Linear layers: Gemm with transB=1;
- digits_mlp_matmul.onnx: torch.onnx.export(dynamo=True) of the same weights written as x @ W + b:
                          MatMul + Add, weights stored [in, out].

and a small CNN on the same images as 8x8 pictures: Conv-BN-ReLU blocks, max pooling,
Flatten -> Linear head (digits_cnn.onnx, torch.onnx.export(dynamo=False)).

digits_val.npz holds the held-out samples: `input` (float32 [n, 64]) and `labels` (int64 [n]);
digits_val_images.npz the same images as `image` (float32 [n, 1, 8, 8]) with `labels`.
Everything is seeded, so a rebuild gives the same numbers on the same versions.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HIDDEN = (256, 128, 64)
SEED = 0


def digits_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    train, val = order[:1197], order[1197:]
    return x[train], y[train], x[val], y[val]


def train_mlp(x, y, epochs=150):
    import torch

    torch.manual_seed(SEED)
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
    import torch

    torch.manual_seed(SEED)
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


def main() -> int:
    import torch

    warnings.filterwarnings("ignore")
    x_train, y_train, x_val, y_val = digits_split()
    mlp = train_mlp(x_train, y_train)
    example = (torch.from_numpy(x_val[:2]),)
    torch.onnx.export(mlp, example, str(HERE / "digits_mlp_gemm.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    torch.onnx.export(matmul_form(mlp), example, str(HERE / "digits_mlp_matmul.onnx"), dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    np.savez(HERE / "digits_val.npz", input=x_val, labels=y_val)
    cnn = train_cnn(x_train, y_train)
    images = x_val.reshape(-1, 1, 8, 8)
    torch.onnx.export(cnn, (torch.from_numpy(images[:2]),), str(HERE / "digits_cnn.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    np.savez(HERE / "digits_val_images.npz", image=images, labels=y_val)
    with torch.no_grad():
        cnn_accuracy = (cnn(torch.from_numpy(images)).argmax(1).numpy() == y_val).mean()
    print(f"digits CNN: validation accuracy {cnn_accuracy:.4f}", file=sys.stderr)
    with torch.no_grad():
        accuracy = (mlp(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean()
    print(f"digits MLP {HIDDEN}: validation accuracy {accuracy:.4f} on {len(y_val)} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

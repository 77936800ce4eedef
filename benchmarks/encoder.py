"""A BERT-sized sentence encoder (about 29 M parameters) and token data for it, cached on disk.

    python benchmarks/encoder.py [--samples 300,3000]

The weights are random (memory and time do not depend on them); the architecture is what a
user brings: token and position embeddings, post-LayerNorm blocks of separate Q/K/V
projections with a padding mask, a GELU feed-forward block, and the last hidden states
[N, seq, hidden] as the output (so the default metric is cosine similarity). Exported with
PyTorch's TorchScript exporter, stored with external data as real encoders of this size
often are. Everything lands in benchmarks/.cache/ (gitignored) and is reused when present.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
CONFIG = dict(vocab=8192, hidden=512, heads=8, ffn=2048, layers=8, seq=64)


def _modules():
    # torch is a test/benchmark dependency only: imported when a model is built, not at import time.
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, hidden, heads, ffn):
            super().__init__()
            self.heads, self.width = heads, hidden // heads
            self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.attention_out = nn.Linear(hidden, hidden)
            self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.intermediate = nn.Linear(hidden, ffn)
            self.output = nn.Linear(ffn, hidden)
            self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

        def heads_first(self, x):
            n, s, _ = x.shape
            return x.view(n, s, self.heads, self.width).permute(0, 2, 1, 3)

        def forward(self, x, additive_mask):
            n, s, h = x.shape
            q, k, v = (self.heads_first(f(x)) for f in (self.query, self.key, self.value))
            weights = torch.softmax(q @ k.transpose(2, 3) * (1.0 / math.sqrt(self.width)) + additive_mask, dim=-1)
            context = (weights @ v).permute(0, 2, 1, 3).reshape(n, s, h)
            x = self.attention_norm(x + self.attention_out(context))
            return self.output_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))

    class SentenceEncoder(nn.Module):
        def __init__(self, vocab, hidden, heads, ffn, layers, seq):
            super().__init__()
            self.tokens = nn.Embedding(vocab, hidden)
            self.positions = nn.Embedding(seq, hidden)
            self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.blocks = nn.ModuleList(Block(hidden, heads, ffn) for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.embedding_norm(self.tokens(input_ids) + self.positions(positions)[None])
            # padding keys get a large negative score: softmax gives them (almost) no weight
            additive = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
            for block in self.blocks:
                x = block(x, additive)
            return x

    return torch, SentenceEncoder


def build_model(path: Path, *, seed: int = 0, **config) -> Path:
    """Export the encoder (random weights from `seed`) to `path` with its weights in `path`.data."""
    import warnings

    import onnx

    cfg = {**CONFIG, **config}
    torch, SentenceEncoder = _modules()
    torch.manual_seed(seed)
    net = SentenceEncoder(**cfg).eval()
    ids, mask = tokens(2, seed=seed, vocab=cfg["vocab"], seq=cfg["seq"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".export.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(ids), torch.from_numpy(mask)), str(tmp), dynamo=False,
                          opset_version=17, input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "hidden": {0: "batch", 1: "seq"}})
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def tokens(n: int, *, seed: int = 0, vocab: int = CONFIG["vocab"], seq: int = CONFIG["seq"]):
    """Token ids and attention masks of `n` sentences of 8..seq tokens (padded with 0 at the end)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, seq + 1, n)
    ids = rng.integers(1, vocab, (n, seq), dtype=np.int64)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def encoder(samples=(300,), seed: int = 0) -> tuple[Path, dict[int, Path]]:
    """The cached model and one token .npz per sample count (built on first use)."""
    model = CACHE / "encoder.onnx"
    if not model.exists() or not (CACHE / "encoder.onnx.data").exists():
        build_model(model, seed=seed)
    data = {}
    for n in samples:
        path = CACHE / f"tokens_{n}.npz"
        if not path.exists():
            ids, mask = tokens(n, seed=seed + 1)
            np.savez(path, input_ids=ids, attention_mask=mask)
        data[n] = path
    return model, data


def parameters(model: Path) -> int:
    import onnx

    m = onnx.load(str(model))
    return sum(int(np.prod(t.dims)) for t in m.graph.initializer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="300,3000")
    args = parser.parse_args()
    model, data = encoder([int(s) for s in args.samples.split(",")])
    print(f"{model} ({parameters(model) / 1e6:.1f} M parameters)")
    for n, path in data.items():
        print(f"{path} ({n} sentences of up to {CONFIG['seq']} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

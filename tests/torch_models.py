"""Small PyTorch models for the tests and benchmarks, exported with the real exporters."""

from __future__ import annotations

import math

import torch


class EncoderLayer(torch.nn.Module):
    """A BERT-style block written out: attention with a padding mask, residuals, LayerNorm, GELU FFN."""

    def __init__(self, hidden: int, heads: int, ffn: int, approximate: str = "none"):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (torch.nn.Linear(hidden, hidden) for _ in range(3))
        self.out = torch.nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
        self.ffn_in, self.ffn_out = torch.nn.Linear(hidden, ffn), torch.nn.Linear(ffn, hidden)
        self.act = torch.nn.GELU(approximate=approximate)

    def forward(self, x, bias):
        b, s, h = x.shape
        d = h // self.heads

        def split(t):
            return t.reshape(b, s, self.heads, d).transpose(1, 2)

        scores = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / math.sqrt(d) + bias
        context = (scores.softmax(-1) @ split(self.v(x))).transpose(1, 2).reshape(b, s, h)
        x = self.norm1(x + self.out(context))
        return self.norm2(x + self.ffn_out(self.act(self.ffn_in(x))))


class Encoder(torch.nn.Module):
    def __init__(self, vocab=50, hidden=32, heads=4, ffn=64, layers=2, max_len=16, approximate="none"):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.position = torch.nn.Parameter(torch.randn(max_len, hidden) * 0.1)
        self.layers = torch.nn.ModuleList(EncoderLayer(hidden, heads, ffn, approximate) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        return x


def encoder(seed=0, dead=(), **kwargs) -> Encoder:
    """An encoder with random weights; `dead` FFN neurons (in every layer) get a -1e4 bias: GELU gives exactly 0."""
    torch.manual_seed(seed)
    model = Encoder(**kwargs).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.ffn_in.bias[list(dead)] = -1e4
    return model


def encoder_inputs(n=8, seq=12, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.int64)
    for i in range(n):
        mask[i, seq - (i % 4) * 2:] = 0  # padded tails of different lengths
    return ids, mask


def export(model, args, path, *, dynamo: bool, names, dynamic: dict, external_data: bool = False, opset=None):
    kwargs = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        shapes = tuple({axis: torch.export.Dim(name, max=1024) if name != "batch" else torch.export.Dim("batch")
                        for axis, name in dynamic.get(n, {}).items()} for n in names[0])
        torch.onnx.export(model, args, str(path), dynamo=True, input_names=names[0], output_names=names[1],
                          dynamic_shapes=shapes, external_data=external_data, **kwargs)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, input_names=names[0], output_names=names[1],
                          dynamic_axes=dynamic, **kwargs)
    return path

"""Attention models as ONNX for the head-pruning tests (issue #12): own PyTorch code, transformers
configs with random weights, onnxruntime's fused operators, and hand-made graphs.

Every builder returns an `AttentionCase`: the model, where its heads are (`HeadLayout`) and a
`sample(n, seq, seed)` function giving feeds keyed by the model's input names. Weights are seeded
random (no hub, no download); each model is small (hidden 32-64, 2-4 heads, 1-2 layers).

What exports (torch 2.13, transformers 5.24, onnxruntime 1.32; `python tests/attention_models.py`
prints the op types of each):

- own encoder (a), explicit matmuls: all three exporters. TorchScript with dynamic axes computes each
  head-split Reshape target as Concat(Unsqueeze(Gather(Shape(x))) for batch and seq, constant heads and
  head_dim); the merge-back Reshape likewise (constant H*D). Shape nodes read the block's input (the graph
  input, then the first LayerNormalization), never Q/K/V. Static: every Reshape target is a constant.
  dynamo: targets are Concat(Shape(x, start, end), constants). In all three, Transposes sit after the
  split Reshape (perm 0,2,1,3) on Q and V, one (0,2,3,1) on K (K's transpose folded in), and one
  (0,2,1,3) before the merge Reshape.
- own encoder with F.scaled_dot_product_attention (b): all three exporters. TorchScript decomposes SDPA
  into MatMul/Softmax with the scale computed as 1/Sqrt(Cast(Slice(Shape(q)))): a Shape node reads the
  transposed Q. dynamo decomposes too, with extra Reshapes and two (0,2,1) Transposes per layer.
- own Llama-style GQA decoder (c): all three exporters. repeat_kv is Unsqueeze -> Expand -> Reshape
  [B, KV*G, S, D] on K and V (TorchScript dynamic: Expand shapes and Reshape targets from Shape nodes that
  read the transposed K/V); causal mask by Trilu; SwiGLU as Sigmoid*Mul*Mul.
- transformers BertModel, DistilBertModel, ViTModel (eager attention): TorchScript dynamic and static, and
  dynamo, all export and run. LlamaModel: dynamo only; both TorchScript exports fail with
  "Exporting the operator 'aten::diff' to ONNX opset version 17 is not supported" (transformers' mask
  code calls torch.diff; no opset has a TorchScript symbolic for it).
- fused (e): onnxruntime.transformers.optimizer.optimize_model(model_type="bert") on a TorchScript export
  (dynamic or static) of the own encoder, BertModel or DistilBertModel gives com.microsoft.Attention
  (packed qkv weight [E, 3E], bias [3E], mask_index; plus SkipLayerNormalization, BiasGelu, and
  EmbedLayerNormalization for BERT); with FusionOptions.use_multi_head_attention = True it gives
  com.microsoft.MultiHeadAttention fed by three MatMuls (query, key, value) and a packed bias [3E]. It fuses
  no attention in dynamo exports nor in ViT exports. Its output lacks the com.microsoft opset import, which
  onnx.checker requires: fused_case adds it.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXPORTERS = ("dynamic", "static", "dynamo")  # TorchScript with dynamic batch and sequence, TorchScript static, dynamo


@dataclass
class HeadLayout:
    """Where the heads are: `layers` blocks of `heads` query heads of `head_dim` each; `kv_heads` < heads
    for grouped-query attention (each K/V head serves heads // kv_heads query heads); `fused` names the
    contrib op (com.microsoft) that holds the attention, if any."""

    layers: int
    heads: int
    head_dim: int
    kv_heads: int | None = None
    fused: str | None = None

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def groups(self) -> int:
        return self.heads // (self.kv_heads or self.heads)


@dataclass
class AttentionCase:
    name: str
    model: onnx.ModelProto
    layout: HeadLayout
    sample: Callable[..., dict] = field(repr=False)
    output: str = ""
    batch: int | None = None  # the batch size a static export fixed; None: any

    def feeds(self, n=4, seq=12, seed=0) -> dict:
        """Sample feeds that this model accepts as one batch."""
        return self.sample(self.batch or n, seq, seed)

    def save(self, directory) -> Path:
        path = Path(directory) / f"{self.name}.onnx"
        onnx.save_model(self.model, str(path))
        return path


# ------------------------------------------------------------------------------------- own PyTorch code

def _torch_modules():
    import torch
    from torch import nn
    from torch.nn import functional as F

    from coupled_models import RMSNorm

    class SelfAttention(nn.Module):
        """Separate Q/K/V projections with bias; heads split by view + transpose."""

        def __init__(self, hidden, heads, sdpa=False):
            super().__init__()
            self.heads, self.head_dim, self.sdpa = heads, hidden // heads, sdpa
            self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
            self.out = nn.Linear(hidden, hidden)

        def forward(self, x, bias=None):
            b, s, _ = x.shape

            def split(t):
                return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            if self.sdpa:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            else:
                scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
                if bias is not None:
                    scores = scores + bias
                context = scores.softmax(-1) @ v
            return self.out(context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))

    class Block(nn.Module):
        """Post-LayerNorm encoder block: attention, residual + LayerNorm, GELU FFN, residual + LayerNorm."""

        def __init__(self, hidden, heads, ffn, sdpa=False):
            super().__init__()
            self.attention = SelfAttention(hidden, heads, sdpa)
            self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.ffn_in, self.ffn_out = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

        def forward(self, x, bias=None):
            x = self.norm1(x + self.attention(x, bias))
            return self.norm2(x + self.ffn_out(F.gelu(self.ffn_in(x))))

    class Encoder(nn.Module):
        """Blocks over token embeddings x [B, S, hidden]; an optional 0/1 mask [B, S] becomes an additive bias,
        or (`additive=True`) the mask is that bias already, [B, 1, 1, S], added to the scores as given."""

        def __init__(self, hidden=32, heads=4, ffn=64, layers=2, sdpa=False, additive=False):
            super().__init__()
            self.blocks = nn.ModuleList(Block(hidden, heads, ffn, sdpa) for _ in range(layers))
            self.additive = additive

        def forward(self, x, attention_mask=None):
            bias = attention_mask if self.additive else None
            if attention_mask is not None and not self.additive:
                bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for block in self.blocks:
                x = block(x, bias)
            return x

        def attentions(self):
            return [b.attention for b in self.blocks]

    class GQAttention(nn.Module):
        """Llama-style grouped-query attention: kv_heads K/V heads, each repeated for heads // kv_heads query
        heads (repeat_kv: expand + reshape), causal mask, no biases."""

        def __init__(self, hidden, heads, kv_heads):
            super().__init__()
            self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
            self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

        def repeat_kv(self, t):
            b, kv, s, d = t.shape
            n = self.heads // self.kv_heads
            return t[:, :, None, :, :].expand(b, kv, n, s, d).reshape(b, kv * n, s, d)

        def forward(self, x):
            b, s, _ = x.shape
            q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            k, v = self.repeat_kv(k), self.repeat_kv(v)
            scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
            causal = torch.triu(torch.full((s, s), float("-inf"), device=x.device), diagonal=1)
            context = (scores + causal).softmax(-1) @ v
            return self.o_proj(context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))

    class LlamaBlock(nn.Module):
        """Pre-RMSNorm decoder block: GQA attention + residual, SwiGLU FFN + residual."""

        def __init__(self, hidden, heads, kv_heads, ffn):
            super().__init__()
            self.input_norm, self.post_norm = RMSNorm(hidden), RMSNorm(hidden)
            self.self_attn = GQAttention(hidden, heads, kv_heads)
            self.gate_proj, self.up_proj = nn.Linear(hidden, ffn, bias=False), nn.Linear(hidden, ffn, bias=False)
            self.down_proj = nn.Linear(ffn, hidden, bias=False)

        def forward(self, x):
            x = x + self.self_attn(self.input_norm(x))
            h = self.post_norm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Decoder(nn.Module):
        def __init__(self, hidden=32, heads=4, kv_heads=2, ffn=64, layers=2):
            super().__init__()
            self.blocks = nn.ModuleList(LlamaBlock(hidden, heads, kv_heads, ffn) for _ in range(layers))
            self.norm = RMSNorm(hidden)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

        def attentions(self):
            return [b.self_attn for b in self.blocks]

    return torch, Encoder, Decoder


def own_encoder(*, seed=0, hidden=32, heads=4, ffn=64, layers=2, sdpa=False, additive=False):
    """The encoder of (a) (explicit matmuls) or (b) (`sdpa=True`: F.scaled_dot_product_attention), random weights."""
    torch, Encoder, _ = _torch_modules()
    torch.manual_seed(seed)
    return Encoder(hidden, heads, ffn, layers, sdpa, additive).eval()


def own_decoder(*, seed=0, hidden=32, heads=4, kv_heads=2, ffn=64, layers=2):
    """The Llama-style GQA decoder of (c), random weights."""
    torch, _, Decoder = _torch_modules()
    torch.manual_seed(seed)
    return Decoder(hidden, heads, kv_heads, ffn, layers).eval()


# --------------------------------------------------------------------------------------- dead heads

def silence_head(q, k, v, head: int, head_dim: int, kv_head: int | None = None, query_heads=None) -> None:
    """Make a head contribute nothing: zero its rows of the Q, K and V projections (nn.Linear, weight
    [out, in]) and their biases. Its scores are then 0 (uniform attention over V = 0), so its context
    is exactly 0 whatever the input, and removing it (with the out-projection's columns) changes no output.

    For grouped-query attention pass the K/V head `kv_head` and the `query_heads` that read it: all of
    them are silenced together, since removing a K/V head removes every query head of its group."""
    import torch

    kv_head = head if kv_head is None else kv_head
    query_heads = [head] if query_heads is None else list(query_heads)
    with torch.no_grad():
        for h in query_heads:
            q.weight[h * head_dim:(h + 1) * head_dim] = 0
            if q.bias is not None:
                q.bias[h * head_dim:(h + 1) * head_dim] = 0
        for lin in (k, v):
            lin.weight[kv_head * head_dim:(kv_head + 1) * head_dim] = 0
            if lin.bias is not None:
                lin.bias[kv_head * head_dim:(kv_head + 1) * head_dim] = 0


def silence_own(model, heads: dict[int, list[int]]) -> None:
    """Silence heads of an own encoder/decoder: {layer: [head, ...]} (for GQA, K/V head indices)."""
    for layer, attention in enumerate(model.attentions()):
        for h in heads.get(layer, ()):
            if hasattr(attention, "kv_heads"):
                group = attention.heads // attention.kv_heads
                silence_head(attention.q_proj, attention.k_proj, attention.v_proj, h, attention.head_dim,
                             kv_head=h, query_heads=range(h * group, (h + 1) * group))
            else:
                silence_head(attention.q, attention.k, attention.v, h, attention.head_dim)


def transformer_attentions(model) -> list:
    """(q, k, v) Linear triples of a transformers Bert/DistilBert/ViT/Llama model, per layer."""
    out = []
    for m in model.modules():
        names = type(m).__name__
        if hasattr(m, "query") and hasattr(m, "key") and hasattr(m, "value"):
            out.append((m.query, m.key, m.value))
        elif hasattr(m, "q_lin"):
            out.append((m.q_lin, m.k_lin, m.v_lin))
        elif hasattr(m, "q_proj") and "Attention" in names:
            out.append((m.q_proj, m.k_proj, m.v_proj))
    return out


# ------------------------------------------------------------------------------------------ export

def export(model, args, *, exporter: str, input_names, output_names, dynamic: dict, opset=17) -> onnx.ModelProto:
    """torch.onnx.export to a ModelProto. exporter: "dynamic" (TorchScript, `dynamic` axes), "static"
    (TorchScript, example shapes fixed) or "dynamo" (torch.export with the same axes as Dims)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {}
            shapes = {}
            for name in input_names:
                axes = dynamic.get(name, {})
                shapes[name] = {a: dims.setdefault(n, torch.export.Dim(n, min=1 if n == "batch" else 2, max=512))
                                for a, n in axes.items()} or None
            program = torch.onnx.export(model, tuple(args), dynamo=True, input_names=list(input_names),
                                        output_names=list(output_names), dynamic_shapes=tuple(shapes.values()),
                                        opset_version=max(opset, 18), verbose=False)
            return program.model_proto
        torch.onnx.export(model, tuple(args), buffer, dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), opset_version=opset,
                          dynamic_axes=dynamic if exporter == "dynamic" else None)
    return onnx.load_from_string(buffer.getvalue())


def _seq_axes(names, outputs=()):
    return {n: {0: "batch", 1: "seq"} for n in (*names, *outputs)}


# ----------------------------------------------------------------------------------------- samples

def embeddings_sample(hidden: int, mask=True, int_mask: bool = True):
    """Feeds for models over embeddings: x [n, seq, hidden] float32 (+ attention_mask [n, seq], padded tails;
    with mask="additive", attention_mask is the float bias [n, 1, 1, seq]: 0 or -10000 at padding)."""

    def sample(n=8, seq=12, seed=0):
        rng = np.random.default_rng(seed)
        feeds = {"x": rng.standard_normal((n, seq, hidden)).astype(np.float32)}
        if mask == "additive":
            feeds["attention_mask"] = ((1.0 - padding_mask(n, seq, np.float32)) * -10000.0)[:, None, None, :]
        elif mask:
            feeds["attention_mask"] = padding_mask(n, seq, np.int64 if int_mask else np.float32)
        return feeds

    return sample


def padding_mask(n, seq, dtype=np.int64):
    m = np.ones((n, seq), dtype)
    for i in range(n):
        m[i, seq - (i % 4) * max(seq // 6, 1):] = 0  # padded tails of different lengths; row 0 unpadded
    return m


def tokens_sample(vocab: int, names=("input_ids", "attention_mask"), seq_fixed=None):
    def sample(n=8, seq=12, seed=0):
        seq = seq_fixed or seq
        rng = np.random.default_rng(seed)
        feeds = {"input_ids": rng.integers(1, vocab, (n, seq), dtype=np.int64)}
        if "attention_mask" in names:
            feeds["attention_mask"] = padding_mask(n, seq)
            feeds["input_ids"] *= feeds["attention_mask"]
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros((n, seq), np.int64)
        return feeds

    return sample


def fixed_shape(sample, seq):
    """A sample function whose sequence length is the one a static export fixed (feed it in batches of
    the case's `batch`)."""

    def fixed(n=2, seq_=None, seed=0, **_):
        return sample(n=n, seq=seq, seed=seed)

    return fixed


# ------------------------------------------------------------------------------------- own builders

def own_encoder_case(exporter="dynamic", *, sdpa=False, mask=True, seed=0, hidden=32, heads=4, ffn=64, layers=2,
                     dead: dict | None = None, example=(2, 12)) -> AttentionCase:
    """(a) / (b): the own encoder exported with `exporter`; `dead` {layer: [heads]} silenced before export.
    `mask`: True (0/1 int64 attention_mask [B, S]), "additive" (float [B, 1, 1, S] added to the scores) or
    False (no mask input). A static export fixes batch and sequence at `example`."""
    import torch

    net = own_encoder(seed=seed, hidden=hidden, heads=heads, ffn=ffn, layers=layers, sdpa=sdpa,
                      additive=mask == "additive")
    if dead:
        silence_own(net, dead)
    sample = embeddings_sample(hidden, mask)
    feeds = sample(*example)
    names = ["x", "attention_mask"] if mask else ["x"]
    args = [torch.from_numpy(feeds[n]) for n in names]
    dynamic = _seq_axes(names, ["hidden"])
    if mask == "additive":
        dynamic["attention_mask"] = {0: "batch", 3: "seq"}
    model = export(net, args, exporter=exporter, input_names=names, output_names=["hidden"], dynamic=dynamic)
    if exporter == "static":
        sample = fixed_shape(sample, example[1])
    suffix = {True: "", False: "_nomask", "additive": "_additive"}[mask]
    name = f"{'sdpa' if sdpa else 'encoder'}_{exporter}{suffix}"
    return AttentionCase(name, model, HeadLayout(layers, heads, hidden // heads), sample, "hidden",
                         example[0] if exporter == "static" else None)


def own_decoder_case(exporter="dynamic", *, seed=0, hidden=32, heads=4, kv_heads=2, ffn=64, layers=2,
                     dead: dict | None = None, example=(2, 12)) -> AttentionCase:
    """(c): the Llama-style GQA decoder over embeddings x; `dead` {layer: [kv heads]} silenced with their groups."""
    import torch

    net = own_decoder(seed=seed, hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=ffn, layers=layers)
    if dead:
        silence_own(net, dead)
    sample = embeddings_sample(hidden, mask=False)
    model = export(net, [torch.from_numpy(sample(*example)["x"])], exporter=exporter, input_names=["x"],
                   output_names=["hidden"], dynamic=_seq_axes(["x"], ["hidden"]))
    if exporter == "static":
        sample = fixed_shape(sample, example[1])
    return AttentionCase(f"gqa_{exporter}", model, HeadLayout(layers, heads, hidden // heads, kv_heads), sample,
                         "hidden", example[0] if exporter == "static" else None)


# -------------------------------------------------------------------------------------- description

def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def describe(model: onnx.ModelProto) -> dict:
    """How the attention is written: op counts, where Reshape targets come from, what Shape nodes read,
    what each Transpose permutes."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consts = {t.name for t in model.graph.initializer}

    def origin(name, depth=0):
        node = producer.get(name)
        if name in consts or node is None or node.op_type == "Constant":
            return "const"
        if node.op_type == "Shape":
            return "Shape"
        if depth > 8:
            return node.op_type
        parts = sorted({origin(i, depth + 1) for i in node.input if i})
        return "+".join(parts) if parts else node.op_type

    reshape = {}
    for n in model.graph.node:
        if n.op_type == "Reshape":
            key = origin(n.input[1])
            reshape[key] = reshape.get(key, 0) + 1
    shape_reads = {}
    for n in model.graph.node:
        if n.op_type == "Shape":
            src = producer.get(n.input[0])
            key = src.op_type if src is not None else "graph input"
            shape_reads[key] = shape_reads.get(key, 0) + 1
    perms = {}
    for n in model.graph.node:
        if n.op_type == "Transpose":
            perm = next((tuple(a.ints) for a in n.attribute if a.name == "perm"), None)
            perms[str(perm)] = perms.get(str(perm), 0) + 1
    return {"ops": op_counts(model), "reshape_target_from": reshape, "shape_reads": shape_reads,
            "transpose_perms": perms}


# ----------------------------------------------------------------------------------- transformers

TRANSFORMERS = ("bert", "distilbert", "vit", "llama")
VOCAB = 100


def transformers_model(kind: str, *, seed=0, hidden=32, heads=4, layers=2, ffn=64, kv_heads=2,
                       attn_implementation="eager"):
    """A transformers model from a tiny config with seeded random weights (no download)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(attn_implementation=attn_implementation)
    if kind == "bert":
        config = tf.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=64,
                               **common)
        model = tf.BertModel(config, add_pooling_layer=False)
    elif kind == "distilbert":
        config = tf.DistilBertConfig(vocab_size=VOCAB, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                                     max_position_embeddings=64, **common)
        model = tf.DistilBertModel(config)
    elif kind == "vit":
        config = tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=hidden,
                              num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn, **common)
        model = tf.ViTModel(config, add_pooling_layer=False)
    elif kind == "llama":
        config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=ffn,
                                max_position_embeddings=64, use_cache=False, **common)
        model = tf.LlamaModel(config)
    else:
        raise ValueError(kind)
    return model.eval(), config


class _LastHidden:
    """Wraps a transformers model so that export sees positional tensors in and one tensor out."""

    def __new__(cls, model, names):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = model

            # explicit parameters, not *args: torch.export matches dynamic_shapes to the signature
            def forward(self, first, second=None):
                return self.inner(**dict(zip(names, (first, second)))).last_hidden_state

        return Wrapper().eval()


def transformers_case(kind: str, exporter="dynamic", *, seed=0, hidden=32, heads=4, layers=2, kv_heads=2,
                      dead: dict | None = None, example=(2, 12), attn_implementation="eager") -> AttentionCase:
    """(c) with transformers' LlamaModel, and (d): BertModel, DistilBertModel, ViTModel (16x16 RGB images,
    4x4 patches, 16 patches + class token); `dead` {layer: [heads]} silenced before export (for llama:
    K/V heads with their query groups). Output: last_hidden_state."""
    import torch

    model, config = transformers_model(kind, seed=seed, hidden=hidden, heads=heads, layers=layers, kv_heads=kv_heads,
                                       attn_implementation=attn_implementation)
    head_dim = hidden // heads
    if dead:
        for layer, (q, k, v) in enumerate(transformer_attentions(model)):
            for h in dead.get(layer, ()):
                if kind == "llama":
                    g = heads // kv_heads
                    silence_head(q, k, v, h, head_dim, kv_head=h, query_heads=range(h * g, (h + 1) * g))
                else:
                    silence_head(q, k, v, h, head_dim)
    if kind == "vit":
        names = ["pixel_values"]

        def sample(n=8, seq=None, seed=0):
            return {"pixel_values": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}

        dynamic = {"pixel_values": {0: "batch"}, "hidden": {0: "batch"}}
    else:
        names = ["input_ids"] if kind == "llama" else ["input_ids", "attention_mask"]
        sample = tokens_sample(VOCAB, names)
        dynamic = _seq_axes(names, ["hidden"])
    feeds = sample(*example)
    wrapper = _LastHidden(model, names)
    onnx_model = export(wrapper, [torch.from_numpy(feeds[n]) for n in names], exporter=exporter, input_names=names,
                        output_names=["hidden"], dynamic=dynamic)
    if exporter == "static" and kind != "vit":
        sample = fixed_shape(sample, example[1])
    layout = HeadLayout(layers, heads, head_dim, kv_heads if kind == "llama" else None)
    suffix = "" if attn_implementation == "eager" else f"_{attn_implementation}"
    return AttentionCase(f"{kind}{suffix}_{exporter}", onnx_model, layout, sample, "hidden",
                         example[0] if exporter == "static" else None)


# ------------------------------------------------------------------------------------------ fused

FUSED = ("Attention", "MultiHeadAttention")


def fused_case(op="Attention", *, source="encoder", seed=0, hidden=32, heads=4, layers=2,
               dead: dict | None = None, directory=None) -> AttentionCase:
    """(e): onnxruntime's transformer optimizer run on a TorchScript export (dynamic axes) of the own encoder
    (`source="encoder"`) or of transformers' BertModel (`source="bert"`), giving com.microsoft `Attention`
    (packed QKV weight [E, 3E]) or, with FusionOptions.use_multi_head_attention, `MultiHeadAttention` fed by
    three MatMuls and a packed bias [3E]. (The optimizer fuses nothing in dynamo exports nor in ViT.)
    `directory`: where the optimizer's input is written (a temporary one by default)."""
    import tempfile

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if source == "bert":
        case = transformers_case("bert", "dynamic", seed=seed, hidden=hidden, heads=heads, layers=layers, dead=dead)
    else:
        case = own_encoder_case("dynamic", seed=seed, hidden=hidden, heads=heads, layers=layers, dead=dead)
    options = FusionOptions("bert")
    options.use_multi_head_attention = op == "MultiHeadAttention"
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = case.save(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden,
                                       optimization_options=options, opt_level=0).model
    if not any(o.domain == "com.microsoft" for o in optimized.opset_import):
        # the optimizer writes com.microsoft nodes without importing the domain: onnx.checker refuses that
        optimized.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = sum(n.op_type == op and n.domain == "com.microsoft" for n in optimized.graph.node)
    if found != layers:
        raise RuntimeError(f"the optimizer fused {found} {op} nodes, wanted {layers}")
    layout = HeadLayout(layers, heads, hidden // heads, fused=op)
    return AttentionCase(f"{source}_fused_{op}", optimized, layout, case.sample, case.output)


def _rand(rng, *shape, scale=None):
    scale = 1 / math.sqrt(shape[0]) if scale is None else scale
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def handmade_case(op="Attention", *, seed=0, hidden=32, heads=4, dead=(), mask=False,
                  constant=False) -> AttentionCase:
    """(e): one attention layer written with onnx.helper. `Attention`: x [B, S, E] -> com.microsoft.Attention
    (packed weight [E, 3E] = [Wq | Wk | Wv], bias [3E], num_heads) -> MatMul Wo + Add bo. `MultiHeadAttention`:
    three MatMul + Add projections -> com.microsoft.MultiHeadAttention (num_heads) -> MatMul Wo + Add bo.
    `dead` heads get zero Q/K/V weights and biases (context exactly 0; with `constant`, their biases stay, so
    the context is the V bias: a constant that folding into the out-projection removes); with `mask`, a raw 0/1 int32
    attention_mask [B, S] feeds the Attention's mask_index (or the MHA's key_padding_mask)."""
    rng = np.random.default_rng(seed)
    d = hidden // heads
    wq, wk, wv = (_rand(rng, hidden, hidden) for _ in range(3))
    bq, bk, bv = (_rand(rng, hidden, scale=0.1) for _ in range(3))
    for h in dead:
        for w, b in ((wq, bq), (wk, bk), (wv, bv)):
            w[:, h * d:(h + 1) * d] = 0
            if not constant:
                b[h * d:(h + 1) * d] = 0
    wo, bo = _rand(rng, hidden, hidden), _rand(rng, hidden, scale=0.1)
    inits = [numpy_helper.from_array(wo, "Wo"), numpy_helper.from_array(bo, "bo")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])]
    if mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "seq"]))
    mask_name = "attention_mask" if mask else ""
    if op == "Attention":
        inits += [numpy_helper.from_array(np.concatenate([wq, wk, wv], 1), "Wqkv"),
                  numpy_helper.from_array(np.concatenate([bq, bk, bv]), "bqkv")]
        nodes = [helper.make_node("Attention", ["x", "Wqkv", "bqkv", mask_name] if mask else ["x", "Wqkv", "bqkv"],
                                  ["context"], name="attention", domain="com.microsoft", num_heads=heads)]
    elif op == "MultiHeadAttention":
        nodes = []
        for name, w, b in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv)):
            inits += [numpy_helper.from_array(w, f"W{name}"), numpy_helper.from_array(b, f"b{name}")]
            nodes += [helper.make_node("MatMul", ["x", f"W{name}"], [f"{name}_mm"], name=f"{name}_proj"),
                      helper.make_node("Add", [f"{name}_mm", f"b{name}"], [name], name=f"{name}_bias")]
        mha_inputs = ["q", "k", "v"] + (["", mask_name] if mask else [])
        nodes.append(helper.make_node("MultiHeadAttention", mha_inputs, ["context"], name="attention",
                                      domain="com.microsoft", num_heads=heads))
    else:
        raise ValueError(op)
    nodes += [helper.make_node("MatMul", ["context", "Wo"], ["out_mm"], name="out_proj"),
              helper.make_node("Add", ["out_mm", "bo"], ["hidden"], name="out_bias")]
    graph = helper.make_graph(nodes, f"handmade_{op}", inputs,
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", hidden])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    base = embeddings_sample(hidden, mask=False)

    def sample(n=8, seq=12, seed=0):
        feeds = base(n, seq, seed)
        if mask:
            feeds["attention_mask"] = padding_mask(n, seq, np.int32)
        return feeds

    return AttentionCase(f"handmade_{op}{'_mask' if mask else ''}", model, HeadLayout(1, heads, d, fused=op),
                         sample, "hidden")


def all_cases(slow: bool = True):
    """(name, builder) of every case; `slow=False` leaves out the exports that take seconds."""
    cases = [(f"encoder_{e}", lambda e=e: own_encoder_case(e)) for e in EXPORTERS]
    cases += [(f"sdpa_{e}", lambda e=e: own_encoder_case(e, sdpa=True)) for e in EXPORTERS]
    cases += [("encoder_dynamic_additive", lambda: own_encoder_case("dynamic", mask="additive")),
              ("encoder_dynamo_additive", lambda: own_encoder_case("dynamo", mask="additive")),
              ("sdpa_dynamic_nomask", lambda: own_encoder_case("dynamic", sdpa=True, mask=False))]
    cases += [(f"gqa_{e}", lambda e=e: own_decoder_case(e)) for e in EXPORTERS]
    cases += [(f"{k}_{e}", lambda k=k, e=e: transformers_case(k, e)) for k in ("bert", "distilbert", "vit")
              for e in EXPORTERS]
    cases += [("llama_dynamo", lambda: transformers_case("llama", "dynamo"))]
    cases += [(f"{s}_fused_{op}", lambda s=s, op=op: fused_case(op, source=s)) for s in ("encoder", "bert")
              for op in FUSED]
    cases += [(f"handmade_{op}", lambda op=op: handmade_case(op)) for op in FUSED]
    return cases


if __name__ == "__main__":
    import json
    import sys
    import time

    for name, build in all_cases():
        if len(sys.argv) > 1 and not any(a in name for a in sys.argv[1:]):
            continue
        start = time.perf_counter()
        try:
            case = build()
        except Exception as e:  # noqa: BLE001 - a listing: report and go on
            print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        print(f"{name} ({time.perf_counter() - start:.1f} s) {case.layout}\n  {json.dumps(describe(case.model))}")


def out_projections(model: onnx.ModelProto) -> list[str]:
    """Per attention (graph order), the initializer holding the out-projection weight [H*D, E]: the first
    MatMul with a constant weight downstream of each Softmax (or fused attention op)."""
    inits = {t.name for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Softmax", *FUSED):
            continue
        frontier, seen = list(node.output), set()
        while frontier:
            name = frontier.pop(0)
            for user in readers.get(name, []):
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if user.op_type == "MatMul" and user.input[1] in inits:
                    found.append(user.input[1])
                    frontier = []
                    break
                frontier.extend(user.output)
    return found


def scramble_rows(model: onnx.ModelProto, initializer: str, rows, seed=0) -> onnx.ModelProto:
    """A copy of `model` whose `initializer` has random values in `rows` (what a dead head's context meets)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name == initializer:
            w = numpy_helper.to_array(t).copy()
            w[list(rows)] = np.random.default_rng(seed).standard_normal((len(rows), w.shape[1])).astype(w.dtype)
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, initializer))
    return out

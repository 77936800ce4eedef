"""Packed Q/K/V projections: does a timm-style packed `qkv` prune as well as separate projections?

    python benchmarks/packed.py [--max-drop 1.0] [--heads 4]

The ViT of attention.py (same code, seed, training and data splits: statistics on the 597 training
images, the budget checked on a pool of 600, accuracy on 600 test images the tool never sees) is
trained once and exported twice with TorchScript, with the same weights: as built (separate Q, K, V
Linear layers), and with each block's three projections packed into one Linear of width 3E whose parts
are selected the timm way (reshape [B, N, 3, H, D], permute(2, 0, 3, 1, 4), unbind). Both go through
onnxprune.prune with heads + FFN at the same budget. Before unpack.py the packed model's heads were
skipped (one space tied to shifted copies of itself); now it is split into the separate form first, so
both should give the same heads, MACs and accuracy (up to float rounding in the statistics).
"""

from __future__ import annotations

import argparse
import sys
import types
import warnings

import numpy as np

import attention as vit
from common import machine


def packed(net):
    """`net` with every block's Q/K/V packed into one Linear, parts selected as timm does (same weights)."""
    import torch

    def forward(self, x, bias=None):
        b, s, c = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5
        if bias is not None:
            scores = scores + bias
        context = scores.softmax(-1) @ v
        return self.out(context.transpose(1, 2).reshape(b, s, c))

    for block in net.encoder.blocks:
        attention = block.attention
        qkv = torch.nn.Linear(attention.q.in_features, 3 * attention.q.out_features)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([attention.q.weight, attention.k.weight, attention.v.weight]))
            qkv.bias.copy_(torch.cat([attention.q.bias, attention.k.bias, attention.v.bias]))
        attention.qkv = qkv
        del attention.q, attention.k, attention.v
        attention.forward = types.MethodType(forward, attention)
    return net


def export(net, x, path):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in pp [1.0]")
    parser.add_argument("--heads", type=int, default=vit.CONFIG["heads"], help="heads per layer [4]")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    vit.CONFIG["heads"] = args.heads
    import onnx

    from onnxprune.unpack import unpack_qkv

    print(f"machine: {machine()}")
    vit.build(log=lambda *a: None)  # the data splits (and the cached separate model, unused here)
    calibration, test = dict(np.load(vit.CALIBRATION)), dict(np.load(vit.TEST))
    net = vit.train(vit.vit_digits(), calibration["x"], calibration["y"])
    paths = {"separate": export(net, calibration["x"], vit.CACHE / f"vit_digits_{args.heads}h_separate.onnx")}
    paths["packed"] = export(packed(net), calibration["x"], vit.CACHE / f"vit_digits_{args.heads}h_packed.onnx")
    models = {k: onnx.load(str(p)) for k, p in paths.items()}
    outs = {k: vit.accuracy(m, test) for k, m in models.items()}
    print(f"ViT {vit.CONFIG}; the two exports agree on {outs['packed']['correct']} / {outs['separate']['correct']} "
          f"correct test images; packed projections found by unpack.py: {len(unpack_qkv(models['packed'])[1])}")
    print(f"budget: accuracy drop <= {args.max_drop} pp (checked on the pool of 600); accuracy on the "
          f"{len(test['y'])} test images, 95 % Clopper-Pearson")
    print(f"{'':<10} {'heads kept':>12} {'params':>8} {'MACs':>8} {'MAC gain':>9} {'test accuracy':>26}")
    for label, path in paths.items():
        pruned, note = vit.prune(path, vit.POOL, ("neurons", "heads"), args.max_drop)
        if pruned is None:
            print(f"{label:<10} {note}")
            continue
        before, after = vit.macs(models[label], test)["total"], vit.macs(pruned, test)["total"]
        acc = vit.accuracy(pruned, test)
        heads = _heads(pruned, label)
        print(f"{label:<10} {heads:>12} {vit.parameters(pruned):>8,} {after:>8,} {1 - after / before:>8.1%} "
              f"{acc['accuracy']:>8.2%} [{acc['ci95'][0]:.2%}, {acc['ci95'][1]:.2%}]   ({note})")
    return 0


def _heads(model, label) -> str:
    """Heads kept per layer, from the out-projections' input widths (head_dim each)."""
    import onnx

    dim = vit.CONFIG["hidden"] // vit.CONFIG["heads"]
    weights = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and "/out/" in node.name and node.input[1] in weights:
            kept.append(str(onnx.numpy_helper.to_array(weights[node.input[1]]).shape[0] // dim))
    return "+".join(kept) or "?"


if __name__ == "__main__":
    sys.exit(main())

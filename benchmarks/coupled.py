"""What coupled groups add: prune a residual CNN and a gated-FFN MLP with and without them, and a
ResNeXt-style CNN with and without grouped Convs pruned.

    python benchmarks/coupled.py

Both models are our own PyTorch code (tests/coupled_models.py), trained briefly on scikit-learn's digits (8x8 images):
1197 training images, of which 600 feed the statistics and 597 judge the candidates
(eval_data), and the 600 held-out images of digits_val.npz, never seen by training or
pruning, give the accuracy in the table (with a 95% normal-approximation interval).

"uncoupled" is the behaviour before coupled groups: every group whose neurons are shared by
several producers or read at several taps (residual streams, gated FFNs, Concat/Split) is
skipped; "coupled" prunes them too. Both use the same budget (accuracy drop at most 2 pp at
95% confidence on the 597 selection images), criterion and compensation (onnxprune's
defaults: the contribution criterion); "coupled*" uses the consumer_share criterion instead
(each consumer's share summed, so a neuron read by several consumers weighs more). For the ResNeXt-style
CNN, "grouped skipped" is the behaviour before grouped Convs were pruned (every group a grouped Conv reads
or writes is skipped) and "grouped" prunes them with equal kept counts per block. Latency is the p50 of onnxruntime at batch 64 on this machine, relative to the
original measured in the same run.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from common import ROOT, digits_sets, machine

sys.path.insert(0, str(ROOT / "tests"))
warnings.filterwarnings("ignore")

BUDGET = dict(max_drop=2.0)


def train(net, x, y, epochs, seed=0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def gated_mlp(width=64, hidden=256, blocks=2):
    """x -> Linear -> residual stream of SwiGLU FFN blocks (no norm) -> Linear classifier."""
    import torch
    from coupled_models import GatedFFN

    class GatedMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(64, width)
            self.blocks = torch.nn.ModuleList(GatedFFN(width, hidden) for _ in range(blocks))
            self.head = torch.nn.Linear(width, 10)

        def forward(self, x):
            x = self.embed(x)
            for block in self.blocks:
                x = x + block(x)
            return self.head(x)

    return GatedMLP()


def export(net, example, path):
    import torch

    torch.onnx.export(net, (torch.from_numpy(example),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


def skipping(find_groups, which, kind: str, reason: str):
    """find_groups as before a kind of group was pruned: the prunable groups `which` picks are skipped."""
    from onnxprune.ops import Skip

    def wrapped(model, index=None):
        groups = find_groups(model, index)
        for g in groups:
            if g.prunable and which(g):
                g.reason = Skip(kind, reason)
        return groups

    return wrapped


def uncoupled_only(find_groups):
    """find_groups as before coupled groups: a set shared by producers or taps is skipped."""
    return skipping(find_groups, lambda g: g.coupled, "coupled",
                    "coupled channels (skipped in the uncoupled baseline)")


def grouped_skipped(find_groups):
    """find_groups as before grouped Convs were pruned: a group with channel blocks is skipped."""
    return skipping(find_groups, lambda g: g.balanced, "grouped-conv",
                    "grouped Conv channels (skipped in the baseline)")


def accuracy(model, x, y):
    from conftest import run_model

    p = float((run_model(model, {"input": x})[0].argmax(1) == y).mean())
    return p, 1.96 * np.sqrt(p * (1 - p) / len(y))


def main() -> int:
    import onnx
    import torch

    import onnxprune
    import onnxprune.groups.packed as packed
    import onnxprune.run as stages
    from onnxprune.bench import bench, macs_per_sample

    print(f"machine: {machine()}")
    cal, sel, test = digits_sets()
    x_train = np.concatenate([cal["input"], sel["input"]])
    y_train = np.concatenate([cal["labels"], sel["labels"]])
    torch.set_num_threads(1)
    cnn_train = x_train.reshape(-1, 1, 8, 8)

    from coupled_models import ResNet, ResNeXtish

    find = stages.find_groups
    coupling = (("uncoupled", uncoupled_only(find), "contribution"), ("coupled", find, "contribution"),
                ("coupled*", find, "consumer_share"))
    grouped = (("grouped skipped", grouped_skipped(find), "contribution"), ("grouped", find, "contribution"))
    cases = [("residual CNN (ResNet-style, 2 stages)", lambda: train(ResNet("basic", 32, in_channels=1), cnn_train,
                                                                   y_train, 30), (1, 8, 8), coupling),
             ("gated-FFN MLP (2 SwiGLU blocks)", lambda: train(gated_mlp(), x_train, y_train, 40), (64,), coupling),
             ("ResNeXt-style CNN (2 blocks 32->64 (groups=8)->32, grouped 3x3 32->48 (groups=4))",
              lambda: train(ResNeXtish(32, 64, 48, cardinality=8, out_groups=4, blocks=2), cnn_train, y_train, 30),
              (1, 8, 8), grouped)]
    with tempfile.TemporaryDirectory() as tmp:
        for title, make, shape, runs in cases:
            reshape = (lambda a: a.reshape(-1, *shape))  # noqa: E731
            net = make()
            path = export(net, reshape(cal["input"][:2]), Path(tmp) / "model.onnx")
            model = onnx.load(str(path))
            data = {"input": reshape(cal["input"]), "labels": cal["labels"]}
            held = {"input": reshape(sel["input"]), "labels": sel["labels"]}
            xt, yt = reshape(test["input"]), test["labels"]
            models = {"original": model}
            groups = onnxprune.inspect(model)
            notes = {"original": f"{sum(g.prunable for g in groups)} of {len(groups)} groups prunable"}
            for label, finder, criterion in runs:
                # both callers: prune finds groups through the packed-projection split by default
                stages.find_groups = packed.find_groups = finder
                try:
                    result = onnxprune.prune(model, data, eval_data=held, criterion=criterion, **BUDGET)
                finally:
                    stages.find_groups = packed.find_groups = find
                models[label] = result.model
                prunable = [g for g in result.report.groups if g.prunable]
                notes[label] = f"{len(prunable)} groups prunable, chose {result.report.chosen or 'nothing'}"
            rows = bench(list(models.values()), batch_sizes=(64,), min_seconds=1.0,
                         data={"input": xt})
            one = {"input": xt[:1]}
            print(f"\n{title}; test: digits_val.npz, {len(yt)} images")
            print(f"{'':<16} {'parameters':>10} {'MACs/sample':>12} {'p50 ms @64':>11} {'speed-up':>8} "
                  f"{'test accuracy':>17}  note")
            for (label, m), row in zip(models.items(), rows):
                acc, half = accuracy(m, xt, yt)
                print(f"{label:<16} {row.parameters:>10,} {macs_per_sample(m, one):>12,} {row.p50_ms:>11.3f} "
                      f"{row.speedup:>7.2f}x {acc:>9.2%} ± {half:.1%}  {notes[label]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

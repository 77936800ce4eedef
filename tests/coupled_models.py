"""PyTorch blocks whose channels are coupled across producers (our own code, random weights).

Each model can silence channels so that they are exactly zero wherever they are read, in every
member of their coupled set, so that removing them must leave the outputs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def silence(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels, negative: bool = False) -> None:
    """Make output channels of conv (+ BN) exactly 0, or a large negative constant (dead after a ReLU)."""
    with torch.no_grad():
        for j in channels:
            conv.weight[j] = 0
            if conv.bias is not None:
                conv.bias[j] = 0
            if bn is not None:
                bn.running_mean[j] = 0
                bn.bias[j] = -1e4 if negative else 0.0


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


class Basic(nn.Module):
    def __init__(self, c_in, c, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.down = None
        if stride != 1 or c_in != c:
            self.down = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (self.down(x) if self.down is not None else x))

    def writers(self):
        return [(self.conv2, self.bn2)] + ([(self.down[0], self.down[1])] if self.down is not None else [])


class Bottleneck(nn.Module):
    def __init__(self, c_in, mid, c_out, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(out)))))
        return torch.relu(out + (self.down(x) if self.down is not None else x))

    def writers(self):
        return [(self.conv3, self.bn3)] + ([(self.down[0], self.down[1])] if self.down is not None else [])


class ResNet(nn.Module):
    """Stem, two stages of two residual blocks (the second stage downsamples), pool, classifier."""

    def __init__(self, block="basic", width=8, in_channels=3, classes=10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        if block == "basic":
            self.stage1 = nn.Sequential(Basic(width, width), Basic(width, width))
            self.stage2 = nn.Sequential(Basic(width, 2 * width, 2), Basic(2 * width, 2 * width))
            out = 2 * width
        else:
            self.stage1 = nn.Sequential(Bottleneck(width, width // 2, 2 * width), Bottleneck(2 * width, width // 2,
                                                                                             2 * width))
            self.stage2 = nn.Sequential(Bottleneck(2 * width, width, 4 * width, 2),
                                        Bottleneck(4 * width, width, 4 * width))
            out = 4 * width
        self.fc = nn.Linear(out, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.stage2(self.stage1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def silence_streams(self, stage1=(), stage2=()):
        """Channels of each residual stream made exactly zero in every block that writes the stream."""
        if isinstance(self.stage1[0], Basic) and self.stage1[0].down is None:
            silence(self.stem, self.bn, stage1)
        for block in self.stage1:
            for conv, bn in block.writers():
                silence(conv, bn, stage1)
        for block in self.stage2:
            for conv, bn in block.writers():
                silence(conv, bn, stage2)


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.expand, self.bn1 = nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h)
        self.dw, self.bn2 = nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h)
        self.project, self.bn3 = nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        h = nn.functional.relu6(self.bn1(self.expand(x)))
        h = nn.functional.relu6(self.bn2(self.dw(h)))
        return x + self.bn3(self.project(h))


class MobileNetV2ish(nn.Module):
    def __init__(self, c=8, in_channels=3, classes=10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(InvertedResidual(c), InvertedResidual(c))
        self.head = nn.Conv2d(c, 16, 1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.blocks(nn.functional.relu6(self.bn(self.stem(x))))
        x = torch.relu(self.head(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def silence_stream(self, channels):
        silence(self.stem, self.bn, channels)
        for b in self.blocks:
            silence(b.project, b.bn3, channels)


class ConvBnSiLU(nn.Module):
    def __init__(self, c_in, c_out, k=1):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False), nn.BatchNorm2d(c_out)

    def forward(self, x):
        return nn.functional.silu(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: cv1 -> chunk into two halves -> bottlenecks on the second -> Concat all -> cv2."""

    def __init__(self, c_in, c_out, n=1, split="chunk"):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSiLU(c_in, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(YoloBottleneck(self.c) for _ in range(n))
        self.split = split

    def forward(self, x):
        y = self.cv1(x)
        if self.split == "chunk":
            y = list(y.chunk(2, 1))
        elif self.split == "split":
            y = list(y.split((self.c, self.c), 1))
        else:
            y = [y[:, :self.c], y[:, self.c:]]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class YoloNeck(nn.Module):
    def __init__(self, c=8, in_channels=3, classes=10, split="chunk"):
        super().__init__()
        self.stem = ConvBnSiLU(in_channels, 2 * c, 3)
        self.c2f = C2f(2 * c, 2 * c, n=1, split=split)
        self.head = ConvBnSiLU(2 * c, 2 * c, 3)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.head(self.c2f(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def silence(self, first_half=(), second_half=()):
        """cv1's channels in its first half, and in its second half (shared with the bottleneck's output)."""
        c = self.c2f.c
        silence(self.c2f.cv1.conv, self.c2f.cv1.bn, [*first_half, *(c + j for j in second_half)])
        for m in self.c2f.m:
            silence(m.cv2.conv, m.cv2.bn, second_half)


class SqueezeExcite(nn.Module):
    def __init__(self, c=8, in_channels=3, classes=10):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        x = torch.relu(self.conv2(x * s))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GatedFFN(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with SiLU, GeGLU with GELU."""

    def __init__(self, d, hidden, act="silu"):
        super().__init__()
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.act = nn.SiLU() if act == "silu" else nn.GELU(approximate="tanh" if act == "gelu_tanh" else "none")

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    """A decoder block: RMSNorm, multi-head attention, residual, RMSNorm, gated FFN, residual."""

    def __init__(self, d=16, heads=2, hidden=32, act="silu"):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.ffn = GatedFFN(d, hidden, act)

    def forward(self, x):
        b, s, d = x.shape
        h = self.norm1(x)

        def split(t):
            return t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2)

        att = (split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / (d // self.heads) ** 0.5).softmax(-1)
        x = x + self.o((att @ split(self.v(h))).transpose(1, 2).reshape(b, s, d))
        return x + self.ffn(self.norm2(x))


def silence_ffn(ffn: GatedFFN, neurons) -> None:
    """up(x)_j = 0 exactly, so act(gate)_j * up_j = 0 whatever the gate does."""
    with torch.no_grad():
        for j in neurons:
            ffn.up.weight[j] = 0


class ResNeXtBlock(nn.Module):
    """1x1 -> grouped 3x3 (`cardinality` groups) -> 1x1 on a residual stream."""

    def __init__(self, c, mid, cardinality):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, 1, 1, groups=cardinality, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(x + self.bn3(self.conv3(y)))


class ResNeXtish(nn.Module):
    """Stem; ResNeXt blocks; a grouped 3x3 (`out_groups` groups, more output than input channels); pooled
    linear head."""

    def __init__(self, width=16, mid=32, out=24, cardinality=4, out_groups=2, blocks=1, in_channels=1, classes=10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*(ResNeXtBlock(width, mid, cardinality) for _ in range(blocks)))
        self.grouped, self.bng = nn.Conv2d(width, out, 3, 1, 1, groups=out_groups), nn.BatchNorm2d(out)
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(out, classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        x = torch.relu(self.bng(self.grouped(x)))
        return self.head(torch.flatten(self.pool(x), 1))

    def silence_unevenly(self):
        """For the default sizes: dead channels, unevenly many per block, so that balancing adds some back.
        Returns the channels each group keeps."""
        block = self.blocks[0]
        silence(self.stem, self.bn, [1, 2, 9])              # the stream: 2 | 1 dead in grouped's 2 blocks
        silence(block.conv3, block.bn3, [1, 2, 9])
        silence(block.conv1, block.bn1, [0, 3, 9, 17, 25, 26], negative=True)  # 2 | 1 | 1 | 2 in conv2's blocks
        silence(block.conv2, block.bn2, [1, 8, 9, 16, 24], negative=True)      # 1 | 2 | 1 | 1
        silence(self.grouped, self.bng, [0, 13, 14, 20], negative=True)        # 1 | 3
        return {"stream": 14, "conv1": 28, "conv2": 28, "grouped": 22}


def export_image(net, path, dynamo=False, shape=(2, 3, 12, 12)):
    """Export an image model (input "image" with a dynamic batch, output "logits") with either exporter."""
    example = (torch.randn(*shape),)
    if dynamo:
        torch.onnx.export(net, example, str(path), dynamo=True, input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(net, example, str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}})
    return path

"""Neuron groups: every place one set of neurons lives in the graph.

A group starts at a *producer* (Gemm, MatMul, Conv or ConvTranspose with a constant weight)
whose output features are the neurons, runs through a *pass-through region* of ops that act
on each feature on its own, and ends at *consumers* (linear ops with constant weights) that
contract over the features. Producers whose features meet in a residual Add, a gating Mul, or
are joined by Concat and cut by Split share one index space: they form one coupled group.
Pruning a group applies one keep-mask to every member: producer columns and biases, per-feature
constants of the region, Split sizes, consumer rows.

Example: ``x -> Gemm(W1, b1, transB=1) -> h -> Relu -> r -> MatMul(W2) -> y`` gives one group
of ``W1.shape[0]`` neurons, tapped at ``r``; removing neuron j drops row j of W1, entry j of b1
and row j of W2. If ``r`` were also a graph output, or fed a LayerNorm, the group would be
listed as not prunable, with that reason. A Conv's channels reaching a Gemm through ``Flatten``
are rows in blocks of H*W per channel.
"""

import onnx  # noqa: F401  (tests reach onnx.helper through this module)

from ..graph.edits import SliceBounds, SplitSizes
from . import attention, heads, quantized, structural  # noqa: F401  (their handlers register themselves)
from .build import node_id
from .discover import find_groups
from .packed import split_packed_heads
from .linear import consumer_effect, consumer_weight
from .layout import OffsetUnionFind, Piece, Segment
from .model import Consumer, NeuronGroup, Placed, keep_of

__all__ = ["Consumer", "NeuronGroup", "OffsetUnionFind", "Piece", "Placed", "Segment", "SliceBounds", "SplitSizes",
           "consumer_effect", "consumer_weight", "find_groups", "keep_of", "node_id", "split_packed_heads"]

"""Ops that act on each element on its own: one table, and which walks follow each op.

A walk follows only the ops it was shown to handle, so the columns differ on purpose: a group's
pass-through region slices per-feature constants, and comparisons there would turn features into
booleans; the head walk follows the mask arithmetic of attention (Where, Equal, ...) but not every
activation; reading a shape back through broadcasting needs only shape-preserving ops. Widening a
column is a change of what gets pruned, not a refactoring.

  - "features": in a group's pass-through region (ops/passthrough.py); an op of several data inputs
    may also join two groups' tensors (a residual Add, a gating Mul), which ties their neurons;
  - "heads": head tensors pass through it unchanged (groups/heads.py);
  - "shapes": its output broadcasts its inputs, so a size-1 axis of all inputs stays 1 (dim_is_one).
"""

from __future__ import annotations

FEATURES, HEADS, SHAPES = "features", "heads", "shapes"
F, H, S = FEATURES, HEADS, SHAPES

# op: (data inputs: 1, or None for several, each maybe carrying data; the walks that follow it)
TABLE: dict[str, tuple[int | None, frozenset]] = {op: (arity, frozenset(walks)) for op, arity, walks in (
    # unary activations and maths
    ("Relu", 1, {F, H}), ("LeakyRelu", 1, {F, H}), ("Sigmoid", 1, {F, H}), ("Tanh", 1, {F, H}),
    ("Elu", 1, {F, H}), ("Selu", 1, {F}), ("Celu", 1, {F}), ("Softplus", 1, {F, H}), ("Softsign", 1, {F}),
    ("HardSigmoid", 1, {F, H}), ("HardSwish", 1, {F}), ("Gelu", 1, {F}), ("Mish", 1, {F}),
    ("ThresholdedRelu", 1, {F}), ("Erf", 1, {F, H}), ("Identity", 1, {F, H, S}), ("Abs", 1, {F, H, S}),
    ("Neg", 1, {F, H, S}), ("Exp", 1, {F, H, S}), ("Log", 1, {F, H, S}), ("Sqrt", 1, {F, H, S}),
    ("Reciprocal", 1, {F, H}), ("Floor", 1, {F}), ("Ceil", 1, {F}), ("Round", 1, {F}), ("Sign", 1, {F}),
    ("Sin", 1, {F, H}), ("Cos", 1, {F, H}), ("Cast", 1, {F, H, S}),
    ("Dropout", 1, {F, H}), ("Clip", 1, {F, H}),  # with scalar parameters
    # broadcasting arithmetic
    ("Add", None, {F, H, S}), ("Sub", None, {F, H, S}), ("Mul", None, {F, H, S}), ("Div", None, {F, H, S}),
    ("Pow", None, {F, H, S}), ("Max", None, {F, H, S}), ("Min", None, {F, H, S}), ("PRelu", None, {F}),
    ("Sum", None, {F}), ("Mean", None, {F}),
    # comparisons, logic and selection: attention masks
    ("Where", None, {H, S}), ("Equal", None, {H, S}), ("Less", None, {H, S}), ("Greater", None, {H, S}),
    ("LessOrEqual", None, {H, S}), ("GreaterOrEqual", None, {H, S}), ("And", None, {H, S}),
    ("Or", None, {H, S}), ("Xor", None, {S}), ("Not", 1, {H, S}), ("IsNaN", 1, {H}), ("IsInf", 1, {H}),
)}


def followed_by(walk: str) -> tuple[str, ...]:
    """The ops a walk follows, in table order."""
    return tuple(op for op, (_, walks) in TABLE.items() if walk in walks)


FEATURE_OPS = followed_by(FEATURES)
JOINS = tuple(op for op in FEATURE_OPS if TABLE[op][0] is None)  # may tie the neurons of two inputs
HEAD_OPS = followed_by(HEADS)
BROADCASTS = followed_by(SHAPES)

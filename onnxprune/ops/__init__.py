"""Per-op knowledge, one registry per role: pass-through ops (act on each feature on its own), linear
ops (produce or contract features with a constant weight), structural ops (carry features to their
outputs: Concat, Split, Reshape, ...) and head ops (carry attention heads); see ops/registry.py. The
elementwise ops every walk follows are one table (ops/elementwise.py)."""

from .base import (BlockSlice, ConstSlice, CountAttribute, CountEntry, Features, NotPrunable, PrivateTarget,
                   ShapeUpdate, Skip, SliceBounds, SplitSizes, constant_slice, domain_of)
from .linear import LINEAR, LinearSpec, linear, linear_spec
from .passthrough import (ELEMENTWISE, MIXING_REASONS, PASS_THROUGH, handler_for, per_feature_slice,
                          register)
from .registry import HEAD_WALK, STRUCTURAL, OpRegistry, head_op, structural
from . import quantized  # noqa: F401,E402  (its specs and handlers register themselves)

__all__ = ["BlockSlice", "ConstSlice", "CountAttribute", "CountEntry", "ELEMENTWISE", "Features", "HEAD_WALK",
           "LINEAR", "LinearSpec", "MIXING_REASONS", "NotPrunable", "OpRegistry", "PASS_THROUGH", "PrivateTarget",
           "STRUCTURAL", "ShapeUpdate", "Skip", "SliceBounds", "SplitSizes", "constant_slice", "domain_of",
           "handler_for", "head_op", "linear", "linear_spec", "per_feature_slice", "register", "structural"]

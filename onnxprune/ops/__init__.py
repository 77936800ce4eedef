"""Per-op knowledge, one registry per role: pass-through ops (act on each feature on its own)
and linear ops (produce or contract features with a constant weight)."""

from .base import (BlockSlice, ConstSlice, CountAttribute, CountEntry, Features, NotPrunable, PrivateTarget,
                   ShapeUpdate, Skip, SliceBounds, SplitSizes, constant_slice, domain_of)
from .linear import LINEAR, LinearSpec, linear, linear_spec
from .passthrough import (ELEMENTWISE, MIXING_REASONS, PASS_THROUGH, handler_for, per_feature_slice,
                          register)

__all__ = ["BlockSlice", "ConstSlice", "CountAttribute", "CountEntry", "ELEMENTWISE", "Features", "LINEAR",
           "LinearSpec", "MIXING_REASONS", "NotPrunable", "PASS_THROUGH", "PrivateTarget", "ShapeUpdate", "Skip",
           "SliceBounds", "SplitSizes", "constant_slice", "domain_of", "handler_for", "linear", "linear_spec",
           "per_feature_slice", "register"]

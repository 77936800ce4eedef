"""Handlers keyed by (domain, op_type), registered by decorator; registering an op twice is an error.

One registry per role. Pass-through ops (ops/passthrough.py) say how to slice their per-feature
constants; *structural* ops say how they carry a group's features to their outputs (Concat joins
layouts, Split cuts them, a Reshape may start attention heads: groups/structural.py); *head* ops
say how head tensors pass through them (groups/heads.py). Adding an op to a walk is one handler
registered in one file.

A structural handler is called as ``handler(walk, node, inputs)`` for a node some of whose inputs
carry features (``inputs``: (position, tensor) of those, ``walk``: groups.state.Walk); it records what
the node does on the walk and returns True, returns False when the node is not the form it knows
(the walk then treats it as an op it does not know), or raises NotPrunable to block the groups it
reads. A head handler is called the same way for a node reading head tensors.
"""

from __future__ import annotations

from typing import Callable

from .base import domain_of


class OpRegistry(dict):
    """Handlers by (domain, op_type), the default domain spelled ""."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def register(self, *op_types: str, domain: str = ""):
        """Decorator: register the function for each op type of the domain."""

        def wrap(fn: Callable) -> Callable:
            for op in op_types:
                if (domain, op) in self:
                    raise ValueError(f"a {self.role} handler for {domain or 'ai.onnx'}.{op} is already registered")
            for op in op_types:
                self[(domain, op)] = fn
            return fn

        return wrap

    def unregister(self, *op_types: str, domain: str = "") -> None:
        for op in op_types:
            del self[(domain, op)]

    def handler(self, node) -> Callable | None:
        return self.get((domain_of(node), node.op_type))


STRUCTURAL = OpRegistry("structural")
HEAD_WALK = OpRegistry("head-walk")


def structural(*op_types: str, domain: str = "", produces: bool = False):
    """Register how an op carries features (see the module docstring). With `produces`, the op makes a
    neuron space of its own (a fused attention's packed projection) and is visited even when none of
    its inputs carries features."""

    def wrap(fn: Callable) -> Callable:
        fn.produces = produces
        return STRUCTURAL.register(*op_types, domain=domain)(fn)

    return wrap


def head_op(*op_types: str, domain: str = ""):
    """Register how head tensors pass through an op (see the module docstring)."""
    return HEAD_WALK.register(*op_types, domain=domain)

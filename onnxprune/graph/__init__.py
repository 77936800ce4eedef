"""The graph, read: an index of producers, readers, constants and shapes (index), values a static
shape fixes (fold), and the edit records a rewrite applies (edits)."""

from .index import ConstantView, GraphIndex, constant_node_value, names_read, subgraphs

__all__ = ["ConstantView", "GraphIndex", "constant_node_value", "names_read", "subgraphs"]

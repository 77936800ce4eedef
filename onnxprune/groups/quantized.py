"""DynamicQuantizeLinear: features quantised at run time on their way into integer linear ops.

onnxruntime's dynamic quantisation writes ``x -> DynamicQuantizeLinear -> (x_q, scale, zero point)
-> MatMulInteger(x_q, W_q, zero point, ...)``. The integers x_q carry x's features, but in units set
by the whole tensor's range at run time; the consumers behind it are read at x itself (real values,
as the statistics need them), through x_q, as a Flatten's consumers are read through its output.
Removing features changes that range only through the features removed (never for features that are
exactly zero, which the range always includes).
"""

from __future__ import annotations

from ..ops import NotPrunable, linear_spec
from ..ops.registry import structural
from .state import Walk


@structural("DynamicQuantizeLinear")
def _dynamic_quantize(walk: Walk, i: int, inputs: list) -> bool:
    index, node = walk.index, walk.index.nodes[i]
    tensor = node.input[0]
    info = walk.info[tensor]
    out = node.output[0]
    label = index.node_name(i)
    if out in index.graph_outputs or out in index.subgraph_names:
        raise NotPrunable(f"tensor {out!r} (after {label}) is a graph output or used in a subgraph", "graph-output",
                          label, out)
    readers = index.users(out)
    for reader, position in readers:
        spec = linear_spec(index.nodes[reader])
        if spec is None or spec.weight_input == position:
            raise NotPrunable(f"{label}'s quantised output reaches {index.node_name(reader)} "
                              f"({index.nodes[reader].op_type}), not an integer linear op's data input", "quantised",
                              index.node_name(reader), out)
    for reader, position in readers:
        walk.consume(reader, position, tensor, 1, out, info)
    walk.region.append((i, info.layout))
    walk.vias.append((out, info.layout))
    return True

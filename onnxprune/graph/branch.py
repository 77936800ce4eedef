"""The edit record of a removed residual branch: its Add becomes a pass-through of the skip, plus the
branch's mean output as a constant, and every node that only fed the branch goes.

Applied after every other record (rounds 1-3 of graph.edits, and compensation's inserted nodes): the
records before it find their nodes by index, and this one deletes nodes. It finds its Add by output
name (insertions moved it) and deletes exactly the nodes that nothing reads any more once the Add no
longer reads the branch, walking back from the branch's output: the branch's own nodes, and what other
records inserted into it (a bias Add, a private Concat). A node that something else still reads stays.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .edits import Edit, ModelEdit, add_initializer, fresh
from .index import names_read, subgraphs


@dataclass(frozen=True, eq=False)
class RemovedBranch(Edit):
    """The residual Add writing `stream` reads the branch at input `position`: the branch goes.

    `mean` (per feature of the stream, before pruning; None or all zero: nothing to fold) becomes a
    constant shaped to broadcast on the feature axis `axis` (negative) of a rank-`rank` stream; the
    keep-mask the record is applied with is the stream's (its neurons may be pruned too)."""

    stream: str
    position: int
    branch: str
    axis: int = -1
    mean: np.ndarray | None = None
    dtype: int = onnx.TensorProto.FLOAT

    late = True

    def apply(self, edit: ModelEdit, keep: np.ndarray) -> set[str]:
        nodes = edit.model.graph.node
        at = next(k for k, n in enumerate(nodes) if self.stream in n.output)
        add = nodes[at]
        skip = add.input[1 - self.position]
        mean = None if self.mean is None else np.asarray(self.mean, np.float64)[np.asarray(keep, bool)]
        if mean is not None and np.any(mean != 0):
            shape = (len(mean),) + (1,) * (-self.axis - 1)
            name = fresh(f"{self.stream}_branch_mean", edit.taken)
            value = mean.reshape(shape).astype(onnx.helper.tensor_dtype_to_np_dtype(self.dtype))
            add_initializer(edit.model, numpy_helper.from_array(value, name))
            add.input[self.position] = name
        else:
            _pass_through(edit.model, at, skip)
        edit.touched.add(self.stream)
        return drop_dead(edit.model, {self.branch}, edit.touched)


def _pass_through(model: onnx.ModelProto, at: int, skip: str) -> None:
    """The Add at node `at` gone: its readers read `skip` instead (an Identity where the output is a graph
    output or read in a subgraph, whose name must stay)."""
    node = model.graph.node[at]
    out = node.output[0]
    if out in {o.name for o in model.graph.output} or out in names_read_in_subgraphs(model.graph):
        node.op_type = "Identity"
        del node.input[:]
        node.input.append(skip)
        del node.attribute[:]
        return
    for other in model.graph.node:
        for k, name in enumerate(other.input):
            if name == out:
                other.input[k] = skip
    del model.graph.node[at]


def names_read_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    out = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in subgraphs(attr):
                out |= names_read(sub)
    return out


def drop_dead(model: onnx.ModelProto, seeds: set[str], touched: set[str]) -> set[str]:
    """Delete the nodes that, walking back from `seeds`, write only tensors nothing reads (graph outputs
    and subgraphs read theirs); return the initializers the deleted nodes read (they may now be unused;
    a graph input they read stays an input). The deleted tensors join `touched` (their shape
    information goes)."""
    graph = model.graph
    reads = Counter(x for n in graph.node for x in n.input if x)
    kept_anyway = {o.name for o in graph.output} | names_read_in_subgraphs(graph)
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    dead, stack, read = set(), list(seeds), set()
    while stack:
        k = producer.get(stack.pop())
        if k is None or k in dead:
            continue
        outputs = [o for o in graph.node[k].output if o]
        if any(reads[o] or o in kept_anyway for o in outputs):
            continue
        dead.add(k)
        touched.update(outputs)
        for x in graph.node[k].input:
            if x:
                reads[x] -= 1
                read.add(x)
                stack.append(x)
    for k in sorted(dead, reverse=True):
        del graph.node[k]
    return read & {t.name for t in graph.initializer}

"""Small hand-made graphs: patterns that must be pruned, and traps that must be left alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
IN, HIDDEN, OUT = 4, 6, 3
DEAD = (0, 1)  # neurons of the first layer forced dead by a large negative bias


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def weights(name, n_in, n_out):
    return const(name, RNG.standard_normal((n_in, n_out)) / np.sqrt(n_in))


def first_bias(name="b1", n=HIDDEN):
    b = 0.1 * RNG.standard_normal(n)
    b[list(DEAD)] = -1e4
    return const(name, b)


def model(nodes, inits, outputs=(("y", OUT),), inputs=(("x", IN),), opset=17, value_info=(), domains=()):
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name, width in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name, width in outputs],
        inits, value_info=list(value_info))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                          + [helper.make_opsetid(d, 1) for d in domains])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def layer1(out="h"):
    """x -> Gemm(W1, b1) -> h, with neurons DEAD pushed far negative."""
    return ([helper.make_node("Gemm", ["x", "W1", "b1"], [out], name="gemm1")],
            [weights("W1", IN, HIDDEN), first_bias()])


def layer2(inp="r", n_in=HIDDEN):
    return ([helper.make_node("Gemm", [inp, "W2", "b2"], ["y"], name="gemm2")],
            [weights("W2", n_in, OUT), const("b2", RNG.standard_normal(OUT))])


def plain():
    n1, i1 = layer1()
    n2, i2 = layer2()
    return model(n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu")] + n2, i1 + i2)


# ---- traps: the first group must be skipped, the outputs left bit-identical --------------------

def trap_graph_output():
    m = plain()
    m.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", HIDDEN]))
    return m


def trap_residual_from_input():
    """A residual Add of the group with a graph input: the input's features cannot be cut."""
    n1, i1 = layer1()
    n2, i2 = layer2("sum")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Add", ["r", "skip"], ["sum"], name="residual")] + n2
    return model(nodes, i1 + i2, inputs=(("x", IN), ("skip", HIDDEN)))


def trap_flatten():
    n1, i1 = layer1()
    n2, i2 = layer2("f")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1)] + n2
    return model(nodes, i1 + i2)


def trap_reshape():
    """A Reshape that cuts the features into rows of half the width (and one that joins them back)."""
    n1, i1 = layer1()
    n2, i2 = layer2("f")
    half = numpy_helper.from_array(np.array([-1, HIDDEN // 2], dtype=np.int64), "half")
    whole = numpy_helper.from_array(np.array([-1, HIDDEN], dtype=np.int64), "whole")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Reshape", ["r", "half"], ["q"], name="reshape"),
                  helper.make_node("Reshape", ["q", "whole"], ["f"], name="reshape_back")] + n2
    return model(nodes, i1 + i2 + [half, whole])


def trap_transpose():
    """A Transpose that moves the features off the last axis (and one that moves them back)."""
    n1, i1 = layer1()
    n2, i2 = layer2("f")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Transpose", ["r"], ["rt"], name="transpose", perm=[1, 0]),
                  helper.make_node("Transpose", ["rt"], ["f"], name="transpose_back", perm=[1, 0])] + n2
    return model(nodes, i1 + i2)


def trap_layernorm():
    n1, i1 = layer1()
    n2, i2 = layer2()
    nodes = n1 + [helper.make_node("LayerNormalization", ["h", "ln_s", "ln_b"], ["n"], name="ln", axis=-1),
                  helper.make_node("Relu", ["n"], ["r"], name="relu")] + n2
    return model(nodes, i1 + i2 + [const("ln_s", np.ones(HIDDEN)), const("ln_b", np.zeros(HIDDEN))])


def trap_shared_weight():
    """One square weight used by two layers: pruning either would untie them."""
    n1, i1 = layer1()
    n2, i2 = layer2("r2")
    nodes = n1 + [
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "Wsq"], ["a"], name="mm_a"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("MatMul", ["ra", "Wsq"], ["b"], name="mm_b"),
        helper.make_node("Relu", ["b"], ["r2"], name="relu_b"),
    ] + n2
    sq = RNG.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)
    sq[:, 2] = 0  # a dead neuron in both uses
    return model(nodes, i1 + i2 + [const("Wsq", sq)])


def trap_softmax():
    n1, i1 = layer1()
    n2, i2 = layer2()
    nodes = n1 + [helper.make_node("Softmax", ["h"], ["r"], name="softmax", axis=-1)] + n2
    return model(nodes, i1 + i2)


def trap_concat():
    """Concat along the batch axis: the rows of two samples, not more features."""
    n1, i1 = layer1()
    n2, i2 = layer2("c")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Concat", ["r", "r"], ["c"], name="concat", axis=0)] + n2
    return model(nodes, i1 + i2, outputs=(("y", OUT),))


def trap_subgraph():
    """`r` is read inside an If branch (captured from the outer scope)."""
    n1, i1 = layer1()
    n2, i2 = layer2()
    then_branch = helper.make_graph([helper.make_node("Identity", ["r"], ["t_out"])], "then", [],
                                    [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", HIDDEN])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["r"], ["e_out"])], "else", [],
                                    [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", HIDDEN])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_branch,
                                   else_branch=else_branch)] + n2
    return model(nodes, i1 + i2 + [cond], outputs=(("y", OUT), ("branch", HIDDEN)))


TRAPS = {
    "graph output": (trap_graph_output, "graph output"),
    "residual from input": (trap_residual_from_input, "outside"),
    "flatten": (trap_flatten, "Flatten"),
    "reshape": (trap_reshape, "reshape"),
    "transpose": (trap_transpose, "Transpose"),
    "layernorm": (trap_layernorm, "LayerNormalization"),
    "shared weight": (trap_shared_weight, "shared"),
    "softmax": (trap_softmax, "Softmax"),
    "concat": (trap_concat, "Concat"),
    "subgraph": (trap_subgraph, "subgraph"),
}


# ---- patterns that must be pruned ---------------------------------------------------------------

def constant_node_weights():
    """Weights in Constant nodes instead of initializers."""
    n1, i1 = layer1()
    n2, i2 = layer2()
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in i1 + i2]
    return model(consts + n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu")] + n2, [])


def swish_dag():
    """h * Sigmoid(h): one tensor feeding two nodes that join again, then a per-feature scale."""
    n1, i1 = layer1()
    n2, i2 = layer2()
    nodes = n1 + [helper.make_node("Sigmoid", ["h"], ["s"], name="sigmoid"),
                  helper.make_node("Mul", ["h", "s"], ["sw"], name="swish"),
                  helper.make_node("Mul", ["sw", "scale"], ["r"], name="scale")] + n2
    return model(nodes, i1 + i2 + [const("scale", 1 + RNG.random(HIDDEN))])


def batchnorm_mlp():
    n1, i1 = layer1()
    n2, i2 = layer2()
    bn = [const("bn_s", 1 + RNG.random(HIDDEN)), const("bn_b", RNG.standard_normal(HIDDEN)),
          const("bn_m", RNG.standard_normal(HIDDEN)), const("bn_v", 1 + RNG.random(HIDDEN))]
    # Dead neurons after BN would not be zero: put the Relu first, then BN, then Relu again.
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r0"], name="relu0"),
                  helper.make_node("BatchNormalization", ["r0", "bn_s", "bn_b", "bn_m", "bn_v"], ["n"], name="bn"),
                  helper.make_node("Mul", ["n", "zero_dead"], ["r"], name="mask")] + n2
    keep = np.ones(HIDDEN)
    keep[list(DEAD)] = 0
    return model(nodes, i1 + i2 + bn + [const("zero_dead", keep)],
                 value_info=[helper.make_tensor_value_info("r0", TensorProto.FLOAT, ["N", HIDDEN])])


def shared_bias():
    """Two layers read the same bias tensor: it must be copied, not sliced in place."""
    n1, i1 = layer1()
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Gemm", ["r", "W2", "b1"], ["y"], name="gemm2")]
    b = 0.1 * RNG.standard_normal(HIDDEN)
    b[list(DEAD)] = -1e4
    return model(nodes, [i1[0], const("b1", b), weights("W2", HIDDEN, HIDDEN)], outputs=(("y", HIDDEN),))


def clip_prelu():
    n1, i1 = layer1()
    n2, i2 = layer2()
    nodes = n1 + [helper.make_node("Clip", ["h", "lo", "hi"], ["c"], name="clip"),
                  helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
                  helper.make_node("Relu", ["p"], ["r"], name="relu")] + n2
    return model(nodes, i1 + i2 + [const("lo", -5.0), const("hi", 5.0), const("slope", RNG.random(HIDDEN))])


def residual_add():
    """Add(relu(gemm_mid(r)), r): gemm1 and gemm_mid share one index space, dead at the same neurons."""
    n1, i1 = layer1()
    n2, i2 = layer2("sum")
    nodes = n1 + [
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "Wm", "bm"], ["m"], name="gemm_mid"),
        helper.make_node("Relu", ["m"], ["rm"], name="relu_mid"),
        helper.make_node("Add", ["rm", "r"], ["sum"], name="residual"),
    ] + n2
    return model(nodes, i1 + i2 + [weights("Wm", HIDDEN, HIDDEN), first_bias("bm")])


def concat_with_input():
    """Concat([relu(gemm1(x)), x]) -> gemm2: the group's rows are the first HIDDEN of gemm2's."""
    n1, i1 = layer1()
    n2, i2 = layer2("c", n_in=HIDDEN + IN)
    nodes = n1 + [helper.make_node("Relu", ["h"], ["r"], name="relu"),
                  helper.make_node("Concat", ["r", "x"], ["c"], name="concat", axis=1)] + n2
    return model(nodes, i1 + i2)


def rows_reshape():
    """Features kept whole while the rows are regrouped: [N, H] -> [N, 1, H] (target [-1, 1, H]), ReLU,
    then back to [N, H] with the width read from the tensor's own Shape (a Linear on flattened tokens)."""
    n1, i1 = layer1()
    n2, i2 = layer2("f")
    target = numpy_helper.from_array(np.array([-1, 1, HIDDEN], dtype=np.int64), "pairs")
    minus_one = numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")
    nodes = n1 + [helper.make_node("Reshape", ["h", "pairs"], ["p"], name="to_pairs"),
                  helper.make_node("Relu", ["p"], ["r"], name="relu"),
                  helper.make_node("Shape", ["r"], ["s"], name="shape"),
                  helper.make_node("Gather", ["s", "last"], ["w"], name="width", axis=0),
                  helper.make_node("Concat", ["minus_one", "w"], ["back"], name="back", axis=0),
                  helper.make_node("Reshape", ["r", "back"], ["f"], name="from_pairs")] + n2
    last = numpy_helper.from_array(np.array([-1], dtype=np.int64), "last")
    return model(nodes, i1 + i2 + [target, minus_one, last])


def leading_transpose():
    """Tokens [N, 1, H] turned sequence-first ([1, N, H], features still last) between two layers."""
    n1, i1 = layer1()
    n2, i2 = layer2("f")
    expand = numpy_helper.from_array(np.array([-1, 1, HIDDEN], dtype=np.int64), "tokens")
    flat = numpy_helper.from_array(np.array([-1, HIDDEN], dtype=np.int64), "flat")
    nodes = n1 + [helper.make_node("Reshape", ["h", "tokens"], ["t"], name="to_tokens"),
                  helper.make_node("Transpose", ["t"], ["tt"], name="seq_first", perm=[1, 0, 2]),
                  helper.make_node("Relu", ["tt"], ["r"], name="relu"),
                  helper.make_node("Reshape", ["r", "flat"], ["f"], name="to_rows")] + n2
    return model(nodes, i1 + i2 + [expand, flat])


PATTERNS = {
    "leading transpose": leading_transpose,
    "rows reshape": rows_reshape,
    "residual add": residual_add,
    "concat with input": concat_with_input,
    "constant nodes": constant_node_weights,
    "swish dag": swish_dag,
    "batchnorm": batchnorm_mlp,
    "shared bias": shared_bias,
    "clip prelu": clip_prelu,
}

"""Invariant: removing exactly-dead neurons changes no output, and every written model is valid."""

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxprune
from conftest import make_mlp, random_inputs, run_model

# Which way of killing a neuron leaves it exactly zero after which activation.
KILLS = {"Relu": ("bias", "zero"), "Sigmoid": ("bias",), "LeakyRelu": ("zero",), "Tanh": ("zero",)}


@st.composite
def mlps(draw):
    widths = draw(st.lists(st.integers(2, 12), min_size=3, max_size=5))
    activation = draw(st.sampled_from(sorted(KILLS)))
    dead_by = draw(st.sampled_from(KILLS[activation]))
    dead = {}
    for layer, width in enumerate(widths[1:-1]):
        dead[layer] = draw(st.sets(st.integers(0, width - 1), max_size=width - 1))
    form = draw(st.sampled_from(["gemm", "matmul"]))
    trans_b = draw(st.booleans()) if form == "gemm" else False
    seed = draw(st.integers(0, 2**16))
    return make_mlp(widths, form=form, trans_b=trans_b, activation=activation, dead=dead,
                    dead_by=dead_by, seed=seed), dead


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mlps())
def test_removing_dead_neurons_changes_no_output(case, tmp_path):
    model, dead = case
    feeds = random_inputs(model, n=40)
    out = tmp_path / "pruned.onnx"
    result = onnxprune.prune(model, feeds, output=out, force=True, criterion="dead")
    onnx.checker.check_model(str(out), full_check=True)
    written = onnx.load(str(out))
    for before, after in zip(run_model(model, feeds), run_model(written, feeds)):
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
    for layer, neurons in dead.items():
        g = result.report.groups[layer]
        assert g.neurons_after <= g.neurons_before - len(neurons)
        assert g.neurons_after >= 1

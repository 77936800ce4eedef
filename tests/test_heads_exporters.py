"""Head pruning on every attention test model (tests/attention_models.py): own code, transformers' BERT,
DistilBERT, ViT and Llama, onnxruntime's fused Attention/MultiHeadAttention, through TorchScript (dynamic
and static shapes) and dynamo. Silenced heads (zero Q/K/V weights and biases) are exactly dead: removing
them must leave every output unchanged, and the pruned model must pass the full checker. Where a pattern
is not followed yet, the heads must be skipped with a reason, never cut."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import attention_models as am
import onnxprune
from conftest import run_model

pytest.importorskip("torch")

DEAD = {0: [1], 1: [0, 2]}  # heads silenced per layer (GQA: key/value heads, with their query groups)
DEAD_KV = {0: [1]}
FAST = {"encoder_dynamic", "encoder_static", "sdpa_dynamic", "sdpa_static", "gqa_dynamic"}

PRUNED = {
    **{f"encoder_{e}": (lambda e=e: am.own_encoder_case(e, dead=DEAD), [(4, 3), (4, 2)]) for e in am.EXPORTERS},
    **{f"sdpa_{e}": (lambda e=e: am.own_encoder_case(e, sdpa=True, dead=DEAD), [(4, 3), (4, 2)])
       for e in am.EXPORTERS},
    "encoder_dynamo_additive": (lambda: am.own_encoder_case("dynamo", mask="additive", dead=DEAD), [(4, 3), (4, 2)]),
    "gqa_dynamo": (lambda: am.own_decoder_case("dynamo", dead=DEAD_KV), [(4, 2), (4, 4)]),
    "llama_dynamo": (lambda: am.transformers_case("llama", "dynamo", dead=DEAD_KV), [(4, 2), (4, 4)]),
    **{f"{k}_{e}": (lambda k=k, e=e: am.transformers_case(k, e, dead=DEAD), [(4, 3), (4, 2)])
       for k in ("bert", "distilbert") for e in ("static", "dynamo")},
    **{f"vit_{e}": (lambda e=e: am.transformers_case("vit", e, dead=DEAD), [(4, 3), (4, 2)]) for e in am.EXPORTERS},
    **{f"{s}_fused_{op}": (lambda s=s, op=op: am.fused_case(op, source=s, dead=DEAD), [(4, 3), (4, 2)])
       for s in ("encoder", "bert") for op in am.FUSED},
}
# not followed yet, skipped with the reason's kind: TorchScript's repeat_kv computes its Expand shape through
# ConstantOfShape/Where from Shape(k); transformers' TorchScript mask with dynamic shapes is expanded by a
# shape computed from the input's Shape (its size on the head axis is not known to be 1)
SKIPPED = {
    "gqa_dynamic": lambda: am.own_decoder_case("dynamic", dead=DEAD_KV),
    "gqa_static": lambda: am.own_decoder_case("static", dead=DEAD_KV),
    "bert_dynamic": lambda: am.transformers_case("bert", "dynamic", dead=DEAD),
    "distilbert_dynamic": lambda: am.transformers_case("distilbert", "dynamic", dead=DEAD),
}


def params(names):
    return [pytest.param(n, id=n, marks=() if n in FAST else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", params(PRUNED))
def test_silenced_heads_come_off_exactly(name):
    build, expected = PRUNED[name]
    case = build()
    heads = [g for g in onnxprune.inspect(case.model) if g.kind == "heads"]
    assert len(heads) == case.layout.layers and all(g.prunable for g in heads), [str(g.reason) for g in heads]
    assert all(g.head_dim == case.layout.head_dim for g in heads)
    feeds = case.feeds(16, 12, 0)
    result = onnxprune.prune(case.model, feeds, criterion="dead", structures=("heads",))
    kept = sorted((g.heads_before, g.heads_after) for g in result.report.groups if g.kind == "heads")
    assert kept == sorted(expected)
    onnx.checker.check_model(result.model, full_check=True)
    other = case.feeds(3, 12, 5) if case.batch else case.feeds(3, 7, 5)  # other samples, sizes where free
    for feed in (feeds, other):
        np.testing.assert_allclose(run_model(result.model, feed)[0], run_model(case.model, feed)[0], atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("name", params(SKIPPED))
def test_unfollowed_attention_is_skipped_with_reason(name):
    case = SKIPPED[name]()
    heads = [g for g in onnxprune.inspect(case.model) if g.kind == "heads"]
    assert heads and not any(g.prunable for g in heads)
    assert all(g.reason.kind in ("attention", "shape-read") and g.reason.node for g in heads)
    result = onnxprune.prune(case.model, case.feeds(8, 12, 0), criterion="dead")
    assert all(g.neurons_after == g.neurons_before for g in result.report.groups if g.kind == "heads")

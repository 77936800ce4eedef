"""Sensitivity-aware allocation: what each group's removals cost the outputs, in one currency.

A criterion scores a neuron within its layer. Ranked across layers, one global fraction then treats
a residual stream or a detection head like any mid-block: on a ResNet-50 it took a residual stream
from 512 to 88 channels while most inner branches kept every channel. Here every group is probed
once on calibration samples: its lowest-scored quarter removed (their means folded into the
consumers' biases), the model's outputs compared with the original's. The group's *gain* is that
damage over the error its consumers' outputs take by the removal's own estimate (the removed
neurons' var_j * |W_j|^2, the `absolute` criterion). A neuron's score is then its predicted damage,
gain x var_j * |W_j|^2, per unit of what it costs (parameters; MACs or both with --objective): comparable
across every group of the model, so allocation spends removals where they hurt least per saving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .compensate import Compensation
from .criteria import absolute, balance_blocks, keep_required
from .data import Dataset
from .reference import as_array
from .rewrite import apply_masks
from .session import RuntimeOptions, make_session, run, serialized

PROBE_SHARE = 0.25     # of a group's neurons (its lowest-scored) removed by its probe
PROBE_SAMPLES = 256    # calibration samples a probe runs on
FLOOR = 1e-12


@dataclass
class Probe:
    """What probing needs: calibration samples (never the data that judges candidates) and how to run."""

    data: Dataset
    options: RuntimeOptions
    batch_size: int = 256


def output_damage(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """Mean over outputs of the squared change summed over an output's entries, over their total variance:
    unit-free, 1 when an output is replaced by its own mean."""
    out = []
    for b, a in zip(before, after):
        b, a = np.asarray(b, np.float64), np.asarray(a, np.float64)
        if b.shape != a.shape or b.dtype.kind not in "fc" or not b.size:
            continue
        b2, a2 = b.reshape(len(b), -1), a.reshape(len(a), -1)
        spread = float(b2.var(axis=0).sum())
        out.append(float(((a2 - b2) ** 2).sum(axis=1).mean()) / max(spread, FLOOR))
    return float(np.mean(out)) if out else 0.0


def probe_samples(data: Dataset, most: int = PROBE_SAMPLES) -> Dataset:
    """Up to `most` samples spread over the data (which may be sorted, by class for instance)."""
    n = data.n_samples
    if n <= most:
        return data
    multiple = data.fixed_batch or 1
    count = max(multiple, most // multiple * multiple)
    return data.subset(np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))[:count])


def outputs_of(session, data: Dataset, probe: Probe) -> list[np.ndarray]:
    """Every output of `session` on `data`, batch by batch, concatenated."""
    parts = [[as_array(v) for v in run(session, feeds, probe.options, purpose="probe")]
             for feeds in data.batches(probe.batch_size)]
    return [np.concatenate(list(p)) for p in zip(*parts)]


def reference_outputs(model, data: Dataset, probe: Probe) -> list[np.ndarray]:
    """The original model's outputs on the probe samples."""
    return outputs_of(make_session(model, probe.options), data, probe)


def damage_of(model: onnx.ModelProto, reference: list[np.ndarray], data: Dataset, probe: Probe) -> float:
    """`model`'s output damage against the original's outputs `reference` on the probe samples `data`."""
    blob = serialized(model)
    return output_damage(reference, outputs_of(make_session(blob or model, probe.options), data, probe))


def gains(compensation: Compensation, probe: Probe, *, data: Dataset | None = None,
          reference: list[np.ndarray] | None = None) -> dict[str, float]:
    """Per prunable group, the output damage per unit of predicted consumer-output error (see above);
    `data` and `reference` (the probe samples and the original's outputs on them) when already at hand."""
    model, index, groups = compensation.model, compensation.index, compensation.groups
    data = probe_samples(probe.data) if data is None else data
    reference = reference_outputs(model, data, probe) if reference is None else reference
    fold = Compensation(model, index, compensation.all_groups, compensation.stats, mode="fold",
                        tap_stats=compensation.tap_stats)
    predicted = {g.id: absolute(compensation.evidence[g.id]) for g in groups}
    full = {g.id: np.ones(g.size, bool) for g in groups}
    out = {}
    for g in groups:
        masks = dict(full)
        masks[g.id] = _probe_mask(g, predicted[g.id])
        # a grouped Conv's channel blocks keep equal counts, as every candidate's masks do
        masks = keep_required(balance_blocks(masks, [g], {g.id: predicted[g.id]}), [g], {g.id: predicted[g.id]})
        removed = ~masks[g.id]
        expected = float(predicted[g.id][removed].sum())
        if not removed.any():
            continue
        pruned = apply_masks(model, compensation.all_groups, masks, updates=fold.updates(masks), index=index,
                             check_shapes=False)
        damage = damage_of(pruned, reference, data, probe)
        if expected > FLOOR:
            out[g.id] = damage / expected
        elif damage > FLOOR:
            out[g.id] = np.inf  # removing "nothing" hurt: never remove first
    finite = [v for v in out.values() if np.isfinite(v)]
    typical = float(np.median(finite)) if finite else 1.0
    return {g.id: out.get(g.id, typical) for g in groups}


def _probe_mask(group, predicted: np.ndarray) -> np.ndarray:
    """The group's lowest-scored PROBE_SHARE of neurons (whole units for heads) removed."""
    unit = max(1, group.unit)
    per_unit = predicted.reshape(-1, unit).sum(axis=1)
    count = max(1, int(round(PROBE_SHARE * len(per_unit))))
    if count >= len(per_unit):
        count = len(per_unit) - 1
    keep = np.ones(len(per_unit), bool)
    keep[np.argsort(per_unit, kind="stable")[:count]] = False
    return np.repeat(keep, unit)


def node_parameters(model: onnx.ModelProto) -> dict[int, int]:
    """Per node index, the elements of its constant inputs (initializers): what removing its rows saves."""
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer}
    return {i: sum(sizes.get(name, 0) for name in node.input) for i, node in enumerate(model.graph.node)}


def sensitivity_scores(compensation: Compensation, probe: Probe, costs: dict[int, int], *,
                       data: Dataset | None = None, reference: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per group, each neuron's predicted output damage per unit of cost (node parameters or MACs)."""
    g_of = gains(compensation, probe, data=data, reference=reference)
    out = {}
    for g in compensation.groups:
        cost = np.maximum(g.neuron_costs(costs), 1.0)
        out[g.id] = g_of[g.id] * absolute(compensation.evidence[g.id]) / cost
    return out

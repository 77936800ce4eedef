"""How the consumers of pruned groups make up for removed neurons: none, bias folding or refit.

Every decision here is taken on the calibration data only (statistics, Gram matrices, the
sequential refit's passes), so the held-out data that judges candidates stays untouched.
"""

from __future__ import annotations

import numpy as np
import onnx

from .criteria import GroupEvidence
from .data import Dataset
from .graph import GraphIndex
from .groups import NeuronGroup, consumer_effect
from .refit import DEFAULT_RIDGE, ConsumerUpdate, Gram, SequentialGram, consumer_update
from .rewrite import apply_masks
from .runtime import tapped_model
from .session import RuntimeOptions, make_session, run
from .stats import ActivationStats

COMPENSATIONS = ("none", "fold", "refit")


class Compensation:
    """Per consumer of every prunable group: its weight effect, and its update for given keep-masks.

    `mode` is "none" (the seed exactly), "fold" (removed neurons' means into the next bias) or
    "refit" (least squares, kept per consumer only where it beats folding out of sample on the
    calibration folds). `sequential` refits consumers in graph order on the pruned model's own
    activations, one calibration pass per refit layer (needs `calibration_data`).
    """

    def __init__(self, model: onnx.ModelProto, index: GraphIndex, groups: list[NeuronGroup],
                 stats: dict[str, ActivationStats], *, mode: str = "refit",
                 calibration_grams: dict[str, Gram] | None = None, fold_grams: dict[str, Gram] | None = None,
                 calibration_data: Dataset | None = None, mask: str | None = None, batch_size: int = 256,
                 options: RuntimeOptions | None = None, ridge: float = DEFAULT_RIDGE):
        if mode not in COMPENSATIONS:
            raise ValueError(f"unknown compensation {mode!r}")
        self.model, self.index, self.mode = model, index, mode
        self.all_groups = groups
        self.groups = [g for g in groups if g.prunable and g.id in stats]
        self.stats = stats
        self.cal_grams, self.fold_grams = calibration_grams or {}, fold_grams or {}
        self.calibration_data, self.mask, self.batch_size = calibration_data, mask, batch_size
        self.options, self.ridge = options or RuntimeOptions(), ridge
        effects = {g.id: [consumer_effect(index, g.consumer_info[c], g.size) for c in g.consumer_nodes]
                   for g in self.groups}
        self.weights = {name: [e[0] for e in pairs] for name, pairs in effects.items()}
        self.evidence = {g.id: GroupEvidence(g, stats[g.id], self.weights[g.id],
                                               [e[1] for e in effects[g.id]]) for g in self.groups}
        self._original_taps = None

    @property
    def can_refit_sequentially(self) -> bool:
        return self.mode == "refit" and self.calibration_data is not None and any(
            info.refittable for g in self.groups for info in g.consumer_info.values())

    def updates(self, masks: dict[str, np.ndarray], sequential: bool = False) -> dict[int, ConsumerUpdate]:
        """Each consumer's update for these keep-masks (independently, or sequentially refit)."""
        out = {}
        for g in self.groups:
            keep = masks[g.id]
            for node, weight in zip(g.consumer_nodes, self.weights[g.id]):
                # Conv consumers and Flatten-ed channels are folded: the refit is closed-form
                # for plain Gemm/MatMul consumers only.
                mode = self.mode
                if mode == "refit" and not g.consumer_info[node].refittable:
                    mode = "fold"
                out[node] = consumer_update(weight, keep, self.stats[g.id].mean, mode=mode,
                                            calibration=self.cal_grams.get(g.id), fold=self.fold_grams.get(g.id),
                                            ridge=self.ridge)
        if sequential and self.can_refit_sequentially:
            self._refit_sequentially(masks, out)
        return out

    def _refit_sequentially(self, masks: dict[str, np.ndarray], updates: dict[int, ConsumerUpdate]) -> None:
        """Refit layer by layer on the pruned model's own activations, in graph order.

        The independent refit maps the *original* activations of the kept neurons to the original
        outputs; once earlier layers are pruned the consumers see other activations. Here each
        consumer that chose the refit is solved, in turn, from the activations the model pruned so
        far gives it to the original model's outputs, with both models run on the same calibration
        batches: one pass per refit layer.
        """
        if self._original_taps is None:
            taps = sorted({g.tap for g in self.groups})
            self._original_taps = make_session(tapped_model(self.model, taps, self.index), self.options)
        original = self._original_taps
        for g in sorted(self.groups, key=lambda g: g.producer_node):
            keep = masks[g.id]
            refit = [c for c in g.consumer_nodes if updates[c].method == "refit"]
            if keep.all() or not refit:
                continue
            current = apply_masks(self.model, self.all_groups, masks, updates=updates, index=self.index,
                                  check_shapes=False)
            # pruning changes the tap's width, not its dtype: the original index can type it
            pruned = make_session(tapped_model(current, [g.tap], self.index), self.options)
            k = int(keep.sum())
            normal = SequentialGram(k, g.size)
            for feeds in self.calibration_data.batches(self.batch_size):
                x = np.asarray(run(original, feeds, self.options, [g.tap], purpose="refit")[0])
                x_tilde = np.asarray(run(pruned, feeds, self.options, [g.tap], purpose="refit")[0])
                rows = None
                if self.mask is not None:
                    positions = np.asarray(feeds[self.mask]) != 0
                    rows = positions.reshape(-1) if positions.shape == x.shape[:-1] else None
                x, x_tilde = x.reshape(-1, g.size), x_tilde.reshape(-1, k)
                if rows is not None:
                    x, x_tilde = x[rows], x_tilde[rows]
                normal.update(x_tilde, x)
            for node, weight in zip(g.consumer_nodes, self.weights[g.id]):
                if node in refit:
                    theta = normal.solve(weight, self.ridge)
                    updates[node] = ConsumerUpdate(theta[:-1], theta[-1], "refit")

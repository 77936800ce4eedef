"""Compensating for removed neurons in the consumers: bias folding and least-squares refit.

Both are closed-form in the Gram matrix G = [X 1]^T [X 1] of a group's tap activations X
(float64, accumulated over batches: memory N^2, independent of the number of samples).
A consumer computes Y = X W + b. After removing neurons, with kept set K:

- fold:  Y ~ X_K W_K + (b + sum_{j removed} mean_j W_j): exact when removed neurons are constant;
- refit: [W_K'; b'] = argmin |[X_K 1] theta - X W - b|^2 + ridge, i.e. theta = (G_SS + lambda I')^-1 G_S: [W; 0]
         with S = K + the bias column (never regularised), so the bias row gives the change b' - b.

The error of either on other data is tr(D^T H D) / n with D the change of the full
[W; b] and H that data's Gram matrix, so choosing per consumer needs no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RIDGE = 1e-3


class Gram:
    """Streaming, mergeable [X 1]^T [X 1] over the rows of activations [..., N]."""

    def __init__(self, n_features: int):
        self.matrix = np.zeros((n_features + 1, n_features + 1))
        self.count = 0

    @property
    def n_features(self) -> int:
        return len(self.matrix) - 1

    def update(self, activations: np.ndarray, mask: np.ndarray | None = None) -> "Gram":
        """Add a batch. The product runs in the batch's own precision (float32: twice as fast as
        float64) and is accumulated in float64 across batches."""
        x = np.asarray(activations).reshape(-1, self.n_features)
        if mask is not None:
            x = x[np.asarray(mask, bool).reshape(-1)]
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        n = self.n_features
        s = x.sum(axis=0, dtype=np.float64)
        self.matrix[:n, :n] += x.T @ x
        self.matrix[:n, n] += s
        self.matrix[n, :n] += s
        self.matrix[n, n] += len(x)
        self.count += len(x)
        return self

    def merge(self, other: "Gram") -> "Gram":
        out = Gram(self.n_features)
        out.matrix = self.matrix + other.matrix
        out.count = self.count + other.count
        return out

    def error(self, change: np.ndarray) -> float:
        """Mean squared output change tr(D^T G D) / n for a change D of [W; b]."""
        if not self.count:
            return 0.0
        return float(np.sum((self.matrix @ change) * change) / self.count)


@dataclass
class ConsumerUpdate:
    """New weight rows for the kept neurons ([kept, outputs], None: unchanged) and a bias change."""

    weight: np.ndarray | None
    bias_delta: np.ndarray | None
    method: str = "fold"
    error_fold: float | None = None
    error_refit: float | None = None


def fold_change(weight: np.ndarray, keep: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The change of [W; b] that bias folding makes: removed rows zeroed, their mean effect into b."""
    removed = ~keep
    change = np.zeros((len(weight) + 1, weight.shape[1]))
    change[:-1][removed] = -weight[removed]
    change[-1] = mean[removed] @ weight[removed]
    return change


def refit_theta(gram: Gram, keep: np.ndarray, weight: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Least-squares [W_K'; delta b] reproducing X W from the kept neurons (see module docstring)."""
    n = gram.n_features
    s = np.append(np.flatnonzero(keep), n)
    g = gram.matrix
    g_ss = g[np.ix_(s, s)]
    rhs = g[s, :n] @ weight
    diag = np.diag(g_ss)[:-1]
    lam = ridge * (diag.mean() if diag.size and diag.mean() > 0 else 1.0)
    reg = np.zeros(len(s))
    reg[:-1] = lam
    try:
        return np.linalg.solve(g_ss + np.diag(reg), rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(g_ss + np.diag(reg), rhs, rcond=None)[0]


def consumer_update(weight: np.ndarray, keep: np.ndarray, mean: np.ndarray, *, mode: str,
                    calibration: Gram | None = None, heldout: Gram | None = None,
                    ridge: float = DEFAULT_RIDGE) -> ConsumerUpdate:
    """How one consumer compensates for its removed inputs: mode 'none', 'fold' or 'refit'.

    With 'refit', the refit is kept only where it beats folding on the held-out Gram
    matrix (or on the calibration one when there is no held-out data).
    """
    if mode == "none" or keep.all():
        return ConsumerUpdate(None, None, "none")
    fold = fold_change(weight, keep, mean)
    if mode == "fold" or calibration is None:
        return ConsumerUpdate(None, fold[-1], "fold")
    judge = heldout if heldout is not None and heldout.count else calibration
    theta = refit_theta(calibration, keep, weight, ridge)
    refit = np.zeros_like(fold)
    refit[:-1][keep] = theta[:-1] - weight[keep]
    refit[:-1][~keep] = -weight[~keep]
    refit[-1] = theta[-1]
    e_fold, e_refit = judge.error(fold), judge.error(refit)
    if e_refit < e_fold:
        return ConsumerUpdate(theta[:-1], theta[-1], "refit", e_fold, e_refit)
    return ConsumerUpdate(None, fold[-1], "fold", e_fold, e_refit)

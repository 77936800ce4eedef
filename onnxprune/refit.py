"""Compensating for removed neurons in the consumers: bias folding and least-squares refit.

Both are closed-form in the Gram matrix G = [X 1]^T [X 1] of a group's tap activations X
(float64, accumulated over batches: memory N^2, independent of the number of samples).
A consumer computes Y = X W + b. After removing neurons, with kept set K:

- fold:  Y ~ X_K W_K + (b + sum_{j removed} mean_j W_j): exact when removed neurons are constant;
- refit: [W_K'; b'] = argmin |[X_K 1] theta - X W - b|^2 + ridge, i.e. theta = (G_SS + lambda I')^-1 G_S: [W; 0]
         with S = K + the bias column (never regularised), so the bias row gives the change b' - b.

Whether a consumer keeps its refit or falls back to folding is decided on the calibration data
alone, by two-fold cross-fitting: the Gram matrix of one fold of the calibration rows is kept
besides the whole one, so each fold's refit can be judged on the other fold. The error of a
change D of the full [W; b] on data with Gram matrix H is tr(D^T H D) / n, so the decision costs
no extra pass, and the held-out data stays untouched by every decision.

The sequential refit (`SequentialGram`) solves the same ridge problem from the activations X~
of a partly pruned model to the original outputs: theta = (X~'X~ + lambda I')^-1 X~'[X 1][W; 0].
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

    def minus(self, part: "Gram") -> "Gram":
        """The Gram matrix of the rows not in `part` (a Gram of a subset of this one's rows)."""
        out = Gram(self.n_features)
        out.matrix = self.matrix - part.matrix
        out.count = self.count - part.count
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


def ridge_solve(g_ss: np.ndarray, rhs: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Solve (G + lambda I') theta = rhs, where the last row/column of G is the bias (never regularised)
    and lambda is `ridge` times the mean diagonal of the feature block (scale-free)."""
    diag = np.diag(g_ss)[:-1]
    lam = ridge * (diag.mean() if diag.size and diag.mean() > 0 else 1.0)
    reg = np.append(np.full(len(g_ss) - 1, lam), 0.0)
    try:
        return np.linalg.solve(g_ss + np.diag(reg), rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(g_ss + np.diag(reg), rhs, rcond=None)[0]


def refit_theta(gram: Gram, keep: np.ndarray, weight: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Least-squares [W_K'; delta b] reproducing X W from the kept neurons (see module docstring)."""
    n = gram.n_features
    s = np.append(np.flatnonzero(keep), n)
    g = gram.matrix
    return ridge_solve(g[np.ix_(s, s)], g[s, :n] @ weight, ridge)


class SequentialGram:
    """Streaming [X~ 1]'[X~ 1] and [X~ 1]'[X 1]: the pruned model's kept activations X~ against the
    original's X, over the same rows (the sequential refit's normal equations)."""

    def __init__(self, kept: int, n_features: int):
        self.left = np.zeros((kept + 1, kept + 1))
        self.cross = np.zeros((kept + 1, n_features + 1))
        self.count = 0

    def update(self, pruned: np.ndarray, original: np.ndarray) -> "SequentialGram":
        xt = np.c_[pruned.astype(np.float64), np.ones(len(pruned))]
        xa = np.c_[original.astype(np.float64), np.ones(len(original))]
        self.left += xt.T @ xt
        self.cross += xt.T @ xa
        self.count += len(pruned)
        return self

    def solve(self, weight: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
        """[W_K'; b' - b] mapping the pruned activations to the original outputs X W (+ b)."""
        rhs = self.cross @ np.vstack([weight, np.zeros((1, weight.shape[1]))])
        return ridge_solve(self.left, rhs, ridge)


def refit_change(weight: np.ndarray, keep: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The change of [W; b] that a refit theta = [W_K'; delta b] makes."""
    change = np.zeros((len(weight) + 1, weight.shape[1]))
    change[:-1][keep] = theta[:-1] - weight[keep]
    change[:-1][~keep] = -weight[~keep]
    change[-1] = theta[-1]
    return change


def consumer_update(weight: np.ndarray, keep: np.ndarray, mean: np.ndarray, *, mode: str,
                    calibration: Gram | None = None, fold: Gram | None = None,
                    ridge: float = DEFAULT_RIDGE) -> ConsumerUpdate:
    """How one consumer compensates for its removed inputs: mode 'none', 'fold' or 'refit'.

    With 'refit', the refit is kept only where it beats folding out of sample, judged by
    two-fold cross-fitting on the calibration rows (`fold` is the Gram matrix of one fold of
    them): each fold's refit is scored on the other fold. Without a usable fold the refit is
    judged on the calibration data itself. The kept refit is solved on all calibration rows.
    """
    if mode == "none" or keep.all():
        return ConsumerUpdate(None, None, "none")
    folded = fold_change(weight, keep, mean)
    if mode == "fold" or calibration is None or not calibration.count:
        return ConsumerUpdate(None, folded[-1], "fold")
    theta = refit_theta(calibration, keep, weight, ridge)
    if fold is not None and 0 < fold.count < calibration.count:
        other = calibration.minus(fold)
        e_refit = (fold.error(refit_change(weight, keep, refit_theta(other, keep, weight, ridge))) * fold.count
                   + other.error(refit_change(weight, keep, refit_theta(fold, keep, weight, ridge))) * other.count
                   ) / calibration.count
    else:
        e_refit = calibration.error(refit_change(weight, keep, theta))
    e_fold = calibration.error(folded)
    if e_refit < e_fold:
        return ConsumerUpdate(theta[:-1], theta[-1], "refit", e_fold, e_refit)
    return ConsumerUpdate(None, folded[-1], "fold", e_fold, e_refit)

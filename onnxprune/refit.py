"""Compensating for removed neurons in the consumers: bias folding and least-squares refit.

Both are closed-form in the Gram matrix G = [X 1]^T [X 1] of a group's tap activations X
(float64, accumulated over batches: memory N^2, independent of the number of samples).
A consumer computes Y = X W + b. After removing neurons, with kept set K:

- fold:  Y ~ X_K W_K + (b + sum_{j removed} mean_j W_j): exact when removed neurons are constant;
- refit: [W_K'; b'] = argmin |[X_K 1] theta - X W - b|^2 + lambda |W_K' - W_K|^2, i.e.
         theta = (G_SS + lambda I')^-1 ((G + lambda I')[W; 0])_S with S = K + the bias column (never
         regularised), so the bias row gives the change b' - b, and lambda = ridge x the mean diagonal
         of all the layer's neurons (one matrix G + lambda I' for every kept set: `RidgeSystems`
         factorises it once for all the candidates of a search). The ridge pulls the kept weights
         towards their own values, not towards zero: where the data do not determine them (fewer rows
         than columns, as a k x k Conv's patches or a Flatten's positions can be; channels that never
         vary) they stay what they were, and removing nothing changes nothing.

Whether a consumer keeps its refit or falls back to folding is decided on the calibration data
alone, by two-fold cross-fitting: the Gram matrix of one fold of the calibration rows is kept
besides the whole one, so each fold's refit can be judged on the other fold. The error of a
change D of the full [W; b] on data with Gram matrix H is tr(D^T H D) / n, so the decision costs
no extra pass, and the held-out data stays untouched by every decision.

The sequential refit (`SequentialGram`) solves the same ridge problem from the activations X~
of a partly pruned model to the original outputs: theta = (X~'X~ + lambda I')^-1 X~'[X 1][W; 0].
"""

from __future__ import annotations

import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import scratch

DEFAULT_RIDGE = 1e-3


class _Stored:
    """An array in a temporary file (removed with this object), read whole or by rows."""

    def __init__(self, array: np.ndarray, directory: str | os.PathLike | None = None):
        fd, name = tempfile.mkstemp(prefix="onnxprune-", suffix=".bin", dir=directory or scratch.directory())
        with os.fdopen(fd, "wb") as f:
            np.ascontiguousarray(array).tofile(f)
        self.path, self.shape, self.dtype = Path(name), array.shape, array.dtype
        weakref.finalize(self, _remove, name)

    def read(self) -> np.ndarray:
        # a plain read into a fresh buffer, not a memory map: mapped pages would stay resident
        return np.fromfile(self.path, dtype=self.dtype).reshape(self.shape)

    def rows(self, index: np.ndarray) -> np.ndarray:
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        try:
            return np.array(mapped[index])
        finally:
            del mapped


class Gram:
    """Streaming, mergeable [X 1]^T [X 1] over the rows of activations [..., N].

    Once accumulated, `offload` moves the matrix to a file: every later read of `matrix` is a
    fresh copy that goes with its user (a 2049-wide float64 Gram is 34 MB; an encoder has two per
    FFN layer, and only one consumer's are needed at a time)."""

    def __init__(self, n_features: int):
        self._matrix: np.ndarray | None = np.zeros((n_features + 1, n_features + 1))
        self._stored: _Stored | None = None
        self._size = n_features + 1
        self.count = 0

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix if self._stored is None else self._stored.read()

    @matrix.setter
    def matrix(self, value: np.ndarray) -> None:
        self._matrix, self._stored, self._size = value, None, len(value)

    @property
    def n_features(self) -> int:
        return self._size - 1

    def offload(self, directory: str | os.PathLike | None = None) -> "Gram":
        """Keep the matrix in a new temporary file (in `directory`) instead of memory; the file
        goes when this object does."""
        if self._stored is None:
            self._stored, self._matrix = _Stored(self._matrix, directory), None
        return self

    def __getstate__(self):
        state = self.__dict__.copy()  # a copy sent elsewhere carries the matrix, not this file
        state["_matrix"], state["_stored"] = self.matrix, None
        return state

    def update(self, activations: np.ndarray, mask: np.ndarray | None = None) -> "Gram":
        """Add a batch. The product runs in the batch's own precision (float32: twice as fast as
        float64) and is accumulated in float64 across batches."""
        x = np.asarray(activations).reshape(-1, self.n_features)
        if mask is not None:
            x = x[np.asarray(mask, bool).reshape(-1)]
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        if self._stored is not None:
            raise ValueError("an offloaded Gram matrix is read-only")
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
        return gram_error(self.matrix, self.count, change)


class FoldGrams:
    """The Gram matrices of two disjoint folds of rows, accumulated in one matrix.

    Both are symmetric, so the first fold's lives in the upper triangle (with its diagonal) and
    the second's below it (its diagonal apart): half the memory of two Gram objects, and each row
    multiplied once rather than once for the calibration Gram and again for the fold's.
    `grams()` gives the Gram matrix of both folds together and that of the second.
    """

    def __init__(self, n_features: int):
        self.n_features = n_features
        self.matrix = np.zeros((n_features + 1, n_features + 1))
        self.second_diagonal = np.zeros(n_features + 1)
        self.counts = [0, 0]

    def update(self, activations: np.ndarray, second: np.ndarray, mask: np.ndarray | None = None) -> "FoldGrams":
        """Add a batch; `second` (bool per sample, the first axis) says which samples are the second fold's."""
        n = self.n_features
        activations = np.asarray(activations)
        for part, rows in ((0, ~second), (1, second)):
            x = activations[rows].reshape(-1, n)
            if mask is not None:
                x = x[np.asarray(mask, bool)[rows].reshape(-1)]
            if not len(x):
                continue
            if x.dtype.kind != "f":
                x = x.astype(np.float64)
            sums = x.sum(axis=0, dtype=np.float64)
            _add_triangle(self.matrix, x, upper=part == 0)
            if part == 0:
                self.matrix[:n, n] += sums
                self.matrix[n, n] += len(x)
            else:
                self.matrix[n, :n] += sums
                self.second_diagonal[:n] += np.einsum("ij,ij->j", x, x, dtype=np.float64)
                self.second_diagonal[n] += len(x)
            self.counts[part] += len(x)
        return self

    def grams(self) -> tuple[Gram, Gram]:
        """(Gram of both folds, Gram of the second fold)."""
        m = self.matrix
        second = np.tril(m, -1)
        second += second.T
        second[np.diag_indices_from(second)] = self.second_diagonal
        both = np.triu(m)
        both += np.triu(m, 1).T
        both += second
        out = Gram(self.n_features), Gram(self.n_features)
        out[0].matrix, out[0].count = both, sum(self.counts)
        out[1].matrix, out[1].count = second, self.counts[1]
        return out


def _add_triangle(matrix: np.ndarray, x: np.ndarray, upper: bool) -> None:
    """matrix[:n, :n] += x^T x on the upper triangle with its diagonal, or on the strict lower one.

    The product runs in x's precision and is accumulated in float64, one panel of PANEL rows (upper)
    or columns (lower) at a time, so only the triangle is computed and added: on the few hundred rows
    a piece of activations holds, numpy's x.T @ x (syrk, then a mirror of the triangle) and a masked
    add of the whole square took twice as long."""
    n = x.shape[1]
    for lo in range(0, n, PANEL):
        hi = min(n, lo + PANEL)
        diagonal = matrix[lo:hi, lo:hi]
        if upper:
            p = x[:, lo:hi].T @ x[:, lo:]  # rows lo:hi, columns lo:n
            matrix[lo:hi, hi:n] += p[:, hi - lo:]
        else:
            p = x[:, lo:].T @ x[:, lo:hi]  # rows lo:n, columns lo:hi
            matrix[hi:n, lo:hi] += p[hi - lo:]
        np.add(diagonal, p[:hi - lo, :hi - lo], out=diagonal, where=_triangle(hi - lo, upper))


PANEL = 256
_TRIANGLES: dict[tuple[int, bool], np.ndarray] = {}


def _triangle(n: int, upper: bool) -> np.ndarray:
    """The upper triangle with its diagonal, or the strict lower one, of an n x n matrix (bool, cached)."""
    key = (n, upper)
    if key not in _TRIANGLES:
        ones = np.ones((n, n), bool)
        _TRIANGLES[key] = np.triu(ones) if upper else np.tril(ones, -1)
    return _TRIANGLES[key]


def gram_error(matrix: np.ndarray, count: int, change: np.ndarray, rows: np.ndarray | None = None) -> float:
    """tr(D^T G D) / n; with `rows` (indices), D is zero outside them and only that block of G is read."""
    if not count:
        return 0.0
    if rows is not None:
        matrix, change = matrix[np.ix_(rows, rows)], change[rows]
    return float(np.sum((matrix @ change) * change) / count)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


@dataclass
class ConsumerUpdate:
    """New weight rows for the kept neurons ([kept, outputs], None: unchanged) and a bias change."""

    weight: np.ndarray | None
    bias_delta: np.ndarray | None
    method: str = "fold"
    error_fold: float | None = None
    error_refit: float | None = None
    note: str | None = None  # why it folds where a refit applies (its Gram matrix would be too large)


def fold_change(weight: np.ndarray, keep: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The change of [W; b] that bias folding makes: removed rows zeroed, their mean effect into b."""
    removed = ~keep
    change = np.zeros((len(weight) + 1, weight.shape[1]))
    change[:-1][removed] = -weight[removed]
    change[-1] = mean[removed] @ weight[removed]
    return change


def ridge_lambda(matrix: np.ndarray, ridge: float = DEFAULT_RIDGE) -> float:
    """The regulariser of a problem with this Gram matrix: `ridge` times the mean diagonal of all its
    features (scale-free), the same for every kept set so that a kept set's system is a block of one matrix."""
    diag = np.diag(matrix)[:-1]
    return ridge * (diag.mean() if diag.size and diag.mean() > 0 else 1.0)


def ridge_solve(g_ss: np.ndarray, rhs: np.ndarray, ridge: float = DEFAULT_RIDGE,
                lam: float | None = None) -> np.ndarray:
    """Solve (G + lambda I') theta = rhs, where the last row/column of G is the bias (never regularised);
    lambda is `lam`, or `ridge` times the mean diagonal of G's features."""
    lam = ridge_lambda(g_ss, ridge) if lam is None else lam
    a = g_ss + np.diag(np.append(np.full(len(g_ss) - 1, lam), 0.0))
    try:
        return np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs, rcond=None)[0]


def refit_theta(gram: Gram, keep: np.ndarray, weight: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Least-squares [W_K'; delta b] reproducing X W from the kept neurons (see module docstring)."""
    matrix = gram.matrix
    s = _kept_rows(keep)
    lam = ridge_lambda(matrix, ridge)
    return ridge_solve(matrix[np.ix_(s, s)], _target(matrix, weight, s, lam), lam=lam)


def _target(matrix: np.ndarray, weight: np.ndarray, rows: np.ndarray, lam: float) -> np.ndarray:
    """((G + lambda I')[W; 0])_rows: the right-hand side of the refit for these rows of [W; b], its ridge
    pulling them towards the original weights (the bias row, never regularised, is the last of G)."""
    rhs = matrix[rows, :-1] @ weight
    prior = rows < len(weight)
    rhs[prior] += lam * weight[rows[prior]]
    return rhs


def _kept_rows(keep: np.ndarray) -> np.ndarray:
    """The rows of [W; b] a kept set keeps: its neurons' and the bias's."""
    return np.append(np.flatnonzero(keep), len(keep))


class RidgeSystems:
    """One consumer's ridge problems (on all calibration rows, and on each cross-fitting fold), solved
    for any kept set.

    The regulariser is fixed per problem (`ridge_lambda`), so a kept set S's system is the S block of
    one matrix M~ = M + lambda I'. Candidates of a search remove each group's neurons in one order
    (`order`: features kept longest first, e.g. by score), so their kept sets are leading blocks of
    M~ permuted to [bias, order]. The Cholesky factor L of that matrix, the inverses of its diagonal
    blocks and Y = L^-1 C (C = M[:, :n] W, permuted) are computed once per problem and kept on disk.
    The leading k x k block of L is the factor of a k-set's block and Y's first k rows its forward
    solution, so each kept set costs one triangular back-substitution (k^2 x outputs) instead of a
    factorisation and two substitutions. Kept sets that are not leading in the order are solved directly,
    and so is every kept set with `factorise` off (one kept set per consumer: nothing to share).
    """

    def __init__(self, weight: np.ndarray, ridge: float = DEFAULT_RIDGE, order: np.ndarray | None = None,
                 directory: str | os.PathLike | None = None, factorise: bool = True):
        self.weight, self.ridge, self.directory = weight, ridge, directory
        self.factorise = factorise  # False: every kept set solved directly (one kept set: no factor to share)
        self.order = None if order is None else np.asarray(order)  # None: from the first kept set
        self.solves = self.by_prefix = 0  # kept sets solved, and of those from the stored factors
        self._lam: dict[str, float] = {}
        self._factors: dict[str, tuple[_Stored, ...] | None] = {}

    def solve(self, keep: np.ndarray, matrices: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """theta = [W_K'; delta b] of every named problem (its Gram matrix M) for this kept set."""
        self.solves += 1
        if self.order is None:
            self.order = np.r_[np.flatnonzero(keep), np.flatnonzero(~keep)]
        k = int(keep.sum())
        leading = self.factorise and bool(keep[self.order[:k]].all())
        thetas = {}
        for name, m in matrices.items():
            lam = self._lam.setdefault(name, ridge_lambda(m, self.ridge))
            theta = self._leading(name, m, lam, k) if leading else None
            if theta is None:
                s = _kept_rows(keep)
                theta = ridge_solve(m[np.ix_(s, s)], _target(m, self.weight, s, lam), lam=lam)
            else:
                self.by_prefix += 1
            thetas[name] = theta
        return thetas

    def _leading(self, name: str, m: np.ndarray, lam: float, k: int) -> np.ndarray | None:
        if name not in self._factors:
            self._factors[name] = None
            order = np.r_[len(m) - 1, self.order]  # the bias first: it is in every kept set
            a = m[np.ix_(order, order)]
            a[np.diag_indices(len(a))] += np.r_[0.0, np.full(len(a) - 1, lam)]
            try:
                factor = np.linalg.cholesky(a)
            except np.linalg.LinAlgError:  # not positive definite (no ridge, dead features): solve directly
                return None
            del a
            inverses = _diagonal_inverses(factor)
            forward = _forward(factor, _target(m, self.weight, order, lam), inverses)
            self._factors[name] = tuple(_Stored(x, self.directory) for x in (factor, forward, inverses))
            del factor
        if self._factors[name] is None:
            return None
        stored_factor, stored_forward, stored_inverses = self._factors[name]
        factor, forward = stored_factor.rows(slice(0, k + 1)), stored_forward.rows(slice(0, k + 1))
        t = _backward(factor[:, :k + 1], forward, stored_inverses.read())  # rows: the bias, then order[:k]
        return np.vstack([t[1:][np.argsort(self.order[:k])], t[:1]])


SUBSTITUTION_BLOCK = 256


def _diagonal_inverses(lower: np.ndarray) -> np.ndarray:
    """The inverses of a lower-triangular L's diagonal blocks [blocks, B, B] (the last padded with I).
    The inverse of a leading part of such a block is the leading part of its inverse, so these serve
    every leading block of L."""
    b = SUBSTITUTION_BLOCK
    out = np.zeros((-(-len(lower) // b), b, b))
    for i, lo in enumerate(range(0, len(lower), b)):
        hi = min(len(lower), lo + b)
        out[i] = np.eye(b)
        out[i, :hi - lo, :hi - lo] = np.linalg.inv(lower[lo:hi, lo:hi])
    return out


def _forward(lower: np.ndarray, b: np.ndarray, inverses: np.ndarray) -> np.ndarray:
    """L^-1 b for a lower-triangular L, by blocks: matrix products only (`inverses`: _diagonal_inverses)."""
    y = np.array(b, dtype=np.float64)
    for i, lo in enumerate(range(0, len(lower), SUBSTITUTION_BLOCK)):
        hi = min(len(lower), lo + SUBSTITUTION_BLOCK)
        if lo:
            y[lo:hi] -= lower[lo:hi, :lo] @ y[:lo]
        y[lo:hi] = inverses[i, :hi - lo, :hi - lo] @ y[lo:hi]
    return y


def _backward(lower: np.ndarray, y: np.ndarray, inverses: np.ndarray) -> np.ndarray:
    """L^-T y for a lower-triangular L (or a leading block of the L `inverses` belong to), from the last block."""
    x = np.array(y, dtype=np.float64)
    n = len(lower)
    for i in reversed(range(-(-n // SUBSTITUTION_BLOCK))):
        lo, hi = i * SUBSTITUTION_BLOCK, min(n, (i + 1) * SUBSTITUTION_BLOCK)
        if hi < n:
            x[lo:hi] -= lower[hi:, lo:hi].T @ x[hi:]
        x[lo:hi] = inverses[i, :hi - lo, :hi - lo].T @ x[lo:hi]
    return x


class SequentialGram:
    """Streaming [X~ 1]'[X~ 1] and [X~ 1]'Y: the pruned model's kept activations X~ against the outputs
    Y = X W the original activations X give (without the bias), over the same rows: the sequential
    refit's normal equations. `weight` may hold several consumers' columns side by side.

    Products run in the rows' precision (float32: twice as fast) and accumulate in float64; Y is formed
    first, so a row costs kept x (kept + outputs) + features x outputs, not kept x features."""

    def __init__(self, kept: int, weight: np.ndarray):
        self.weight = np.asarray(weight)
        self.left = np.zeros((kept + 1, kept + 1))
        self.cross = np.zeros((kept + 1, self.weight.shape[1]))
        self.count = 0

    def update(self, pruned: np.ndarray, original: np.ndarray, extra: np.ndarray | None = None) -> "SequentialGram":
        """Add rows: the pruned activations, the original ones, and `extra` added to their outputs Y
        ([rows, outputs]: what the consumers should make up for besides their own inputs' loss)."""
        if pruned.dtype.kind != "f" or original.dtype.kind != "f":
            pruned, original = pruned.astype(np.float64), original.astype(np.float64)
        k = pruned.shape[1]
        sums = pruned.sum(axis=0, dtype=np.float64)
        self.left[:k, :k] += pruned.T @ pruned  # numpy sees the transpose: one symmetric product (syrk)
        self.left[:k, k] += sums
        self.left[k, :k] += sums
        self.left[k, k] += len(pruned)
        y = original @ self.weight.astype(original.dtype, copy=False)
        if extra is not None:
            y += extra
        self.cross[:-1] += pruned.T @ y.astype(pruned.dtype, copy=False)
        self.cross[-1] += y.sum(axis=0, dtype=np.float64)
        self.count += len(pruned)
        return self

    def solve(self, ridge: float = DEFAULT_RIDGE, prior: np.ndarray | None = None) -> np.ndarray:
        """[W_K'; b' - b] mapping the pruned activations to the original outputs X W (+ b); the ridge pulls
        the weights towards `prior` ([kept, outputs]: the kept rows of W), or towards zero without it."""
        left = self.left
        lam = ridge_lambda(left, ridge)
        rhs = self.cross.copy()
        if prior is not None:
            rhs[:-1] += lam * prior
        return ridge_solve(left, rhs, lam=lam)


def refit_change(weight: np.ndarray, keep: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The change of [W; b] that a refit theta = [W_K'; delta b] makes."""
    change = np.zeros((len(weight) + 1, weight.shape[1]))
    change[:-1][keep] = theta[:-1] - weight[keep]
    change[:-1][~keep] = -weight[~keep]
    change[-1] = theta[-1]
    return change


def consumer_update(weight: np.ndarray, keep: np.ndarray, mean: np.ndarray, *, mode: str,
                    calibration: Gram | None = None, fold: Gram | None = None,
                    ridge: float = DEFAULT_RIDGE, systems: RidgeSystems | None = None) -> ConsumerUpdate:
    """How one consumer compensates for its removed inputs: mode 'none', 'fold' or 'refit'.

    With 'refit', the refit is kept only where it beats folding out of sample, judged by
    two-fold cross-fitting on the calibration rows (`fold` is the Gram matrix of one fold of
    them): each fold's refit is scored on the other fold. Without a usable fold the refit is
    judged on the calibration data itself. The kept refit is solved on all calibration rows.
    `systems` (the consumer's, kept between calls with the same weight and ridge) makes later
    kept sets cheaper to solve.
    """
    if mode == "none" or keep.all():
        return ConsumerUpdate(None, None, "none")
    folded = fold_change(weight, keep, mean)
    if mode == "fold" or calibration is None or not calibration.count:
        return ConsumerUpdate(None, folded[-1], "fold")
    systems = systems if systems is not None else RidgeSystems(weight, ridge, factorise=False)
    # Each Gram is read once (it may live in a file); the second fold's is the calibration's minus the first's.
    cal = calibration.matrix
    matrices = {"all": cal}
    cross = fold is not None and 0 < fold.count < calibration.count
    if cross:
        f = fold.matrix
        matrices.update(fold=f, other=cal - f)
    thetas = systems.solve(keep, matrices)
    theta = thetas["all"]
    if cross:
        o_count = calibration.count - fold.count
        e_fold_part = gram_error(f, fold.count, refit_change(weight, keep, thetas["other"]))
        e_other_part = gram_error(matrices["other"], o_count, refit_change(weight, keep, thetas["fold"]))
        e_refit = (e_fold_part * fold.count + e_other_part * o_count) / calibration.count
    else:
        e_refit = gram_error(cal, calibration.count, refit_change(weight, keep, theta))
    # folding changes only the removed rows and the bias: that block of G is all the error reads
    e_fold = gram_error(cal, calibration.count, folded, np.append(np.flatnonzero(~keep), len(weight)))
    if e_refit < e_fold:
        return ConsumerUpdate(theta[:-1], theta[-1], "refit", e_fold, e_refit)
    return ConsumerUpdate(None, folded[-1], "fold", e_fold, e_refit)

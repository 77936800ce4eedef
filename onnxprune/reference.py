"""The original model's outputs on the held-out samples, kept on disk rather than in memory.

Candidates are compared with these outputs instead of running the original again. They
grow with the data (samples x output size: 1,500 sentences of 64 tokens x 512 floats is
196 MB), so they are appended batch by batch to one raw file per output in a temporary
directory and read back batch by batch: memory holds one batch, whatever the number of
samples. Shards computed apart (worker processes, a cluster) are joined by appending
their files in order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from .errors import InputError
from . import scratch


def as_array(value) -> np.ndarray:
    """An output as an array; sequences of maps (scikit-learn's ZipMap) become [n, classes]."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float64)
    return np.asarray(value)


class Reference:
    """Outputs named `names`, rows appended with `append`, read with `batches` or `outputs`.

    The files live in `directory` (a new temporary directory by default) and are removed
    when the object is garbage-collected, or by `close()`. A copy sent to another process
    (pickled) refers to the same files and takes over their removal; the sender calls
    `release()` so that its own copy leaves them in place.
    """

    def __init__(self, names, directory: str | os.PathLike | None = None, axes=None):
        self.names = list(names)
        # the axis each output holds its samples along (a recurrent state [2, N, 128]: 1); rows are
        # stored sample-first and handed back in the output's own layout
        self.axes = list(axes) if axes is not None else [0] * len(self.names)
        self.directory = Path(tempfile.mkdtemp(prefix="onnxprune-reference-", dir=directory or scratch.directory()))
        self.n_samples = 0
        self._rows: list[tuple | None] = [None] * len(self.names)  # shape of one sample, per output
        self._dtypes: list[np.dtype | None] = [None] * len(self.names)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    def _path(self, k: int) -> Path:
        return self.directory / f"output{k}.bin"

    def append(self, values) -> None:
        """Add the rows of one batch (one array, or ZipMap list, per output; batch axis first)."""
        arrays = [as_array(v) for v in values]
        if len(arrays) != len(self.names):
            raise ValueError(f"{len(arrays)} outputs given, {len(self.names)} expected")
        arrays = [np.moveaxis(a, axis, 0) if axis and a.ndim > axis else a for a, axis in zip(arrays, self.axes)]
        counts = {len(a) if a.ndim else None for a in arrays}
        if None in counts or len(counts) > 1:
            raise InputError("a model output does not keep the batch axis first, so its rows cannot be kept "
                             "per sample for comparing candidates")
        for k, a in enumerate(arrays):
            if self._rows[k] is None:
                self._rows[k], self._dtypes[k] = a.shape[1:], a.dtype
            elif a.shape[1:] != self._rows[k]:
                raise InputError(f"output {self.names[k]!r} has shape {a.shape[1:]} per sample in one batch and "
                                 f"{self._rows[k]} in another (sequences of different lengths?); they cannot be "
                                 "compared sample by sample")
            with open(self._path(k), "ab") as f:
                f.write(np.ascontiguousarray(a, dtype=self._dtypes[k]).tobytes())
        self.n_samples += counts.pop() if counts else 0

    def extend(self, other: "Reference") -> None:
        """Append `other`'s rows after this one's (the next shard), then delete `other`'s files."""
        if other.names != self.names:
            raise ValueError("references of different outputs cannot be joined")
        for k in range(len(self.names)):
            if other._rows[k] is None:
                continue
            if self._rows[k] is None:
                self._rows[k], self._dtypes[k] = other._rows[k], other._dtypes[k]
            elif (other._rows[k], other._dtypes[k]) != (self._rows[k], self._dtypes[k]):
                raise InputError(f"output {self.names[k]!r} has per-sample shape {other._rows[k]} in one shard "
                                 f"and {self._rows[k]} in another")
            with open(self._path(k), "ab") as out, open(other._path(k), "rb") as src:
                shutil.copyfileobj(src, out, 1 << 24)
        self.n_samples += other.n_samples
        other.close()

    @classmethod
    def concatenate(cls, parts: list["Reference"]) -> "Reference":
        """The shards' rows in order, in the first shard's files (the others are deleted)."""
        first, *rest = parts
        for part in rest:
            first.extend(part)
        return first

    @classmethod
    def gathered(cls, parts: list["Reference"], indices: list[np.ndarray], directory=None) -> "Reference":
        """One reference in sample order from parts whose rows are the samples at `indices` (sorted, disjoint,
        together every sample): the cross-fitting folds' outputs, for judging the final model on them all."""
        first = parts[0]
        out = cls(first.names, directory, first.axes)
        n = sum(len(i) for i in indices)
        for k in range(len(first.names)):
            row, dtype = first._rows[k], first._dtypes[k]
            if row is None:
                continue
            out._rows[k], out._dtypes[k] = row, dtype
            target = np.memmap(out._path(k), dtype=dtype, mode="w+", shape=(n, *row))
            for part, rows in zip(parts, indices):
                for start in range(0, len(rows), 4096):  # a few thousand rows at a time: memory stays small
                    target[rows[start:start + 4096]] = part._read(k, start, start + 4096)
            target.flush()
            del target
        out.n_samples = n
        return out

    def _shape(self, k: int) -> tuple:
        return (self.n_samples, *(self._rows[k] or ()))

    def _read(self, k: int, start: int, stop: int) -> np.ndarray:
        row = self._rows[k]
        if row is None:
            return np.zeros((0,))
        dtype = self._dtypes[k]
        per_row = int(np.prod(row, dtype=np.int64))
        stop = min(stop, self.n_samples)
        # A plain read into a fresh buffer: pages read through a memory map stay resident (and
        # counted in the process's RSS) until the kernel needs them back; this buffer goes
        # with the batch.
        with open(self._path(k), "rb") as f:
            f.seek(start * per_row * dtype.itemsize)
            data = np.fromfile(f, dtype=dtype, count=max(0, stop - start) * per_row)
        return data.reshape((-1, *row))

    @property
    def outputs(self) -> list[np.ndarray]:
        """Read-only memory maps [n_samples, ...] of every output, samples first (for looking at a few rows)."""
        out = []
        for k in range(len(self.names)):
            if self._rows[k] is None or self.n_samples == 0:
                out.append(np.zeros(self._shape(k), dtype=self._dtypes[k] or np.float32))
            else:
                out.append(np.memmap(self._path(k), dtype=self._dtypes[k], mode="r", shape=self._shape(k)))
        return out

    def batches(self, batch_size: int, n_samples: int):
        """The rows of every output, `batch_size` samples at a time, for the first `n_samples` samples."""
        for start in range(0, n_samples, batch_size):
            rows = [self._read(k, start, min(start + batch_size, n_samples)) for k in range(len(self.names))]
            yield [np.moveaxis(r, 0, axis) if axis and r.ndim > axis else r for r, axis in zip(rows, self.axes)]

    def nbytes(self) -> int:
        return sum(self._path(k).stat().st_size for k in range(len(self.names)) if self._path(k).exists())

    def release(self) -> None:
        """Leave the files in place when this copy goes (another process's copy owns them now)."""
        self._cleanup.detach()

    def adopt(self) -> None:
        """Own the files again (after `release`, when no copy took them over: same process)."""
        if not self._cleanup.alive:
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    def close(self) -> None:
        self._cleanup()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_cleanup"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    def __repr__(self) -> str:
        return f"Reference({self.names}, {self.n_samples} samples in {self.directory})"

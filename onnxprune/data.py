"""Validation data: `.npz` files (or dicts of arrays) checked against the model's inputs."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import onnx

from .errors import InputError

DEFAULT_LABELS_KEY = "labels"


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype and shape (ints, symbolic names or None)."""

    name: str
    dtype: np.dtype
    shape: tuple | None

    @property
    def fixed_batch(self) -> int | None:
        if self.shape and isinstance(self.shape[0], int):
            return self.shape[0]
        return None


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise InputError(f"model input {value.name!r} is not a tensor; onnxprune feeds tensors only")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            )
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


class Dataset:
    """Arrays for every model input, aligned on their first (sample) axis, plus optional labels."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray | None, *,
                 source: str = "<arrays>", fixed_batch: int | None = None):
        self.arrays = arrays
        self.labels = labels
        self.source = source
        self.fixed_batch = fixed_batch
        self.n_samples = len(next(iter(arrays.values())))

    def batch_size(self, requested: int) -> int:
        """The batch size actually used: a model with a fixed batch dimension dictates it."""
        return self.fixed_batch if self.fixed_batch else max(1, min(requested, self.n_samples))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        size = self.batch_size(batch_size)
        for start in range(0, self.n_samples, size):
            yield {name: a[start:start + size] for name, a in self.arrays.items()}

    def subset(self, indices) -> "Dataset":
        labels = None if self.labels is None else self.labels[indices]
        return Dataset({k: v[indices] for k, v in self.arrays.items()}, labels,
                       source=self.source, fixed_batch=self.fixed_batch)


def load_data(data, model: onnx.ModelProto, *, labels_key: str | None = DEFAULT_LABELS_KEY,
              labels_required: bool = False) -> Dataset:
    """Load `data` (a `.npz` path or a mapping of arrays) and check it against the model's inputs."""
    specs = model_inputs(model)
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        source = str(data)
        raw = _read_npz(Path(data))
    elif isinstance(data, Mapping):
        source = "<arrays>"
        raw = {k: np.asarray(v) for k, v in data.items()}
    elif isinstance(data, np.ndarray):
        source = "<array>"
        raw = {"arr_0": data}
    else:
        raise InputError(f"data must be a .npz path or a mapping of arrays, not {type(data).__name__}")

    labels = None
    if labels_key and labels_key in raw:
        labels = raw.pop(labels_key)
    elif labels_required:
        raise InputError(f"{source} has no labels array {labels_key!r} (keys: {', '.join(sorted(raw)) or 'none'})")

    arrays = _match_inputs(raw, specs, source)
    n = {len(a) for a in arrays.values()}
    if len(n) != 1:
        sizes = ", ".join(f"{k}: {len(a)}" for k, a in arrays.items())
        raise InputError(f"{source}: inputs have different numbers of samples ({sizes})")
    n_samples = n.pop()
    if n_samples == 0:
        raise InputError(f"{source}: zero samples")

    fixed = {s.fixed_batch for s in specs if s.fixed_batch is not None}
    if len(fixed) > 1:
        raise InputError(f"model inputs fix different batch sizes {sorted(fixed)}")
    fixed_batch = fixed.pop() if fixed else None
    if fixed_batch and n_samples % fixed_batch:
        raise InputError(f"{source}: the model's batch dimension is fixed to {fixed_batch} "
                         f"but there are {n_samples} samples (not a multiple)")

    if labels is not None:
        labels = _check_labels(labels, n_samples, source, labels_key)
    return Dataset(arrays, labels, source=source, fixed_batch=fixed_batch)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputError(f"data file not found: {path}")
    if not path.is_file():
        raise InputError(f"data path is not a file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise InputError(f"{path} is not a readable .npz file: {_first_line(e)}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is a single .npy array, not a .npz archive; save it with np.savez")
    with loaded as npz:
        out = {}
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise InputError(f"{path}: array {key!r} holds Python objects (pickled); "
                                     "onnxprune only loads plain numeric arrays") from None
                raise InputError(f"{path}: array {key!r} is unreadable: {_first_line(e)}") from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise InputError(f"{path}: array {key!r} is unreadable: {_first_line(e)}") from None
        return out


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _match_inputs(raw: dict[str, np.ndarray], specs: list[InputSpec], source: str) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if len(specs) == 1 and specs[0].name not in raw and len(raw) == 1:
        # A single-input model may take a single array under any key.
        raw = {specs[0].name: next(iter(raw.values()))}
    missing = [n for n in names if n not in raw]
    if missing:
        raise InputError(f"{source} has no array for model input(s) {', '.join(map(repr, missing))} "
                         f"(keys: {', '.join(sorted(raw)) or 'none'})")
    arrays = {}
    for spec in specs:
        arrays[spec.name] = _check_array(raw[spec.name], spec, source)
    return arrays


def _check_array(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    where = f"{source}[{spec.name!r}]"
    if array.dtype != spec.dtype:
        raise InputError(f"{where} is {array.dtype} but model input {spec.name!r} expects {spec.dtype} "
                         f"(convert with .astype('{spec.dtype}'))")
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise InputError(f"{where} has shape {array.shape} but model input {spec.name!r} "
                             f"has rank {len(spec.shape)} {_show_shape(spec.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if axis == 0:
                continue  # the sample axis; a fixed batch is checked against the sample count
            if isinstance(want, int) and want != got:
                raise InputError(f"{where} has shape {array.shape} but model input {spec.name!r} "
                                 f"expects {_show_shape(spec.shape)} (axis {axis}: {got} != {want})")
    if array.dtype.kind in "fc":
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(f"{where} contains {int(bad.sum())} NaN or infinite value(s)")
    return np.ascontiguousarray(array)


def _check_labels(labels: np.ndarray, n_samples: int, source: str, key: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)  # one-hot
    if labels.ndim != 1:
        raise InputError(f"{source}[{key!r}] must be one label per sample, got shape {labels.shape}")
    if len(labels) != n_samples:
        raise InputError(f"{source}[{key!r}] has {len(labels)} labels for {n_samples} samples")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise InputError(f"{source}[{key!r}] must hold integer class labels")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise InputError(f"{source}[{key!r}] must hold integer class labels, got {labels.dtype}")
    return labels


def _show_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"

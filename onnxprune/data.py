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


CHUNK_BYTES = 64 * 2**20  # how much a streamed source reads at a time


class Dataset:
    """Samples for every model input, aligned on their first axis, streamed in batches; optional labels.

    `chunks` is a callable returning an iterator of {input: array} pieces in sample order
    (a whole in-memory array, slices of a memory-mapped .npy, or one .npz shard at a time);
    `batches` re-cuts them into batches of exactly the requested size (the last may be
    smaller), so only a chunk and a batch are ever in memory.
    """

    def __init__(self, arrays: dict[str, np.ndarray] | None, labels: np.ndarray | None, *,
                 source: str = "<arrays>", fixed_batch: int | None = None, chunks=None,
                 n_samples: int | None = None):
        self.arrays = arrays
        self.labels = labels
        self.source = source
        self.fixed_batch = fixed_batch
        self._chunks = chunks or (lambda: iter([arrays]))
        self.n_samples = n_samples if n_samples is not None else len(next(iter(arrays.values())))

    def batch_size(self, requested: int) -> int:
        """The batch size actually used: a model with a fixed batch dimension dictates it."""
        return self.fixed_batch if self.fixed_batch else max(1, min(requested, self.n_samples))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        size = self.batch_size(batch_size)
        pending: list[dict[str, np.ndarray]] = []
        held = 0
        for chunk in self._chunks():
            n = len(next(iter(chunk.values())))
            start = 0
            if pending:  # complete the batch begun in the previous chunk
                take = min(size - held, n)
                pending.append({k: v[:take] for k, v in chunk.items()})
                held += take
                start = take
                if held == size:
                    yield _join(pending)
                    pending, held = [], 0
            while n - start >= size:
                yield {k: v[start:start + size] for k, v in chunk.items()}
                start += size
            if start < n:
                pending.append({k: v[start:] for k, v in chunk.items()})
                held += n - start
        if pending:
            yield _join(pending)

    def subset(self, indices) -> "Dataset":
        """The samples at `indices` (sorted), streamed from this dataset without loading it all."""
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        labels = None if self.labels is None else self.labels[indices]
        if self.arrays is not None:
            return Dataset({k: v[indices] for k, v in self.arrays.items()}, labels,
                           source=self.source, fixed_batch=self.fixed_batch)
        parent = self._chunks

        def chunks():
            offset = 0
            for chunk in parent():
                n = len(next(iter(chunk.values())))
                lo, hi = np.searchsorted(indices, [offset, offset + n])
                if hi > lo:
                    yield {k: v[indices[lo:hi] - offset] for k, v in chunk.items()}
                offset += n

        return Dataset(None, labels, source=self.source, fixed_batch=self.fixed_batch, chunks=chunks,
                       n_samples=len(indices))


def _join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_data(data, model: onnx.ModelProto, *, labels_key: str | None = DEFAULT_LABELS_KEY,
              labels_required: bool = False) -> Dataset:
    """Load `data` and check it against the model's inputs.

    `data` is a `.npz` file, a `.npy` file (memory-mapped, single-input models), a directory
    of `.npz` shards with the same keys (streamed shard by shard), or a mapping of arrays.
    """
    specs = model_inputs(model)
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        return _load_shards(Path(data), specs, labels_key, labels_required)
    if isinstance(data, (str, Path)) and str(data).endswith(".npy"):
        return _load_npy(Path(data), specs, labels_key, labels_required)
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
        raise InputError(f"data must be a .npz or .npy path, a directory of .npz shards or a mapping of arrays, "
                         f"not {type(data).__name__}")

    labels = None
    if labels_key and labels_key in raw:
        labels = raw.pop(labels_key)
    elif labels_required:
        raise InputError(f"{source} has no labels array {labels_key!r} (keys: {', '.join(sorted(raw)) or 'none'})")

    raw = _rename_single(raw, specs)
    _check_keys(raw, specs, source)
    arrays = {}
    for spec in specs:
        array = raw[spec.name]
        _check_header(array.shape, array.dtype, spec, f"{source}[{spec.name!r}]")
        _check_finite(array, f"{source}[{spec.name!r}]")
        arrays[spec.name] = np.ascontiguousarray(array)
    n_samples = _sample_count({k: a.shape for k, a in arrays.items()}, source)
    fixed_batch = _fixed_batch(specs, n_samples, source)
    if labels is not None:
        labels = _check_labels(labels, n_samples, source, labels_key)
    return Dataset(arrays, labels, source=source, fixed_batch=fixed_batch)


def _rename_single(raw: dict, specs: list[InputSpec]) -> dict:
    if len(specs) == 1 and specs[0].name not in raw and len(raw) == 1:
        # A single-input model may take a single array under any key.
        return {specs[0].name: next(iter(raw.values()))}
    return raw


def _check_keys(raw: dict, specs: list[InputSpec], source: str) -> None:
    missing = [s.name for s in specs if s.name not in raw]
    if missing:
        raise InputError(f"{source} has no array for model input(s) {', '.join(map(repr, missing))} "
                         f"(keys: {', '.join(sorted(raw)) or 'none'})")


def _sample_count(shapes: dict[str, tuple], source: str) -> int:
    n = {s[0] if len(s) else 0 for s in shapes.values()}
    if len(n) != 1:
        sizes = ", ".join(f"{k}: {s[0] if len(s) else 0}" for k, s in shapes.items())
        raise InputError(f"{source}: inputs have different numbers of samples ({sizes})")
    n_samples = n.pop()
    if n_samples == 0:
        raise InputError(f"{source}: zero samples")
    return n_samples


def _fixed_batch(specs: list[InputSpec], n_samples: int, source: str) -> int | None:
    fixed = {s.fixed_batch for s in specs if s.fixed_batch is not None}
    if len(fixed) > 1:
        raise InputError(f"model inputs fix different batch sizes {sorted(fixed)}")
    fixed_batch = fixed.pop() if fixed else None
    if fixed_batch and n_samples % fixed_batch:
        raise InputError(f"{source}: the model's batch dimension is fixed to {fixed_batch} "
                         f"but there are {n_samples} samples (not a multiple)")
    return fixed_batch


def _load_npy(path: Path, specs, labels_key, labels_required) -> Dataset:
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    if len(specs) != 1:
        raise InputError(f"{path}: a .npy file holds one array, but the model has {len(specs)} inputs; use .npz")
    if labels_required:
        raise InputError(f"{path}: a .npy file has no labels; use .npz")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e):
            raise InputError(f"{path} holds Python objects (pickled); onnxprune only loads plain numeric arrays") from None
        raise InputError(f"{path} is not a readable .npy file: {_first_line(e)}") from None
    except OSError as e:
        raise InputError(f"{path} is not a readable .npy file: {_first_line(e)}") from None
    spec = specs[0]
    where = f"{path}"
    _check_header(array.shape, array.dtype, spec, where)
    n_samples = _sample_count({spec.name: array.shape}, str(path))
    fixed_batch = _fixed_batch(specs, n_samples, str(path))
    row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_BYTES // row_bytes)

    def chunks():
        for start in range(0, n_samples, step):
            piece = np.ascontiguousarray(array[start:start + step])
            _check_finite(piece, f"{where} (samples {start}-{start + len(piece) - 1})")
            yield {spec.name: piece}

    return Dataset(None, None, source=str(path), fixed_batch=fixed_batch, chunks=chunks, n_samples=n_samples)


def _npz_headers(path: Path) -> dict[str, tuple]:
    """key -> (shape, dtype) of every array of a .npz, read without loading the arrays."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                out[name[:-4]] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise InputError(f"{path} is not a readable .npz file: {_first_line(e)}") from None
    return out


def _load_shards(directory: Path, specs, labels_key, labels_required) -> Dataset:
    shards = sorted(p for p in directory.iterdir() if p.suffix == ".npz")
    if not shards:
        raise InputError(f"{directory} holds no .npz shards")
    headers = [_npz_headers(p) for p in shards]
    for path, header in zip(shards, headers):
        for key, (_, dtype) in header.items():
            if dtype.hasobject:
                raise InputError(f"{path}: array {key!r} holds Python objects (pickled); "
                                 "onnxprune only loads plain numeric arrays")
    keys = [sorted(_rename_single({k: None for k in h if k != labels_key}, specs)) for h in headers]
    if any(k != keys[0] for k in keys):
        raise InputError(f"{directory}: shards have different keys ({', '.join(keys[0])} in {shards[0].name})")
    has_labels = [labels_key in h for h in headers] if labels_key else [False]
    if any(has_labels) and not all(has_labels):
        raise InputError(f"{directory}: only some shards have {labels_key!r}")
    if labels_required and not all(has_labels):
        raise InputError(f"{directory} has no labels array {labels_key!r}")
    renamed = [_rename_single({k: v for k, v in h.items() if k != labels_key}, specs) for h in headers]
    _check_keys(renamed[0], specs, str(directory))
    counts = []
    for path, header in zip(shards, renamed):
        for spec in specs:
            shape, dtype = header[spec.name]
            _check_header(shape, dtype, spec, f"{path}[{spec.name!r}]")
        counts.append(_sample_count({s.name: header[s.name][0] for s in specs}, str(path)))
    n_samples = sum(counts)
    fixed_batch = _fixed_batch(specs, n_samples, str(directory))
    labels = None
    if all(has_labels) and labels_key:
        labels = np.concatenate([_read_npz(p, only=labels_key)[labels_key] for p in shards])
        labels = _check_labels(labels, n_samples, str(directory), labels_key)

    def chunks():
        for path in shards:
            raw = _rename_single({k: v for k, v in _read_npz(path).items() if k != labels_key}, specs)
            for spec in specs:
                _check_finite(raw[spec.name], f"{path}[{spec.name!r}]")
            yield {spec.name: np.ascontiguousarray(raw[spec.name]) for spec in specs}

    return Dataset(None, labels, source=str(directory), fixed_batch=fixed_batch, chunks=chunks, n_samples=n_samples)


def _read_npz(path: Path, only: str | None = None) -> dict[str, np.ndarray]:
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
            if only is not None and key != only:
                continue
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


def _check_header(shape: tuple, dtype: np.dtype, spec: InputSpec, where: str) -> None:
    if dtype != spec.dtype:
        raise InputError(f"{where} is {dtype} but model input {spec.name!r} expects {spec.dtype} "
                         f"(convert with .astype('{spec.dtype}'))")
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise InputError(f"{where} has shape {tuple(shape)} but model input {spec.name!r} "
                         f"has rank {len(spec.shape)} {_show_shape(spec.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if axis == 0:
            continue  # the sample axis; a fixed batch is checked against the sample count
        if isinstance(want, int) and want != got:
            raise InputError(f"{where} has shape {tuple(shape)} but model input {spec.name!r} "
                             f"expects {_show_shape(spec.shape)} (axis {axis}: {got} != {want})")


def _check_finite(array: np.ndarray, where: str) -> None:
    if array.dtype.kind in "fc":
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(f"{where} contains {int(bad.sum())} NaN or infinite value(s)")


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

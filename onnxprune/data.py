"""Validation data: `.npz` files (or dicts of arrays) checked against the model's inputs.

Every input is either *batched*, with its samples along one axis (axis 0 unless the model's
symbolic dims or `batch_axes` say otherwise: a recurrent state [2, N, 128] has them on axis 1),
or *constant*: given once, without a sample axis, and fed unchanged with every batch (a
scalar sample rate, say). Scalar inputs are constant by nature; others are named in
`constant_inputs`.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
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
            raise InputError(f"model input {value.name!r} is not a tensor; onnxprune feeds tensors only",
                             field=value.name)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"model input {value.name!r} has an element type numpy cannot hold "
                             f"({tensor_type.elem_type})", field=value.name) from None
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            )
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def batch_dim_name(specs: list[InputSpec]) -> str | None:
    """The symbolic name most inputs give their first dimension (their batch), if any."""
    names = Counter(s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str))
    return names.most_common(1)[0][0] if names else None


def input_layout(specs: list[InputSpec], batch_axes: Mapping[str, int] | None = None,
                 constant_inputs=()) -> dict[str, int | None]:
    """Input name -> the axis its samples lie along, or None for an input given once for all samples.

    Explicit `batch_axes` and `constant_inputs` win; scalar inputs are constant; an input whose
    first dimension is not the batch dimension of the others, but which has that symbolic
    dimension elsewhere, is batched along it; every other input along axis 0.
    """
    batch_axes = dict(batch_axes or {})
    constant_inputs = set(constant_inputs or ())
    names = [s.name for s in specs]
    for name in [*batch_axes, *constant_inputs]:
        if name not in names:
            raise InputError(f"{name!r} is not a model input (inputs: {', '.join(names)})", field=name)
    both = sorted(set(batch_axes) & constant_inputs)
    if both:
        raise InputError(f"input {both[0]!r} is given a batch axis and declared constant", field=both[0])
    batch_name = batch_dim_name(specs)
    layout = {}
    for spec in specs:
        rank = None if spec.shape is None else len(spec.shape)
        if spec.name in constant_inputs or (spec.name not in batch_axes and rank == 0):
            layout[spec.name] = None
        elif spec.name in batch_axes:
            axis = int(batch_axes[spec.name])
            if rank is not None:
                if not -rank <= axis < rank:
                    raise InputError(f"batch axis {axis} of input {spec.name!r} is out of range for its rank {rank}",
                                     field=spec.name)
                axis %= rank
            elif axis < 0:
                raise InputError(f"input {spec.name!r} has no declared rank: give a non-negative batch axis",
                                 field=spec.name)
            layout[spec.name] = axis
        elif (batch_name and spec.shape and spec.shape[0] != batch_name
              and list(spec.shape).count(batch_name) == 1):
            layout[spec.name] = list(spec.shape).index(batch_name)
        else:
            layout[spec.name] = 0
    if specs and all(axis is None for axis in layout.values()):
        raise InputError("every model input is constant: no input carries samples")
    for spec in specs:
        if layout[spec.name] is None and batch_name and spec.shape and batch_name in spec.shape:
            # Fed unchanged with batches of every size, it could not match the others' batch dimension.
            raise InputError(f"input {spec.name!r} has the batch dimension {batch_name!r} (axis "
                             f"{list(spec.shape).index(batch_name)}), so it cannot be given once for all samples",
                             field=spec.name)
    return layout


def model_classes(model: onnx.ModelProto) -> int | None:
    """The class count of the output labels are compared with, when the model fixes it.

    That is the first output that yields predictions (validate's rule): a 2-D float
    [batch, classes] output gives its static class count; anything else leaves it unknown.
    """
    for value in model.graph.output:
        if not value.type.HasField("tensor_type"):
            continue
        t = value.type.tensor_type
        if not t.HasField("shape"):
            return None
        dims = t.shape.dim
        floating = t.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                                   onnx.TensorProto.BFLOAT16)
        if len(dims) == 2 and floating:
            last = dims[-1]
            return last.dim_value if last.HasField("dim_value") and last.dim_value > 1 else None
        if len(dims) == 1 and not floating:
            return None
    return None


UNLABELED = -1  # a label of -1 (or a one-hot row of zeros) marks a sample without a label


def labeled(labels: np.ndarray | None) -> np.ndarray | None:
    """True for the samples that have a label (None when there are no labels)."""
    return None if labels is None else np.asarray(labels) != UNLABELED


def check_labels(labels: np.ndarray, n_classes: int | None, where: str, *, one_hot_width: int | None = None,
                 path=None, field: str | None = None) -> None:
    """Refuse labels that cannot belong to an output of `n_classes` classes (None: unknown, only
    negative labels are refused, but -1: no label for that sample), with one line naming the class count.

    `where` starts the message (the file and key, say `val.npz['labels']`); `path` and `field`
    go into the InputError. Call it again with the class count seen in the outputs when the
    model leaves it symbolic.
    """
    labels = np.asarray(labels)
    if n_classes is not None and one_hot_width is not None and one_hot_width != n_classes:
        raise InputError(f"{where}: one-hot labels have {one_hot_width} columns but the model's output has "
                         f"{n_classes} classes", path=path, field=field)
    if labels.size == 0 or labels.dtype.kind not in "iu":
        return
    low, high = int(labels.min()), int(labels.max())
    if low < UNLABELED or (n_classes is not None and high >= n_classes):
        bad = low if low < UNLABELED else high
        count = (f"the model's output has {n_classes} classes (labels 0 to {n_classes - 1})"
                 if n_classes is not None else "class labels start at 0")
        raise InputError(f"{where}: label {bad} cannot be right: {count}", path=path, field=field)


# What reading a damaged file raises: zip structure, compressed streams, .npy headers.
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, ValueError, OSError, EOFError, MemoryError,
               OverflowError, TypeError, KeyError, NotImplementedError, RuntimeError)

CHUNK_BYTES = 64 * 2**20  # how much a streamed source reads at a time


class Dataset:
    """Samples for every batched model input, streamed in batches; constant inputs; optional labels.

    `chunks` is a callable returning an iterator of {input: array} pieces in sample order
    (a whole in-memory array, slices of a memory-mapped .npy, or one .npz shard at a time),
    each array with its sample axis first; `batches` re-cuts them into batches of exactly
    the requested size (the last may be smaller), puts each sample axis back where the model
    wants it and adds the constant inputs, so only a chunk and a batch are ever in memory.
    `axes` maps each batched input to its sample axis in the model (default 0).
    """

    def __init__(self, arrays: dict[str, np.ndarray] | None, labels: np.ndarray | None, *,
                 source: str = "<arrays>", fixed_batch: int | None = None, chunks=None,
                 n_samples: int | None = None, axes: dict[str, int] | None = None,
                 constants: dict[str, np.ndarray] | None = None, one_hot_width: int | None = None,
                 labels_key: str | None = DEFAULT_LABELS_KEY):
        self.arrays = arrays
        self.labels = labels
        self.source = source
        self.fixed_batch = fixed_batch
        self._chunks = chunks or (lambda: iter([arrays]))
        self.n_samples = n_samples if n_samples is not None else len(next(iter(arrays.values())))
        self.constants = dict(constants or {})
        self.one_hot_width = one_hot_width
        self.labels_key = labels_key
        self.warnings: list[str] = []  # said once when loaded: an array that looks like unused labels
        names = list(arrays) if arrays is not None else None
        self.axes = dict(axes) if axes is not None else {k: 0 for k in names or ()}

    @property
    def batch_axes(self) -> dict[str, int | None]:
        """Input name -> sample axis, None for constant inputs."""
        return {**self.axes, **{k: None for k in self.constants}}

    def samples_in(self, feeds: dict[str, np.ndarray]) -> int:
        """How many samples a batch of feeds holds."""
        for name, axis in self.axes.items():
            if name in feeds:
                return int(np.shape(feeds[name])[axis])
        return len(next(iter(feeds.values())))

    def slice_batch(self, feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples start..stop of a batch of feeds, cut along each input's own sample axis."""
        out = {}
        for name, value in feeds.items():
            if name in self.constants:
                out[name] = value
                continue
            axis = self.axes.get(name, 0)
            out[name] = value[(slice(None),) * axis + (slice(start, stop),)]
        return out

    def check_labels(self, n_classes: int | None) -> None:
        """Refuse labels that cannot belong to an output of `n_classes` classes (see `check_labels`)."""
        if self.labels is not None:
            path = None if self.source.startswith("<") else self.source
            check_labels(self.labels, n_classes, f"{self.source}[{self.labels_key!r}]",
                         one_hot_width=self.one_hot_width, path=path, field=self.labels_key)

    def batch_size(self, requested: int) -> int:
        """The batch size actually used: a model with a fixed batch dimension dictates it."""
        return self.fixed_batch if self.fixed_batch else max(1, min(requested, self.n_samples))

    def _feeds(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Inputs batched on axis 0 come first: callers that count samples with len() of the
        # first feed stay right.
        feeds = {k: v for k, v in batch.items() if self.axes.get(k, 0) == 0}
        for k, v in batch.items():
            if self.axes.get(k, 0) != 0:
                feeds[k] = np.ascontiguousarray(np.moveaxis(v, 0, self.axes[k]))
        feeds.update(self.constants)
        return feeds

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for batch in self._first_axis_batches(batch_size):
            yield self._feeds(batch)

    def _first_axis_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
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
        same = {"source": self.source, "fixed_batch": self.fixed_batch, "axes": self.axes,
                "constants": self.constants, "one_hot_width": self.one_hot_width,
                "labels_key": self.labels_key}
        if self.arrays is not None:
            return Dataset({k: v[indices] for k, v in self.arrays.items()}, labels, **same)
        parent = self._chunks

        def chunks():
            offset = 0
            for chunk in parent():
                n = len(next(iter(chunk.values())))
                lo, hi = np.searchsorted(indices, [offset, offset + n])
                if hi > lo:
                    yield {k: v[indices[lo:hi] - offset] for k, v in chunk.items()}
                offset += n

        return Dataset(None, labels, chunks=chunks, n_samples=len(indices), **same)


def _join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_data(data, model: onnx.ModelProto, *, labels_key: str | None = DEFAULT_LABELS_KEY,
              labels_required: bool = False, batch_axes: Mapping[str, int] | None = None,
              constant_inputs=()) -> Dataset:
    """Load `data` and check it against the model's inputs.

    `data` is a `.npz` file, a `.npy` file (memory-mapped, single-input models), a directory
    of `.npz` shards with the same keys (streamed shard by shard), or a mapping of arrays.
    `batch_axes` ({input: axis}) and `constant_inputs` (names) say how inputs hold their
    samples (see `input_layout`). Labels are checked against the model's class count when
    its output fixes one.
    """
    specs = model_inputs(model)
    if isinstance(data, Dataset):
        return data
    # a key the caller chose must be there; only the default may be missing (unlabeled data)
    labels_required = labels_required or labels_key not in (None, DEFAULT_LABELS_KEY)
    layout = input_layout(specs, batch_axes, constant_inputs)
    n_classes = model_classes(model)
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        dataset = _load_shards(Path(data), specs, layout, labels_key, labels_required)
    elif isinstance(data, (str, Path)) and str(data).endswith(".npy"):
        dataset = _load_npy(Path(data), specs, layout, labels_key, labels_required)
    else:
        dataset = _load_arrays(data, specs, layout, labels_key, labels_required)
    dataset.check_labels(n_classes)
    return dataset


def _load_arrays(data, specs, layout, labels_key, labels_required) -> Dataset:
    if isinstance(data, (str, Path)):
        source = str(data)
        raw = _read_npz(Path(data))
    elif isinstance(data, Mapping):
        source = "<arrays>"
        try:
            raw = {str(k): np.asarray(v) for k, v in data.items()}
        except (TypeError, ValueError) as e:
            raise InputError(f"data arrays cannot be converted to numpy arrays: {_first_line(e)}") from None
    elif isinstance(data, np.ndarray):
        source = "<array>"
        raw = {"arr_0": data}
    else:
        raise InputError(f"data must be a .npz or .npy path, a directory of .npz shards or a mapping of arrays, "
                         f"not {type(data).__name__}")
    path = None if source.startswith("<") else source

    labels = None
    if labels_key and labels_key in raw:
        labels = raw.pop(labels_key)
    elif labels_required:
        raise InputError(f"{source} has no labels array {labels_key!r} (keys: {', '.join(sorted(raw)) or 'none'})",
                         path=path, field=labels_key)

    raw = _rename_single(raw, specs)
    _check_keys(raw, specs, source)
    unused = {k: (v.shape, v.dtype) for k, v in raw.items() if k not in {s.name for s in specs}}
    arrays, constants = {}, {}
    for spec in specs:
        array = raw[spec.name]
        where = f"{source}[{spec.name!r}]"
        axis = layout[spec.name]
        if array.dtype.hasobject:
            raise InputError(f"{where} holds Python objects; onnxprune only loads plain numeric arrays",
                             path=path, field=spec.name)
        if axis is None:
            constants[spec.name] = _constant(array, spec, where, path)
            continue
        _check_header(array.shape, array.dtype, spec, where, axis, path)
        _check_finite(array, where, path, spec.name)
        arrays[spec.name] = np.ascontiguousarray(array) if axis == 0 else np.moveaxis(array, axis, 0)
    n_samples = _sample_count({k: a.shape[0] for k, a in arrays.items()}, source)
    fixed_batch = _fixed_batch(specs, layout, n_samples, source)
    width = None
    if labels is not None:
        labels, width = _read_labels(labels, n_samples, source, labels_key)
    dataset = Dataset(arrays, labels, source=source, fixed_batch=fixed_batch, constants=constants,
                      axes={k: layout[k] for k in arrays}, one_hot_width=width, labels_key=labels_key)
    dataset.warnings = unused_label_warnings(unused, n_samples, source, labels_key)
    return dataset


def _constant(array: np.ndarray, spec: InputSpec, where: str, path) -> np.ndarray:
    """An input given once for all samples: its shape is the model input's, without a sample axis."""
    if spec.shape == () and array.shape != () and array.size == 1:
        array = array.reshape(())  # a scalar saved as [1]
    if array.dtype != spec.dtype:
        raise InputError(f"{where} is {array.dtype} but model input {spec.name!r} expects {spec.dtype} "
                         f"(convert with .astype('{spec.dtype}'))", path=path, field=spec.name)
    if spec.shape is not None:
        fixed = all(isinstance(d, int) for d in spec.shape)
        if len(array.shape) != len(spec.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(spec.shape, array.shape)):
            raise InputError(f"{where} has shape {tuple(array.shape)} but constant input {spec.name!r} is fed "
                             f"unchanged to the model, which expects {_show_shape(spec.shape)}"
                             + ("" if fixed else " (the constant has no sample axis)"), path=path, field=spec.name)
    _check_finite(array, where, path, spec.name)
    return np.array(array, order="C")  # ascontiguousarray would turn a scalar into shape (1,)


def _rename_single(raw: dict, specs: list[InputSpec]) -> dict:
    if len(specs) == 1 and specs[0].name not in raw and len(raw) == 1:
        # A single-input model may take a single array under any key.
        return {specs[0].name: next(iter(raw.values()))}
    return raw


def _check_keys(raw: dict, specs: list[InputSpec], source: str) -> None:
    missing = [s.name for s in specs if s.name not in raw]
    if missing:
        raise InputError(f"{source} has no array for model input(s) {', '.join(map(repr, missing))} "
                         f"(keys: {', '.join(sorted(raw)) or 'none'})",
                         path=None if source.startswith("<") else source, field=missing[0])


def _sample_count(counts: dict[str, int], source: str) -> int:
    """The one sample count of the batched inputs ({input: samples})."""
    path = None if source.startswith("<") else source
    if len(set(counts.values())) > 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in counts.items())
        raise InputError(f"{source}: inputs have different numbers of samples ({sizes}); "
                         f"an input batched along another axis takes --batch-axis NAME=AXIS, one given once for "
                         f"all samples --constant-input NAME", path=path)
    n_samples = next(iter(counts.values()), 0)
    if n_samples == 0:
        raise InputError(f"{source}: zero samples", path=path)
    return n_samples


def _fixed_batch(specs: list[InputSpec], layout: dict, n_samples: int, source: str) -> int | None:
    fixed = set()
    for s in specs:
        axis = layout[s.name]
        if axis is not None and s.shape and isinstance(s.shape[axis], int):
            fixed.add(s.shape[axis])
    if len(fixed) > 1:
        raise InputError(f"model inputs fix different batch sizes {sorted(fixed)}")
    fixed_batch = fixed.pop() if fixed else None
    if fixed_batch == 0:
        raise InputError("the model's batch dimension is fixed to 0")
    if fixed_batch and n_samples % fixed_batch:
        raise InputError(f"{source}: the model's batch dimension is fixed to {fixed_batch} "
                         f"but there are {n_samples} samples (not a multiple)",
                         path=None if source.startswith("<") else source)
    return fixed_batch


def _load_npy(path: Path, specs, layout, labels_key, labels_required) -> Dataset:
    if not path.is_file():
        raise InputError(f"data file not found: {path}", path=path)
    if len(specs) != 1:
        raise InputError(f"{path}: a .npy file holds one array, but the model has {len(specs)} inputs; use .npz",
                         path=path)
    if labels_required:
        raise InputError(f"{path}: a .npy file has no labels; use .npz", path=path, field=labels_key)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e):
            raise InputError(f"{path} holds Python objects (pickled); onnxprune only loads plain numeric arrays",
                             path=path) from None
        raise InputError(f"{path} is not a readable .npy file: {_first_line(e)}", path=path) from None
    except (OSError, EOFError, MemoryError, OverflowError, TypeError) as e:
        raise InputError(f"{path} is not a readable .npy file: {_first_line(e)}", path=path) from None
    spec = specs[0]
    axis = layout[spec.name]
    where = f"{path}"
    _check_header(array.shape, array.dtype, spec, where, axis, path)
    if axis:
        array = np.moveaxis(array, axis, 0)
    n_samples = _sample_count({spec.name: array.shape[0]}, str(path))
    fixed_batch = _fixed_batch(specs, layout, n_samples, str(path))
    row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_BYTES // row_bytes)

    def chunks():
        for start in range(0, n_samples, step):
            piece = np.ascontiguousarray(array[start:start + step])
            _check_finite(piece, f"{where} (samples {start}-{start + len(piece) - 1})", path, spec.name)
            yield {spec.name: piece}

    return Dataset(None, None, source=str(path), fixed_batch=fixed_batch, chunks=chunks, n_samples=n_samples,
                   axes={spec.name: axis})


def _npz_headers(path: Path) -> dict[str, tuple]:
    """key -> (shape, dtype) of every array of a .npz, read without loading the arrays.

    An array whose header claims more bytes than its member holds is refused here, before
    anything is allocated for it (a corrupt header would otherwise ask for terabytes).
    """
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    header_end = f.tell()
                key = name[:-4]
                if not dtype.hasobject:
                    claimed = dtype.itemsize * int(np.prod(shape, dtype=object))
                    held = info.file_size - header_end
                    if claimed > held:
                        raise InputError(f"{path}: array {key!r} claims shape {tuple(shape)} of {dtype} "
                                         f"({_bytes(claimed)}) but holds only {_bytes(max(held, 0))}: "
                                         "the file is corrupt", path=path, field=key)
                out[key] = (shape, dtype)
    except READ_ERRORS as e:
        raise InputError(f"{path} is not a readable .npz file: {_first_line(e)}", path=path) from None
    return out


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _load_shards(directory: Path, specs, layout, labels_key, labels_required) -> Dataset:
    shards = sorted(p for p in directory.iterdir() if p.suffix == ".npz")
    if not shards:
        raise InputError(f"{directory} holds no .npz shards", path=directory)
    headers = [_npz_headers(p) for p in shards]
    for path, header in zip(shards, headers):
        for key, (_, dtype) in header.items():
            if dtype.hasobject:
                raise InputError(f"{path}: array {key!r} holds Python objects (pickled); "
                                 "onnxprune only loads plain numeric arrays", path=path, field=key)
    keys = [sorted(_rename_single({k: None for k in h if k != labels_key}, specs)) for h in headers]
    if any(k != keys[0] for k in keys):
        odd = next(p for p, k in zip(shards, keys) if k != keys[0])
        raise InputError(f"{directory}: shards have different keys ({', '.join(keys[0])} in {shards[0].name}, "
                         f"{', '.join(keys[shards.index(odd)])} in {odd.name})", path=directory)
    has_labels = [labels_key in h for h in headers] if labels_key else [False]
    if any(has_labels) and not all(has_labels):
        raise InputError(f"{directory}: only some shards have {labels_key!r}", path=directory, field=labels_key)
    if labels_required and not all(has_labels):
        raise InputError(f"{directory} has no labels array {labels_key!r}", path=directory, field=labels_key)
    renamed = [_rename_single({k: v for k, v in h.items() if k != labels_key}, specs) for h in headers]
    _check_keys(renamed[0], specs, str(directory))
    batched = [s for s in specs if layout[s.name] is not None]
    counts = []
    for path, header in zip(shards, renamed):
        for spec in batched:
            shape, dtype = header[spec.name]
            _check_header(shape, dtype, spec, f"{path}[{spec.name!r}]", layout[spec.name], path)
        counts.append(_sample_count({s.name: header[s.name][0][layout[s.name]] for s in batched}, str(path)))
    n_samples = sum(counts)
    fixed_batch = _fixed_batch(specs, layout, n_samples, str(directory))
    constants = {}
    constant_specs = [s for s in specs if layout[s.name] is None]
    if constant_specs:
        # Given once for all samples: the first shard's copy is the one fed.
        first = _rename_single({k: v for k, v in _read_npz(shards[0]).items() if k != labels_key}, specs)
        for spec in constant_specs:
            constants[spec.name] = _constant(first[spec.name], spec, f"{shards[0]}[{spec.name!r}]", shards[0])
    labels, width = None, None
    if all(has_labels) and labels_key:
        parts = [_read_npz(p, only=labels_key)[labels_key] for p in shards]
        if len({p.shape[1:] for p in parts}) > 1 or any(p.ndim == 0 for p in parts):
            raise InputError(f"{directory}: the shards' {labels_key!r} arrays have different shapes",
                             path=directory, field=labels_key)
        labels, width = _read_labels(np.concatenate(parts), n_samples, str(directory), labels_key)

    def chunks():
        for path in shards:
            raw = _rename_single({k: v for k, v in _read_npz(path).items() if k != labels_key}, specs)
            piece = {}
            for spec in batched:
                _check_finite(raw[spec.name], f"{path}[{spec.name!r}]", path, spec.name)
                axis = layout[spec.name]
                piece[spec.name] = np.ascontiguousarray(raw[spec.name] if axis == 0
                                                        else np.moveaxis(raw[spec.name], axis, 0))
            yield piece

    dataset = Dataset(None, labels, source=str(directory), fixed_batch=fixed_batch, chunks=chunks,
                      n_samples=n_samples, axes={s.name: layout[s.name] for s in batched}, constants=constants,
                      one_hot_width=width, labels_key=labels_key)
    names = {s.name for s in specs}
    unused = {}
    for key, (shape, dtype) in renamed[0].items():
        if key not in names:  # the shards' pieces together, as one array
            total = sum(h[key][0][0] if h[key][0] else 0 for h in renamed)
            unused[key] = ((total, *shape[1:]) if shape else shape, dtype)
    dataset.warnings = unused_label_warnings(unused, n_samples, str(directory), labels_key)
    return dataset


def _read_npz(path: Path, only: str | None = None) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputError(f"data file not found: {path}", path=path)
    if not path.is_file():
        raise InputError(f"data path is not a file: {path}", path=path)
    if zipfile.is_zipfile(path):
        _npz_headers(path)  # refuse corrupt headers before anything is allocated
    try:
        loaded = np.load(path, allow_pickle=False)
    except READ_ERRORS as e:
        raise InputError(f"{path} is not a readable .npz file: {_first_line(e)}", path=path) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is a single .npy array, not a .npz archive; save it with np.savez", path=path)
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
                                     "onnxprune only loads plain numeric arrays", path=path, field=key) from None
                raise InputError(f"{path}: array {key!r} is unreadable: {_first_line(e)}", path=path,
                                 field=key) from None
            except READ_ERRORS as e:
                raise InputError(f"{path}: array {key!r} is unreadable: {_first_line(e)}", path=path,
                                 field=key) from None
        return out


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_header(shape: tuple, dtype: np.dtype, spec: InputSpec, where: str, axis: int | None = 0,
                  path=None) -> None:
    """The data array of a batched input against the model input, except along its sample `axis`."""
    path = None if path is None or str(path).startswith("<") else path
    if dtype != spec.dtype:
        raise InputError(f"{where} is {dtype} but model input {spec.name!r} expects {spec.dtype} "
                         f"(convert with .astype('{spec.dtype}'))", path=path, field=spec.name)
    if spec.shape is None:
        if len(shape) <= (axis or 0):
            raise InputError(f"{where} has shape {tuple(shape)}: no sample axis {axis or 0}", path=path,
                             field=spec.name)
        return
    if len(shape) != len(spec.shape):
        raise InputError(f"{where} has shape {tuple(shape)} but model input {spec.name!r} "
                         f"has rank {len(spec.shape)} {_show_shape(spec.shape)}", path=path, field=spec.name)
    for i, (want, got) in enumerate(zip(spec.shape, shape)):
        if i == axis:
            continue  # the sample axis; a fixed batch is checked against the sample count
        if isinstance(want, int) and want != got:
            raise InputError(f"{where} has shape {tuple(shape)} but model input {spec.name!r} "
                             f"expects {_show_shape(spec.shape)} (axis {i}: {got} != {want})", path=path,
                             field=spec.name)


def _check_finite(array: np.ndarray, where: str, path=None, field=None) -> None:
    path = None if path is None or str(path).startswith("<") else path
    if array.dtype.kind in "fc":
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(f"{where} contains {int(bad.sum())} NaN or infinite value(s)", path=path, field=field)


def _read_labels(labels: np.ndarray, n_samples: int, source: str, key: str) -> tuple[np.ndarray, int | None]:
    """Labels as one integer class per sample, and the width of one-hot labels (None otherwise)."""
    where = f"{source}[{key!r}]"
    path = None if source.startswith("<") else source
    width = None
    if labels.dtype.hasobject or labels.dtype.kind not in "iubf":
        raise InputError(f"{where} must hold integer class labels, got {labels.dtype}", path=path, field=key)
    if labels.ndim == 2 and labels.shape[1] > 1:
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise InputError(f"{where} must hold integer class labels or one-hot rows (it has NaN or "
                             "infinite values)", path=path, field=key)
        width = labels.shape[1]
        # one-hot; a row of zeros is a sample without a label
        labels = np.where(labels.any(axis=1), labels.argmax(axis=1), UNLABELED)
    if labels.ndim != 1:
        raise InputError(f"{where} must be one label per sample, got shape {labels.shape}", path=path, field=key)
    if len(labels) != n_samples:
        raise InputError(f"{where} has {len(labels)} labels for {n_samples} samples", path=path, field=key)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise InputError(f"{where} must hold integer class labels", path=path, field=key)
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    check_labels(labels, None, where, path=path, field=key)
    if len(labels) and (labels == UNLABELED).all():
        return None, None  # no sample has a label: as if there were no labels
    return labels, width


# array names people give labels; an unused array by one of these names (or an integer vector with one
# entry per sample) is probably labels under another key
LABEL_NAMES = ("label", "labels", "y", "target", "targets", "class", "classes", "class_ids", "gt")


def unused_label_warnings(unused: dict, n_samples: int, source: str, labels_key: str | None) -> list[str]:
    """A warning per array the model does not read that looks like labels ({key: (shape, dtype)}):
    accuracy would silently be left out, so say how to use it."""
    if labels_key is None:  # labels turned off on purpose
        return []
    out = []
    for key, (shape, dtype) in unused.items():
        named = key.lower() in LABEL_NAMES
        vector = len(shape) == 1 and shape[0] == n_samples and np.dtype(dtype).kind in "iu"
        if named or vector:
            out.append(f"{source}: array {key!r} is not a model input and looks like labels, but labels are "
                       f"read from {labels_key!r}: pass --labels {key} (labels={key!r} in Python) to judge "
                       "accuracy with it")
    return out


def _show_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"

"""Loading ONNX models with clear errors, and writing them atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import InputError

EXTERNAL_DATA_ABOVE = 1_800_000_000  # protobuf cannot serialise 2 GiB: stay well below it


def load_model(path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read and check an ONNX model; raise InputError with one clear line otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except DecodeError:
        raise InputError(f"{path} is not an ONNX model (protobuf decoding failed)") from None
    except FileNotFoundError as e:
        raise InputError(f"{path}: external data file missing: {e.filename or e}") from None
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise InputError(f"cannot read {path}: {_one_line(e)}") from None
    if model.ir_version <= 0 or len(model.opset_import) == 0 or len(model.graph.node) == 0:
        raise InputError(f"{path} is not an ONNX model (no IR version, opset or nodes)")
    try:
        # The path form also handles models above the protobuf size limit.
        onnx.checker.check_model(str(path))
    except Exception as e:  # the checker raises several unrelated types
        raise InputError(f"{path} is not a valid ONNX model: {_one_line(e)}") from None
    return model


def infer_shapes(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """onnx shape inference; models above the protobuf limit go through files (the path API)."""
    if model.ByteSize() < EXTERNAL_DATA_ABOVE:
        return onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict)
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(src), save_as_external_data=True, location="in.onnx.data")
        onnx.shape_inference.infer_shapes_path(str(src), str(dst), check_type=strict, strict_mode=strict)
        return onnx.load(str(dst), load_external_data=False)


def file_uses_external_data(path) -> bool:
    """Whether a model file keeps tensors in external data files (read without loading them)."""
    try:
        return uses_external_data(onnx.load(str(path), load_external_data=False))
    except Exception:
        return False


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)
    )


def _all_tensors(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def model_file_size(path) -> int:
    """Bytes on disk of a model file plus the external data files it names."""
    path = Path(path)
    total = path.stat().st_size
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen = set()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data_path = path.parent / entry.value
                if data_path.exists():
                    total += data_path.stat().st_size
    return total


def check_output_path(output, model_path=None, *, force: bool = False) -> Path:
    """Refuse output paths that cannot be written safely, before any work is done."""
    output = Path(output)
    if model_path is not None and output.resolve() == Path(model_path).resolve():
        raise InputError(f"output path is the input model itself: {output} (choose another -o)")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output directory does not exist: {parent}")
    if not parent.is_dir():
        raise InputError(f"output directory is not a directory: {parent}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory is not writable: {parent}")
    if output.is_dir():
        raise InputError(f"output path is a directory: {output}")
    if output.exists() and not force:
        raise InputError(f"output file exists: {output} (use --force to overwrite)")
    return output


class StagedModel:
    """A model written under a temporary name beside its destination.

    ``path`` can be checked and run; ``commit()`` renames it (and its external
    data file) into place, ``discard()`` removes every trace of it.
    """

    def __init__(self, model: onnx.ModelProto, destination, *, external_data: bool | None = None):
        self.destination = Path(destination)
        parent = self.destination.parent if str(self.destination.parent) else Path(".")
        try:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=".onnxprune-", dir=parent))
        except OSError as e:
            raise InputError(f"cannot write to {parent}: {e.strerror or e}") from None
        self.path = self._tmpdir / self.destination.name
        if external_data is None:
            external_data = uses_external_data(model) or model.ByteSize() > EXTERNAL_DATA_ABOVE
        self.data_name = self.destination.name + ".data" if external_data else None
        try:
            if external_data:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)  # saving as external data rewrites tensors in place
                onnx.save_model(
                    copy,
                    str(self.path),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=self.data_name,
                    size_threshold=1024,
                )
            else:
                onnx.save_model(model, str(self.path))
        except OSError as e:
            self.discard()
            raise InputError(f"cannot write {self.destination}: {e.strerror or e}") from None

    def commit(self) -> Path:
        try:
            if self.data_name:
                os.replace(self._tmpdir / self.data_name, self.destination.parent / self.data_name)
            os.replace(self.path, self.destination)
        except OSError as e:
            raise InputError(f"cannot write {self.destination}: {e.strerror or e}") from None
        finally:
            self.discard()
        return self.destination

    def discard(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def new_file_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's files are private: 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path, write) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path`: readers never see half of it."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"directory does not exist: {parent}")
    if path.is_dir():
        raise InputError(f"path is a directory: {path}")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=path.suffix, dir=parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

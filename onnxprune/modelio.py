"""Loading ONNX models with clear errors, and writing them atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from .errors import InputError
from . import scratch

EXTERNAL_DATA_ABOVE = 1_800_000_000  # protobuf cannot serialise 2 GiB: stay well below it


def load_model(path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read and check an ONNX model; raise InputError with one clear line otherwise.

    Node names are made unique (see `unique_node_names`): ONNX allows duplicates,
    onnxruntime refuses them, and onnxprune names its groups after nodes.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}", path=path)
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}", path=path)
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except DecodeError:
        raise InputError(f"{path} is not an ONNX model (protobuf decoding failed)", path=path) from None
    except FileNotFoundError as e:
        raise InputError(f"{path}: external data file missing: {e.filename or e}", path=path) from None
    except (OSError, ValueError, TypeError, RuntimeError, MemoryError, OverflowError,
            onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise InputError(f"{path}: cannot read the model: {_one_line(e)}", path=path) from None
    if model.ir_version <= 0 or len(model.opset_import) == 0 or len(model.graph.node) == 0:
        raise InputError(f"{path} is not an ONNX model (no IR version, opset or nodes)", path=path)
    check_text(model, path)
    if len(model.graph.output) == 0:
        raise InputError(f"{path}: the model has no graph outputs, so there is nothing to compare", path=path,
                         field="graph.output")
    check_opsets(model, path)
    try:
        # The path form also handles models above the protobuf size limit.
        onnx.checker.check_model(str(path))
    except Exception as e:  # the checker raises several unrelated types
        raise InputError(f"{path} is not a valid ONNX model: {_one_line(e)}", path=path) from None
    unique_node_names(model)
    return model


def check_text(model: onnx.ModelProto, path=None) -> None:
    """Refuse string fields that are not UTF-8 (a damaged file can decode as protobuf and still
    hold them: onnx.proto is proto2, so they are kept on parsing and fail only when copied)."""

    def visit(message, where):
        for field, value in message.ListFields():
            name = f"{where}.{field.name}"
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in [value] if isinstance(value, Message) else value:
                    visit(item, name)
                continue
            if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) or field.name == "raw_data":
                continue  # numbers and tensor bytes: nothing to decode, and possibly millions of them
            texts = [value] if isinstance(value, (str, bytes)) else value
            for text in texts:
                try:
                    if isinstance(text, str):
                        text.encode("utf-8")
                    elif field.type == FieldDescriptor.TYPE_STRING or field.name in ("s", "strings"):
                        # a string field Python hands back as bytes, or an attribute string
                        # that tools decode: either way it must be UTF-8
                        text.decode("utf-8")
                except UnicodeError:
                    raise InputError(f"{path}: field {name} holds text that is not valid UTF-8 (a damaged file?)",
                                     path=path, field=name) from None

    visit(model, "model")


def full_check_problem(model) -> str | None:
    """Why a model (path or proto) fails onnx's full check (strict shape and type inference), or None."""
    try:
        if isinstance(model, onnx.ModelProto) and model.ByteSize() < EXTERNAL_DATA_ABOVE:
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(str(model), full_check=True)
    except Exception as e:  # the checker raises several unrelated types
        return _one_line(e)
    return None


def as_model(model) -> tuple[onnx.ModelProto, Path | None]:
    """A model path or ModelProto as a checked proto (node names unique; a caller's proto is
    copied rather than changed) and the path it came from (None for a proto)."""
    if isinstance(model, onnx.ModelProto):
        check_opsets(model)
        return with_unique_node_names(model), None
    return load_model(model), Path(model)


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when its node names are unique, else a copy with unique names."""
    names = [n.name for n in model.graph.node if n.name]
    if len(names) == len(set(names)):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    unique_node_names(copy)
    return copy


def writes_external_data(model: onnx.ModelProto, model_path=None) -> bool:
    """Whether the pruned model is written with external data: when the input was, or it is too big not to be."""
    return (bool(model_path and file_uses_external_data(model_path)) or uses_external_data(model)
            or model.ByteSize() > EXTERNAL_DATA_ABOVE)


def check_opsets(model: onnx.ModelProto, path=None) -> None:
    """Refuse an opset of the standard domain newer than the installed onnx knows (onnxruntime
    supports the released opsets only), before anything runs."""
    newest = onnx.defs.onnx_opset_version()
    where = f"{path}: " if path is not None else ""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise InputError(f"{where}opset {opset.version} is newer than this installation supports "
                             f"(onnx {onnx.__version__} knows opsets up to {newest}); "
                             "export the model with an older opset", path=path, field="opset_import")
        if opset.domain in ("", "ai.onnx") and opset.version < 1:
            raise InputError(f"{where}opset {opset.version} is not a valid opset version", path=path,
                             field="opset_import")


def unique_node_names(model: onnx.ModelProto) -> list[str]:
    """Rename nodes that share a name with an earlier node of the same graph (in place).

    ONNX allows duplicate node names but onnxruntime refuses to load such a model, and
    groups are named after their nodes. The first node keeps its name, the next get `_1`,
    `_2`, ...; empty names are left alone. Returns the names that were duplicated.
    """
    duplicated = []

    def visit(graph):
        taken = {n.name for n in graph.node}
        seen = set()
        for node in graph.node:
            if node.name and node.name in seen:
                duplicated.append(node.name)
                k = 1
                while f"{node.name}_{k}" in taken:
                    k += 1
                node.name = f"{node.name}_{k}"
                taken.add(node.name)
            seen.add(node.name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    return sorted(set(duplicated))


SHAPE_ONLY_ABOVE = 1024  # elements: initializers at least this big are declared, not copied, for shape inference


def shape_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` for shape inference: large initializers become graph inputs of their type and shape.

    Shape inference reads the values of small constants (Reshape targets, Slice bounds) but only the
    shapes of weights, and copying a 100 MB proto to infer shapes cost seconds per call.
    """
    graph = onnx.GraphProto()
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    declared = {v.name for v in model.graph.input}
    for t in model.graph.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) >= SHAPE_ONLY_ABOVE:
            if t.name not in declared:
                graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            graph.initializer.append(t)
    out = onnx.ModelProto()
    out.ir_version = max(model.ir_version, 4)  # initializers need not be listed as inputs from IR 4 on
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.graph.CopyFrom(graph)
    return out


def infer_shapes(model: onnx.ModelProto, *, strict: bool = False, data_prop: bool = False) -> onnx.ModelProto:
    """onnx shape inference (with `data_prop`, shape values computed by Shape/Gather/Concat... are followed
    too); models above the protobuf limit go through files (the path API)."""
    if model.ByteSize() < EXTERNAL_DATA_ABOVE:
        return onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict, data_prop=data_prop)
    with tempfile.TemporaryDirectory(prefix="onnxprune-", dir=scratch.directory()) as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(src), save_as_external_data=True, location="in.onnx.data")
        onnx.shape_inference.infer_shapes_path(str(src), str(dst), check_type=strict, strict_mode=strict,
                                               data_prop=data_prop)
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


def model_file_size(path) -> int | None:
    """Bytes on disk of a model file plus the external data files it names (None if unknown)."""
    path = Path(path)
    try:
        total = path.stat().st_size
    except OSError:
        return None
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
                try:
                    total += (path.parent / entry.value).stat().st_size
                except (OSError, ValueError):
                    pass
    return total


def external_data_name(output) -> str:
    """The external data file written beside `output` (OUT.data) when the model needs one."""
    return Path(output).name + ".data"


def check_output_path(output, model_path=None, *, force: bool = False, external_data: bool = False) -> Path:
    """Refuse output paths that cannot be written safely, before any work is done.

    With `external_data`, OUT.data is checked too: it must not be the input's own data file,
    a directory, or (without `force`) an existing file.
    """
    output = Path(output)
    if model_path is not None and output.resolve() == Path(model_path).resolve():
        raise InputError(f"output path is the input model itself: {output} (choose another -o)", path=output)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output directory does not exist: {parent}", path=parent)
    if not parent.is_dir():
        raise InputError(f"output directory is not a directory: {parent}", path=parent)
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory is not writable: {parent}", path=parent)
    if output.is_dir():
        raise InputError(f"output path is a directory: {output}", path=output)
    if output.exists() and not force:
        raise InputError(f"output file exists: {output} (use --force to overwrite)", path=output)
    if external_data:
        data = output.parent / external_data_name(output)
        if model_path is not None and data.resolve() in _external_files(model_path):
            raise InputError(f"output data file {data} is the input model's own external data (choose another -o)",
                             path=data)
        if data.is_dir():
            raise InputError(f"output data path is a directory: {data}", path=data)
        if data.exists() and not force:
            raise InputError(f"output data file exists: {data} (use --force to overwrite)", path=data)
    return output


def _external_files(model_path) -> set[Path]:
    model_path = Path(model_path)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return set()
    return {(model_path.parent / e.value).resolve() for t in _all_tensors(model)
            if t.data_location == onnx.TensorProto.EXTERNAL for e in t.external_data if e.key == "location"}


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
            raise InputError(f"cannot write to {parent}: {e.strerror or e}", path=parent) from None
        self.path = self._tmpdir / self.destination.name
        if external_data is None:
            external_data = uses_external_data(model) or model.ByteSize() > EXTERNAL_DATA_ABOVE
        self.data_name = external_data_name(self.destination) if external_data else None
        try:
            if external_data:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)  # saving as external data rewrites tensors in place
                # onnx's own conversion refuses a location that exists relative to the current
                # directory (not the model's), so an earlier OUT.data there would stop --force:
                # mark the tensors ourselves; save_model then writes them beside self.path.
                for tensor in copy.graph.initializer:
                    if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                        external_data_helper.set_external_data(tensor, self.data_name)
                onnx.save_model(copy, str(self.path))
            else:
                onnx.save_model(model, str(self.path))
        except (OSError, ValueError) as e:
            self.discard()
            raise InputError(f"cannot write {self.destination}: {getattr(e, 'strerror', None) or e}",
                             path=self.destination) from None

    def commit(self) -> Path:
        """Rename into place: the data file first, so that OUT never names data that is not there.

        With external data the two renames are each atomic; a reader between them sees the
        old OUT with the new OUT.data only if an earlier run wrote both (--force).
        """
        try:
            if self.data_name:
                data = self._tmpdir / self.data_name
                if data.exists():
                    os.replace(data, self.destination.parent / self.data_name)
            os.replace(self.path, self.destination)
        except OSError as e:
            raise InputError(f"cannot write {self.destination}: {e.strerror or e}", path=self.destination) from None
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
        raise InputError(f"directory does not exist: {parent}", path=parent)
    if path.is_dir():
        raise InputError(f"path is a directory: {path}", path=path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=path.suffix, dir=parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}", path=path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

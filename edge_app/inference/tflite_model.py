"""Reading and writing ``.tflite`` model files: the one place that touches their bytes.

A TFLite model is a FlatBuffer (schema ``tflite/schema.fbs``, file identifier ``TFL3``).
This module uses the schema's generated Python code that the runtime ships
(``ai_edge_litert/schema_py_generated.py``, or TensorFlow's copy): the lazy accessors
(``root(data)``, no object tree: cheap enough for every start-up) to read, and the object
API (``load(data)`` -> ``ModelT``, change it, ``pack(model)``) to write.

The TFLite Support layout on top of that, which other tools read too: a metadata
FlatBuffer in a buffer named ``TFLITE_METADATA`` (``get_metadata_buffer`` /
``set_metadata_buffer``) and a zip of associated files (the labels) appended after the
model (``append_files`` / ``read_files``).

Typical surgery::

    model = tflite_model.load(path.read_bytes())
    ...  # change model.subgraphs[0], model.buffers, model.operatorCodes
    data = tflite_model.pack(model)
    data = tflite_model.append_files(data, {"labels.txt": text.encode()})

Every failure to parse becomes one ``ModelError`` naming ``where`` (a path or a name).

Cost: importing the generated schema module takes ~0.2 s and ~6 MB of RSS (measured on
the x86 development machine, more on a Pi), so the default model's start-up path never
imports it: labels come from the appended zip (``zipfile``), ``model.py`` reads metadata
only for float models, and ``model_report`` imports the reader inside ``model_info``.
"""

from __future__ import annotations

import functools
import io
import zipfile
from types import ModuleType

import numpy as np

from edge_app.errors import ModelError

MODEL_IDENTIFIER = b"TFL3"
METADATA_BUFFER_NAME = "TFLITE_METADATA"
MIN_RUNTIME_VERSION_NAME = "min_runtime_version"
BUFFER_ALIGNMENT = 16  # as TFLite's own writer: SIMD kernels may read weights in place
# A fixed timestamp for appended zips: the same files give the same bytes.
_ZIP_DATE = (2018, 8, 2, 0, 0, 0)


@functools.cache
def schema() -> ModuleType:
    """The generated TFLite schema module (ai_edge_litert's, else TensorFlow's)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated  # type: ignore
        except ImportError as exc:
            raise ModelError(
                "reading model files needs the TFLite schema module of ai-edge-litert "
                "(pip install ai-edge-litert)"
            ) from exc
    return schema_py_generated


def _where(where: str | None) -> str:
    return f": {where}" if where else ""


def check_identifier(data: bytes | bytearray | memoryview, where: str | None = None) -> None:
    if len(data) < 8 or bytes(data[4:8]) != MODEL_IDENTIFIER:
        raise ModelError(f"not a TFLite model (no TFL3 flatbuffer identifier){_where(where)}")


def root(data: bytes | bytearray | memoryview, where: str | None = None):
    """The model's root table with lazy accessors (``schema().Model``); nothing is copied."""
    check_identifier(data, where)
    try:
        model = schema().Model.GetRootAs(data, 0)
        _check_buffers(model, len(data))
    except ModelError as exc:
        raise ModelError(f"corrupt or truncated TFLite model{_where(where)}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - generated code raises anything on garbage
        raise ModelError(f"corrupt or truncated TFLite model{_where(where)}: {exc}") from exc
    return model


def _check_buffers(model, size: int) -> None:
    """Every buffer the model names lies inside the file: a truncated download or copy
    is refused here, not read as garbage weights (the accessors do no bounds checks)."""
    for i in range(model.BuffersLength()):
        table = model.Buffers(i)._tab
        field = table.Offset(4)  # Buffer.data
        if field and table.Vector(field) + table.VectorLen(field) > size:
            raise ModelError("a weight buffer lies past the end of the file (truncated)")


def load(data: bytes | bytearray | memoryview, where: str | None = None):
    """The whole model as a mutable object tree (``schema().ModelT``).

    Buffer contents and other vectors come as numpy arrays (views of ``data``; keep it).
    """
    model = root(data, where)
    try:
        return schema().ModelT.InitFromObj(model)
    except Exception as exc:  # noqa: BLE001 - out-of-range offsets raise anything
        raise ModelError(f"corrupt or truncated TFLite model{_where(where)}: {exc}") from exc


class _AlignedBufferT:
    """Packs a ``BufferT`` with its data aligned to 16 bytes (the generated Pack aligns
    only to the element size, 1 byte), as TFLite's converter writes them."""

    def __init__(self, buffer):
        self.buffer = buffer

    def Pack(self, builder):  # noqa: N802 - the object API's name
        s = schema()
        data = self.buffer.data
        offset = None
        if data is not None:
            payload = np.asarray(data, np.uint8).tobytes()
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            offset = builder.EndVector()
        s.BufferStart(builder)
        if offset is not None:
            s.BufferAddData(builder, offset)
        s.BufferAddOffset(builder, self.buffer.offset)
        s.BufferAddSize(builder, self.buffer.size)
        return s.BufferEnd(builder)


def pack(model) -> bytes:
    """Serialize a ``ModelT`` (deterministic: the same tree gives the same bytes)."""
    import flatbuffers

    buffers = model.buffers
    model.buffers = [_AlignedBufferT(b) for b in buffers or []]
    try:
        size = sum(len(b.data) for b in buffers or [] if b.data is not None)
        builder = flatbuffers.Builder(size + (1 << 16))
        builder.Finish(model.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    finally:
        model.buffers = buffers
    return bytes(builder.Output())


def buffer_bytes(model, index: int) -> bytes:
    """Contents of buffer ``index`` of a ``ModelT`` (b"" when empty)."""
    data = model.buffers[index].data
    return b"" if data is None else np.asarray(data, np.uint8).tobytes()


def get_metadata_buffer(model, name: str = METADATA_BUFFER_NAME) -> bytes | None:
    """The buffer a ``Model.metadata`` entry ``name`` points to, from a ``ModelT``."""
    for entry in model.metadata or []:
        if _text(entry.name) == name:
            return buffer_bytes(model, entry.buffer)
    return None


def set_metadata_buffer(model, name: str, data: bytes | None) -> None:
    """Set (or with ``None`` remove) the ``Model.metadata`` entry ``name`` of a ``ModelT``.

    A replaced entry keeps its buffer index; a removed one leaves an empty buffer, so no
    tensor's buffer index changes.
    """
    s = schema()
    entries = list(model.metadata or [])
    for entry in entries:
        if _text(entry.name) == name:
            if data is None:
                model.buffers[entry.buffer].data = None
                entries.remove(entry)
            else:
                model.buffers[entry.buffer].data = np.frombuffer(data, np.uint8)
            model.metadata = entries or None
            return
    if data is None:
        return
    buffer = s.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = s.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    entries.append(entry)
    model.metadata = entries


def read_metadata_entry(
    data: bytes | bytearray | memoryview, name: str, where: str | None = None
) -> bytes | None:
    """A ``Model.metadata`` buffer straight from the file's bytes (lazy, no object tree)."""
    model = root(data, where)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _text(entry.Name()) != name:
            continue
        index = entry.Buffer()
        if not 0 <= index < model.BuffersLength():
            raise ModelError(
                f"corrupt TFLite model{_where(where)}: metadata {name!r} names buffer {index}"
            )
        buffer = model.Buffers(index)
        if buffer.DataLength():
            return buffer.DataAsNumpy().tobytes()
        # Models over 2 GB keep buffer contents after the flatbuffer: offset/size fields.
        if buffer.Offset() > 1:
            start, size = buffer.Offset(), buffer.Size()
            if start + size > len(data):
                raise ModelError(
                    f"corrupt TFLite model{_where(where)}: metadata {name!r} lies past the end"
                )
            return bytes(data[start : start + size])
        return b""
    return None


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def append_files(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """The model followed by a zip of ``files`` (TFLite Support's associated files).

    Stored (not compressed), sorted by name, fixed timestamps: deterministic bytes, and a
    reader can map the files in place.
    """
    out = io.BytesIO()
    out.write(model_bytes)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return out.getvalue()


def read_files(model_bytes: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Files in the zip appended to a model (name -> contents); {} when there is none."""
    # zipfile finds the end-of-central-directory record at the end and copes with the
    # model bytes in front of the archive.
    try:
        archive = zipfile.ZipFile(io.BytesIO(bytes(model_bytes)))
    except zipfile.BadZipFile:
        return {}
    try:
        with archive:
            return {
                info.filename: archive.read(info)
                for info in archive.infolist()
                if not info.is_dir()
            }
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelError(f"the model's embedded files are corrupt: {exc}") from exc


def opcode_name(opcode) -> str:
    """The builtin operator's name of an ``OperatorCodeT`` or lazy ``OperatorCode``."""
    if hasattr(opcode, "BuiltinCode"):
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    else:
        code = max(opcode.builtinCode, opcode.deprecatedBuiltinCode)
    return _builtin_names().get(code, f"BUILTIN_{code}")


@functools.cache
def _builtin_names() -> dict[int, str]:
    ops = schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def tensor_type_name(code: int) -> str:
    return _type_names().get(code, f"type {code}")


@functools.cache
def _type_names() -> dict[int, str]:
    types = schema().TensorType
    return {v: k for k, v in vars(types).items() if not k.startswith("_") and isinstance(v, int)}

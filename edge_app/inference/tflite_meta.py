"""Reading what a ``.tflite`` file says about itself, without any extra package.

A TFLite model is a FlatBuffer (schema ``tflite/schema.fbs``, identifier ``TFL3``). The
TFLite Support tools store a second FlatBuffer, the *metadata* (``metadata_schema.fbs``,
identifier ``M001``), in one of the model's buffers named ``TFLITE_METADATA``, and append
a zip holding the associated files (the labels). This module reads just the parts the app
uses: names, normalization, associated files, embedded files and fused activations.

It is a small hand-written reader (``struct`` over a ``memoryview``) rather than the
``flatbuffers``/``tflite-support`` packages: those are heavy on a Pi and the second one
has no wheels for recent Pythons. Every offset is bounds-checked, so a truncated or
garbage file gives one ``ModelError`` instead of an ``IndexError``/``struct.error``.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field

from edge_app.errors import ModelError

MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
METADATA_BUFFER_NAME = "TFLITE_METADATA"
MIN_RUNTIME_VERSION_NAME = "min_runtime_version"

# metadata_schema.fbs: enum AssociatedFileType
ASSOCIATED_FILE_TYPES = {
    0: "UNKNOWN",
    1: "DESCRIPTIONS",
    2: "TENSOR_AXIS_LABELS",
    3: "TENSOR_VALUE_LABELS",
    4: "TENSOR_AXIS_SCORE_CALIBRATION",
    5: "VOCABULARY",
}
# metadata_schema.fbs: union ProcessUnitOptions (type 1 = NormalizationOptions)
PROCESS_UNIT_NORMALIZATION = 1
# metadata_schema.fbs: union ContentProperties / enum ColorSpaceType
CONTENT_IMAGE_PROPERTIES = 2
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}

# schema.fbs: enum ActivationFunctionType
ACTIVATIONS = {0: "", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
# schema.fbs: union BuiltinOptions type -> slot of fused_activation_function in that table
_ACTIVATION_SLOT = {
    1: 3,  # Conv2DOptions
    2: 4,  # DepthwiseConv2DOptions
    5: 5,  # Pool2DOptions
    8: 0,  # FullyConnectedOptions
    10: 1,  # ConcatenationOptions
    11: 0,  # AddOptions
    21: 0,  # MulOptions
    28: 0,  # SubOptions
    29: 0,  # DivOptions
    49: 3,  # TransposeConvOptions
    106: 4,  # Conv3DOptions
}


class _Malformed(Exception):
    """Internal: an offset or length points outside the buffer."""


class _Table:
    """One FlatBuffers table: a position in the buffer plus its vtable."""

    __slots__ = ("buf", "pos", "_vtable", "_vtable_len")

    def __init__(self, buf: memoryview, pos: int):
        self.buf = buf
        self.pos = pos
        vtable = pos - _unpack(buf, "<i", pos)
        self._vtable = vtable
        self._vtable_len = _unpack(buf, "<H", vtable)
        if self._vtable_len < 4 or self._vtable_len % 2:
            raise _Malformed(f"bad vtable at {vtable}")
        _check(buf, vtable, self._vtable_len)

    def _field(self, slot: int) -> int | None:
        """Absolute position of field ``slot``, or None when the field is absent."""
        entry = 4 + 2 * slot
        if entry >= self._vtable_len:
            return None
        offset = _unpack(self.buf, "<H", self._vtable + entry)
        return self.pos + offset if offset else None

    def _deref(self, slot: int) -> int | None:
        where = self._field(slot)
        if where is None:
            return None
        return where + _unpack(self.buf, "<I", where)

    def scalar(self, slot: int, fmt: str, default=0):
        where = self._field(slot)
        return default if where is None else _unpack(self.buf, "<" + fmt, where)

    def string(self, slot: int) -> str | None:
        where = self._deref(slot)
        return None if where is None else _string_at(self.buf, where)

    def table(self, slot: int) -> _Table | None:
        where = self._deref(slot)
        return None if where is None else _Table(self.buf, where)

    def tables(self, slot: int) -> list[_Table]:
        start, count = self._vector(slot, 4)
        return [_Table(self.buf, p + _unpack(self.buf, "<I", p)) for p in _steps(start, count, 4)]

    def strings(self, slot: int) -> list[str]:
        start, count = self._vector(slot, 4)
        return [
            _string_at(self.buf, p + _unpack(self.buf, "<I", p)) for p in _steps(start, count, 4)
        ]

    def scalars(self, slot: int, fmt: str) -> list:
        size = struct.calcsize("<" + fmt)
        start, count = self._vector(slot, size)
        return list(struct.unpack_from(f"<{count}{fmt}", self.buf, start)) if count else []

    def bytes(self, slot: int) -> memoryview:
        start, count = self._vector(slot, 1)
        return self.buf[start : start + count]

    def _vector(self, slot: int, element_size: int) -> tuple[int, int]:
        where = self._deref(slot)
        if where is None:
            return 0, 0
        count = _unpack(self.buf, "<I", where)
        _check(self.buf, where + 4, count * element_size)
        return where + 4, count


def _steps(start: int, count: int, size: int) -> range:
    return range(start, start + count * size, size)


def _check(buf: memoryview, pos: int, size: int) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise _Malformed(f"{size} bytes at offset {pos} lie outside the {len(buf)}-byte buffer")


def _unpack(buf: memoryview, fmt: str, pos: int):
    _check(buf, pos, struct.calcsize(fmt))
    return struct.unpack_from(fmt, buf, pos)[0]


def _string_at(buf: memoryview, pos: int) -> str:
    length = _unpack(buf, "<I", pos)
    _check(buf, pos + 4, length)
    return bytes(buf[pos + 4 : pos + 4 + length]).decode("utf-8", errors="replace")


def _root(buf: memoryview, identifier: bytes, what: str) -> _Table:
    if len(buf) < 8 or bytes(buf[4:8]) != identifier:
        raise _Malformed(f"no {identifier.decode()} identifier: not {what}")
    return _Table(buf, _unpack(buf, "<I", 0))


def _model_root(model_bytes: bytes | bytearray | memoryview) -> _Table:
    buf = memoryview(model_bytes)
    if len(buf) < 8 or bytes(buf[4:8]) != MODEL_IDENTIFIER:
        raise ModelError("not a TFLite model (no TFL3 flatbuffer identifier)")
    return _root(buf, MODEL_IDENTIFIER, "a TFLite model")


def _guard(what: str):
    """Decorator: any malformed-buffer failure inside becomes one ModelError line."""

    def wrap(func):
        def guarded(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except ModelError:
                raise
            except (_Malformed, struct.error, IndexError, ValueError, OverflowError) as exc:
                raise ModelError(f"corrupt or truncated TFLite model ({what}: {exc})") from exc

        guarded.__name__ = func.__name__
        guarded.__doc__ = func.__doc__
        return guarded

    return wrap


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Normalization:
    """``(x - mean) / std`` per channel (one value means all channels)."""

    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class AssociatedFile:
    name: str
    type: str  # e.g. TENSOR_AXIS_LABELS
    description: str = ""
    locale: str = ""
    attached_to: str = "model"  # "model", "subgraph", "input:NAME" or "output:NAME"


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    description: str = ""
    normalization: Normalization | None = None
    color_space: str = ""  # RGB/GRAYSCALE for image tensors
    value_min: list[float] = field(default_factory=list)  # Stats.min
    value_max: list[float] = field(default_factory=list)  # Stats.max


@dataclass(frozen=True)
class ModelMetadata:
    name: str = ""
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    min_parser_version: str = ""
    inputs: list[TensorMetadata] = field(default_factory=list)
    outputs: list[TensorMetadata] = field(default_factory=list)
    associated_files: list[AssociatedFile] = field(default_factory=list)

    @property
    def input_normalization(self) -> Normalization | None:
        """The first input's normalization, the one an image classifier needs."""
        return self.inputs[0].normalization if self.inputs else None

    @property
    def labels_file(self) -> str | None:
        """Name of the output's label file (TENSOR_AXIS_LABELS), if the model has one."""
        for wanted in ("output:", ""):
            for item in self.associated_files:
                if item.type == "TENSOR_AXIS_LABELS" and item.attached_to.startswith(wanted):
                    return item.name
        return None


# --------------------------------------------------------------------------- readers


def _associated_files(table: _Table, slot: int, attached_to: str) -> list[AssociatedFile]:
    files = []
    for entry in table.tables(slot):
        files.append(
            AssociatedFile(
                name=entry.string(0) or "",
                description=entry.string(1) or "",
                type=ASSOCIATED_FILE_TYPES.get(entry.scalar(2, "b"), "UNKNOWN"),
                locale=entry.string(3) or "",
                attached_to=attached_to,
            )
        )
    return files


def _tensor_metadata(table: _Table, direction: str, files: list[AssociatedFile]) -> TensorMetadata:
    name = table.string(0) or ""
    normalization = None
    for unit in table.tables(4):  # process_units; ProcessUnit{options_type, options}
        if unit.scalar(0, "B") == PROCESS_UNIT_NORMALIZATION and normalization is None:
            options = unit.table(1)
            if options is not None:
                normalization = Normalization(
                    mean=[float(v) for v in options.scalars(0, "f")],
                    std=[float(v) for v in options.scalars(1, "f")],
                )
    color_space = ""
    content = table.table(3)
    if content is not None and content.scalar(0, "B") == CONTENT_IMAGE_PROPERTIES:
        properties = content.table(1)
        if properties is not None:
            color_space = COLOR_SPACES.get(properties.scalar(0, "b"), "UNKNOWN")
    stats = table.table(5)
    files.extend(_associated_files(table, 6, f"{direction}:{name}"))
    return TensorMetadata(
        name=name,
        description=table.string(1) or "",
        normalization=normalization,
        color_space=color_space,
        value_max=[float(v) for v in stats.scalars(0, "f")] if stats else [],
        value_min=[float(v) for v in stats.scalars(1, "f")] if stats else [],
    )


def _buffer_data(model: _Table, index: int) -> memoryview:
    buffers = model.tables(4)
    if not 0 <= index < len(buffers):
        raise _Malformed(f"buffer index {index} out of range ({len(buffers)} buffers)")
    buffer = buffers[index]
    data = buffer.bytes(0)
    if len(data):
        return data
    # Models over 2 GB keep buffer contents after the flatbuffer: offset/size fields.
    offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
    if offset > 1:
        _check(model.buf, offset, size)
        return model.buf[offset : offset + size]
    return data


def _named_metadata(model: _Table) -> dict[str, int]:
    """Model.metadata entries: name -> buffer index."""
    return {(entry.string(0) or ""): entry.scalar(1, "I") for entry in model.tables(6)}


@_guard("metadata")
def read_model_metadata(model_bytes: bytes | bytearray | memoryview) -> ModelMetadata | None:
    """The TFLite Support metadata of a model, or None when it carries none."""
    model = _model_root(model_bytes)
    index = _named_metadata(model).get(METADATA_BUFFER_NAME)
    if index is None:
        return None
    root = _root(_buffer_data(model, index), METADATA_IDENTIFIER, "TFLite metadata")
    files = _associated_files(root, 6, "model")
    inputs: list[TensorMetadata] = []
    outputs: list[TensorMetadata] = []
    subgraphs = root.tables(3)
    if subgraphs:
        main = subgraphs[0]  # TFLite runs subgraph 0; the others are control flow bodies
        inputs = [_tensor_metadata(t, "input", files) for t in main.tables(2)]
        outputs = [_tensor_metadata(t, "output", files) for t in main.tables(3)]
        files.extend(_associated_files(main, 4, "subgraph"))
    return ModelMetadata(
        name=root.string(0) or "",
        description=root.string(1) or "",
        version=root.string(2) or "",
        author=root.string(4) or "",
        license=root.string(5) or "",
        min_parser_version=root.string(7) or "",
        inputs=inputs,
        outputs=outputs,
        associated_files=files,
    )


@_guard("min_runtime_version")
def min_runtime_version(model_bytes: bytes | bytearray | memoryview) -> str:
    """The converter's ``min_runtime_version`` entry ("" when absent)."""
    model = _model_root(model_bytes)
    index = _named_metadata(model).get(MIN_RUNTIME_VERSION_NAME)
    if index is None:
        return ""
    return bytes(_buffer_data(model, index)).split(b"\0", 1)[0].decode("ascii", "replace")


@_guard("operators")
def operator_activations(model_bytes: bytes | bytearray | memoryview) -> list[str]:
    """Fused activation of each operator of subgraph 0, in node order ("" for none).

    The interpreter's node indices equal these operator indices, so the list lines up
    with ``interpreter._get_ops_details()``.
    """
    model = _model_root(model_bytes)
    subgraphs = model.tables(2)
    if not subgraphs:
        return []
    activations = []
    for operator in subgraphs[0].tables(3):
        slot = _ACTIVATION_SLOT.get(operator.scalar(3, "B"))
        options = operator.table(4) if slot is not None else None
        code = options.scalar(slot, "b") if options is not None else 0
        activations.append(ACTIVATIONS.get(code, f"activation {code}"))
    return activations


def embedded_files(model_bytes: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Files in the zip appended to the model (name -> contents); {} when there is none."""
    data = bytes(model_bytes)
    # zipfile finds the end-of-central-directory record at the end and copes with the
    # model bytes in front of the archive.
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
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

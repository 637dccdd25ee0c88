"""What a ``.tflite`` file says about itself: TFLite Support metadata, read and written.

The model itself is read through the generated TFLite schema (``tflite_model``: lazy
accessors, no object tree). The TFLite Support *metadata* is a second FlatBuffer
(``metadata_schema.fbs``, identifier ``M001``) in the model's buffer named
``TFLITE_METADATA``, next to a zip of associated files (the labels) appended to the model.

No installable package ships generated code for ``metadata_schema.fbs`` that fits a Pi:
neither ai-edge-litert nor ``tflite`` has it, and ``tflite-support`` (last release 2023)
has no wheels for current Pythons (Raspberry Pi OS Trixie has 3.13) and pulls in a
protobuf stack. So the few metadata tables the app uses are read and written here by
hand, with the ``flatbuffers`` runtime's ``Table`` and ``Builder`` (the field slots below
are those of ``metadata_schema.fbs``). Every failure to parse becomes one ``ModelError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import flatbuffers
from flatbuffers import number_types as N
from flatbuffers.table import Table

from edge_app.errors import ModelError
from edge_app.inference import tflite_model
from edge_app.inference.tflite_model import (
    METADATA_BUFFER_NAME,
    MIN_RUNTIME_VERSION_NAME,
    MODEL_IDENTIFIER,
)

__all__ = [
    "METADATA_BUFFER_NAME",
    "METADATA_IDENTIFIER",
    "MIN_RUNTIME_VERSION_NAME",
    "MODEL_IDENTIFIER",
    "AssociatedFile",
    "ModelMetadata",
    "Normalization",
    "TensorMetadata",
    "build_metadata",
    "embedded_files",
    "min_runtime_version",
    "operator_activations",
    "read_model_metadata",
]

METADATA_IDENTIFIER = b"M001"

# metadata_schema.fbs: enum AssociatedFileType
ASSOCIATED_FILE_TYPES = {
    0: "UNKNOWN",
    1: "DESCRIPTIONS",
    2: "TENSOR_AXIS_LABELS",
    3: "TENSOR_VALUE_LABELS",
    4: "TENSOR_AXIS_SCORE_CALIBRATION",
    5: "VOCABULARY",
}
_FILE_TYPE_CODES = {name: code for code, name in ASSOCIATED_FILE_TYPES.items()}
# metadata_schema.fbs: union ProcessUnitOptions (type 1 = NormalizationOptions)
PROCESS_UNIT_NORMALIZATION = 1
# metadata_schema.fbs: union ContentProperties (1 FeatureProperties, 2 ImageProperties)
CONTENT_FEATURE_PROPERTIES = 1
CONTENT_IMAGE_PROPERTIES = 2
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
_COLOR_SPACE_CODES = {name: code for code, name in COLOR_SPACES.items()}

# schema.fbs: enum ActivationFunctionType
ACTIVATIONS = {0: "", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


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


# --------------------------------------------------------------------------- reading


class _Malformed(Exception):
    """Internal: an offset or length points outside the buffer."""


class _Meta:
    """One metadata table over the flatbuffers runtime's ``Table``, field by slot number.

    Offsets are checked against the buffer before they are followed: the runtime itself
    does not check, and a damaged file must give a ModelError, not garbage or a crash.
    """

    __slots__ = ("_t",)

    def __init__(self, buf: bytes, pos: int):
        _check(buf, pos, 4)
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        _check(buf, vtable, 4)
        self._t = Table(buf, pos)

    def _offset(self, slot: int) -> int:
        return self._t.Offset(4 + 2 * slot)

    def _target(self, slot: int) -> int | None:
        off = self._offset(slot)
        if not off:
            return None
        where = self._t.Pos + off
        _check(self._t.Bytes, where, 4)
        return self._t.Indirect(where)

    def scalar(self, slot: int, flags, default=0):
        off = self._offset(slot)
        if not off:
            return default
        _check(self._t.Bytes, self._t.Pos + off, flags.bytewidth)
        return self._t.Get(flags, self._t.Pos + off)

    def string(self, slot: int) -> str:
        where = self._target(slot)
        if where is None:
            return ""
        length = _u32(self._t.Bytes, where)
        _check(self._t.Bytes, where + 4, length)
        return bytes(self._t.Bytes[where + 4 : where + 4 + length]).decode("utf-8", "replace")

    def table(self, slot: int) -> _Meta | None:
        where = self._target(slot)
        return None if where is None else _Meta(self._t.Bytes, where)

    def _vector(self, slot: int, size: int) -> tuple[int, int]:
        where = self._target(slot)
        if where is None:
            return 0, 0
        count = _u32(self._t.Bytes, where)
        _check(self._t.Bytes, where + 4, count * size)
        return where + 4, count

    def tables(self, slot: int) -> list[_Meta]:
        start, count = self._vector(slot, 4)
        buf = self._t.Bytes
        return [_Meta(buf, p + _u32(buf, p)) for p in range(start, start + 4 * count, 4)]

    def floats(self, slot: int) -> list[float]:
        start, count = self._vector(slot, 4)
        return [float(v) for v in struct.unpack_from(f"<{count}f", self._t.Bytes, start)]


def _check(buf, pos: int, size: int) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise _Malformed(f"{size} bytes at offset {pos} lie outside the {len(buf)}-byte buffer")


def _u32(buf, pos: int) -> int:
    _check(buf, pos, 4)
    return struct.unpack_from("<I", buf, pos)[0]


def _guard(what: str):
    """Decorator: any malformed-buffer failure inside becomes one ModelError line."""

    def wrap(func):
        def guarded(*args, **kwargs):
            where = kwargs.get("where")  # a path or name the error names
            try:
                return func(*args, **kwargs)
            except ModelError:
                raise
            # The generated accessors do no bounds checks: damage surfaces as any of these.
            except (
                _Malformed,
                struct.error,
                IndexError,
                ValueError,
                OverflowError,
                TypeError,
                MemoryError,
            ) as exc:
                at = f" {where}" if where else ""
                raise ModelError(f"corrupt or truncated TFLite model{at} ({what}: {exc})") from exc

        guarded.__name__ = func.__name__
        guarded.__doc__ = func.__doc__
        return guarded

    return wrap


def _associated_files(table: _Meta, slot: int, attached_to: str) -> list[AssociatedFile]:
    return [
        AssociatedFile(
            name=entry.string(0),
            description=entry.string(1),
            type=ASSOCIATED_FILE_TYPES.get(entry.scalar(2, N.Int8Flags), "UNKNOWN"),
            locale=entry.string(3),
            attached_to=attached_to,
        )
        for entry in table.tables(slot)
    ]


def _tensor_metadata(table: _Meta, direction: str, files: list[AssociatedFile]) -> TensorMetadata:
    name = table.string(0)
    normalization = None
    for unit in table.tables(4):  # process_units; ProcessUnit{options_type, options}
        if unit.scalar(0, N.Uint8Flags) == PROCESS_UNIT_NORMALIZATION and normalization is None:
            options = unit.table(1)
            if options is not None:
                normalization = Normalization(mean=options.floats(0), std=options.floats(1))
    color_space = ""
    content = table.table(3)
    if content is not None and content.scalar(0, N.Uint8Flags) == CONTENT_IMAGE_PROPERTIES:
        properties = content.table(1)
        if properties is not None:
            color_space = COLOR_SPACES.get(properties.scalar(0, N.Int8Flags), "UNKNOWN")
    stats = table.table(5)
    files.extend(_associated_files(table, 6, f"{direction}:{name}"))
    return TensorMetadata(
        name=name,
        description=table.string(1),
        normalization=normalization,
        color_space=color_space,
        value_max=stats.floats(0) if stats else [],
        value_min=stats.floats(1) if stats else [],
    )


def parse_metadata(buf: bytes) -> ModelMetadata:
    """A ``TFLITE_METADATA`` buffer's contents as a ``ModelMetadata``."""
    if len(buf) < 8 or bytes(buf[4:8]) != METADATA_IDENTIFIER:
        raise _Malformed("no M001 identifier: not TFLite metadata")
    root = _Meta(buf, _u32(buf, 0))
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
        name=root.string(0),
        description=root.string(1),
        version=root.string(2),
        author=root.string(4),
        license=root.string(5),
        min_parser_version=root.string(7),
        inputs=inputs,
        outputs=outputs,
        associated_files=files,
    )


@_guard("metadata")
def read_model_metadata(
    model_bytes: bytes | bytearray | memoryview, where: str | None = None
) -> ModelMetadata | None:
    """The TFLite Support metadata of a model, or None when it carries none."""
    buf = tflite_model.read_metadata_entry(model_bytes, METADATA_BUFFER_NAME, where)
    return None if buf is None else parse_metadata(buf)


@_guard("min_runtime_version")
def min_runtime_version(
    model_bytes: bytes | bytearray | memoryview, where: str | None = None
) -> str:
    """The converter's ``min_runtime_version`` entry ("" when absent)."""
    buf = tflite_model.read_metadata_entry(model_bytes, MIN_RUNTIME_VERSION_NAME, where)
    return "" if buf is None else buf.split(b"\0", 1)[0].decode("ascii", "replace")


@_guard("operators")
def operator_activations(
    model_bytes: bytes | bytearray | memoryview, where: str | None = None
) -> list[str]:
    """Fused activation of each operator of subgraph 0, in node order ("" for none).

    The interpreter's node indices equal these operator indices, so the list lines up
    with ``interpreter._get_ops_details()``.
    """
    s = tflite_model.schema()
    model = tflite_model.root(model_bytes, where)
    if not model.SubgraphsLength():
        return []
    graph = model.Subgraphs(0)
    activations = []
    for i in range(graph.OperatorsLength()):
        options_table = graph.Operators(i).BuiltinOptions()
        kind = _OPTIONS_WITH_ACTIVATION.get(graph.Operators(i).BuiltinOptionsType())
        code = 0
        if kind is not None and options_table is not None:
            options = getattr(s, kind)()
            options.Init(options_table.Bytes, options_table.Pos)
            code = options.FusedActivationFunction()
        activations.append(ACTIVATIONS.get(code, f"activation {code}"))
    return activations


def _options_with_activation() -> dict[int, str]:
    """BuiltinOptions type -> options class name, for the options with an activation."""
    names = (
        "Conv2DOptions",
        "DepthwiseConv2DOptions",
        "Pool2DOptions",
        "FullyConnectedOptions",
        "ConcatenationOptions",
        "AddOptions",
        "MulOptions",
        "SubOptions",
        "DivOptions",
        "TransposeConvOptions",
        "Conv3DOptions",
    )
    try:
        options = tflite_model.schema().BuiltinOptions
    except ModelError:
        return {}
    return {getattr(options, n): n for n in names if hasattr(options, n)}


_OPTIONS_WITH_ACTIVATION = _options_with_activation()


def embedded_files(model_bytes: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Files in the zip appended to the model (name -> contents); {} when there is none."""
    return tflite_model.read_files(model_bytes)


# --------------------------------------------------------------------------- writing


def build_metadata(meta: ModelMetadata) -> bytes:
    """``meta`` as a ``TFLITE_METADATA`` FlatBuffer (identifier M001).

    Writes what ``read_model_metadata`` reads: names, descriptions, image properties and
    normalization of inputs, feature properties of outputs, stats and associated files
    (those with ``attached_to`` "model", "subgraph" or "input:/output:NAME"). Deterministic.
    """
    b = flatbuffers.Builder(1024)

    def string(text: str) -> int | None:
        return b.CreateString(text) if text else None

    def table(fields: list[tuple[int, str, object]]) -> int:
        """fields: (slot, kind, value); kind "off" (an offset), "u8", "i8"."""
        b.StartObject(max(slot for slot, _, _ in fields) + 1 if fields else 0)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            elif kind == "i8":
                b.PrependInt8Slot(slot, value, 0)
        return b.EndObject()

    def offsets(items: list[int]) -> int | None:
        if not items:
            return None
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def floats(values: list[float]) -> int | None:
        if not values:
            return None
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependFloat32(value)
        return b.EndVector()

    def files(attached_to: str) -> int | None:
        built = []
        for item in meta.associated_files:
            if item.attached_to != attached_to:
                continue
            name, desc, locale = string(item.name), string(item.description), string(item.locale)
            kind = _FILE_TYPE_CODES.get(item.type, 0)
            built.append(
                table([(0, "off", name), (1, "off", desc), (2, "i8", kind), (3, "off", locale)])
            )
        return offsets(built)

    def tensor(t: TensorMetadata, direction: str) -> int:
        name, desc = string(t.name), string(t.description)
        if t.color_space:
            props = table([(0, "i8", _COLOR_SPACE_CODES.get(t.color_space, 0))])
            content = table([(0, "u8", CONTENT_IMAGE_PROPERTIES), (1, "off", props)])
        else:
            props = table([])
            content = table([(0, "u8", CONTENT_FEATURE_PROPERTIES), (1, "off", props)])
        units = None
        if t.normalization is not None:
            mean, std = floats(t.normalization.mean), floats(t.normalization.std)
            options = table([(0, "off", mean), (1, "off", std)])
            units = offsets([table([(0, "u8", PROCESS_UNIT_NORMALIZATION), (1, "off", options)])])
        stats = None
        if t.value_max or t.value_min:
            vmax, vmin = floats(t.value_max), floats(t.value_min)
            stats = table([(0, "off", vmax), (1, "off", vmin)])
        attached = files(f"{direction}:{t.name}")
        return table(
            [
                (0, "off", name),
                (1, "off", desc),
                (3, "off", content),
                (4, "off", units),
                (5, "off", stats),
                (6, "off", attached),
            ]
        )

    inputs = offsets([tensor(t, "input") for t in meta.inputs])
    outputs = offsets([tensor(t, "output") for t in meta.outputs])
    subgraph_files = files("subgraph")
    subgraph = table([(2, "off", inputs), (3, "off", outputs), (4, "off", subgraph_files)])
    subgraphs = offsets([subgraph])
    model_files = files("model")
    name, desc, version = string(meta.name), string(meta.description), string(meta.version)
    author, license_, parser = (
        string(meta.author),
        string(meta.license),
        string(meta.min_parser_version),
    )
    root = table(
        [
            (0, "off", name),
            (1, "off", desc),
            (2, "off", version),
            (3, "off", subgraphs),
            (4, "off", author),
            (5, "off", license_),
            (6, "off", model_files),
            (7, "off", parser),
        ]
    )
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())

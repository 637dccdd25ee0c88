"""A full-int8 model derived from a uint8 quantization-aware-trained one, without TensorFlow.

A uint8 QAT model already holds a learned range for every activation, so no calibration
data is needed and every activation keeps its exact quantization grid:

- activations (model input and output too): same scale, zero point - 128, type int8;
- CONV_2D / DEPTHWISE_CONV_2D weights: TFLite's and XNNPACK's int8 kernels want
  symmetric weights (zero point 0), per output channel: the uint8 weights are
  dequantized, then requantized with scale max|w| / 127 per channel (axis 0 for CONV_2D,
  axis 3 for DEPTHWISE_CONV_2D); an all-zero channel gets scale 1 so its bias stays finite;
  FULLY_CONNECTED weights the same, with one scale for the tensor;
- biases: int32 at scale input scale x that channel's weight scale, rounded;
- SOFTMAX output: scale 1/256, zero point -128; operator versions those the runtime
  registers for int8.

The result is deterministic (same input bytes, same output bytes) and carries TFLite
Support metadata (normalization, labels) plus the labels zip. ``self_check`` runs source
and result side by side and refuses a result that disagrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edge_app.errors import ModelError
from edge_app.inference import tflite_meta, tflite_model

# Operators whose int8 kernels compute exactly what their uint8 ones do on the shifted
# grid; anything else is refused (with its name) rather than converted approximately.
# Value: the lowest operator version with int8 support.
INT8_VERSIONS = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "AVERAGE_POOL_2D": 2,
    "MAX_POOL_2D": 2,
    "SOFTMAX": 2,
    "RESHAPE": 1,
    "SQUEEZE": 1,
    "ADD": 2,
    "CONCATENATION": 2,
}
# Weighted operators: the axis of the output channel in their weights (None: per tensor).
WEIGHT_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": None}
MIN_RUNTIME_VERSION = "1.14.0"  # per-channel int8 convolutions
DEFAULT_LABELS_NAME = "labels.txt"
SOFTMAX_SCALE = 1.0 / 256.0
SOFTMAX_ZERO_POINT = -128


class ConversionRefused(ModelError):
    """The model cannot be converted exactly; the message says why."""


@dataclass(frozen=True)
class Conversion:
    """The derived model and what went into it."""

    model: bytes
    source_sha256: str
    labels_name: str  # "" when no labels were embedded
    weighted_ops: int


def convert(
    source: bytes,
    *,
    labels: bytes | None = None,
    labels_name: str = "",
    where: str = "",
) -> Conversion:
    """Derive the full-int8 model from the uint8 model ``source`` (bytes of a .tflite).

    Labels: ``labels`` (a file's bytes) when given, else those embedded in ``source``,
    else none. Raises ``ConversionRefused`` naming ``where`` when the model is not a
    uint8 model made only of operators this derivation handles exactly.
    """
    where = where or "the model"
    s = tflite_model.schema()
    model = tflite_model.load(source, where)
    if len(model.subgraphs or []) != 1:
        raise ConversionRefused(
            f"cannot convert {where}: it has {len(model.subgraphs or [])} subgraphs "
            "(only single-graph models are converted)"
        )
    graph = model.subgraphs[0]
    tensors = graph.tensors
    ops = [tflite_model.opcode_name(model.operatorCodes[op.opcodeIndex]) for op in graph.operators]
    for index in list(graph.inputs) + list(graph.outputs):
        if tensors[index].type != s.TensorType.UINT8:
            raise ConversionRefused(
                f"cannot convert {where}: {_name(tensors[index])} is "
                f"{tflite_model.tensor_type_name(tensors[index].type)}, not UINT8 "
                "(only uint8 quantized models are converted)"
            )
    unsupported = sorted({name for name in ops if name not in INT8_VERSIONS})
    if unsupported:
        raise ConversionRefused(
            f"cannot convert {where} exactly: operator(s) {', '.join(unsupported)} "
            f"(supported: {', '.join(INT8_VERSIONS)})"
        )
    for tensor in tensors:
        if tensor.type not in (s.TensorType.UINT8, s.TensorType.INT32):
            raise ConversionRefused(
                f"cannot convert {where}: tensor {_name(tensor)} is "
                f"{tflite_model.tensor_type_name(tensor.type)} (a fully uint8 quantized "
                "model has only UINT8 tensors and INT32 biases and shapes)"
            )
        if tensor.type == s.TensorType.UINT8 and len(_scales(tensor)) != 1:
            raise ConversionRefused(
                f"cannot convert {where}: tensor {_name(tensor)} has no per-tensor quantization"
            )

    def data_of(index: int) -> np.ndarray | None:
        buffer = model.buffers[tensors[index].buffer]
        if buffer.data is None or len(buffer.data) == 0:
            return None
        return np.asarray(buffer.data, np.uint8)

    # Buffers are shared between tensors in some files: each new array gets its own.
    def store(index: int, values: np.ndarray) -> None:
        buffer = s.BufferT()
        buffer.data = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensors[index].buffer = len(model.buffers) - 1

    done: set[int] = set()
    weighted = 0
    for op, name in zip(graph.operators, ops, strict=True):
        if name not in WEIGHT_AXIS:
            continue
        inputs = list(op.inputs)
        if len(inputs) < 2 or inputs[1] < 0 or data_of(inputs[1]) is None:
            raise ConversionRefused(f"cannot convert {where}: a {name} has no constant weights")
        w_index, b_index = inputs[1], inputs[2] if len(inputs) > 2 else -1
        if w_index in done or (b_index >= 0 and b_index in done):
            raise ConversionRefused(
                f"cannot convert {where}: weights shared between operators ({_name(tensors[w_index])})"
            )
        input_scale = _scales(tensors[inputs[0]])[0]
        scales = _requantize_weights(
            tensors[w_index], data_of(w_index), WEIGHT_AXIS[name], store, w_index
        )
        done.add(w_index)
        if b_index >= 0:
            bias_data = data_of(b_index)
            if bias_data is None or tensors[b_index].type != s.TensorType.INT32:
                raise ConversionRefused(
                    f"cannot convert {where}: the bias of a {name} is not a constant int32"
                )
            _requantize_bias(tensors[b_index], bias_data, input_scale, scales, store, b_index)
            done.add(b_index)
        weighted += 1

    for index, tensor in enumerate(tensors):
        if index in done or tensor.type != s.TensorType.UINT8:
            continue
        values = data_of(index)
        if values is not None:  # a uint8 constant: the same grid shifted by 128
            store(index, (values.astype(np.int16) - 128).astype(np.int8))
        q = tensor.quantization
        q.zeroPoint = np.asarray(q.zeroPoint, np.int64) - 128
        tensor.type = s.TensorType.INT8

    for op, name in zip(graph.operators, ops, strict=True):
        if name == "SOFTMAX":
            q = tensors[op.outputs[0]].quantization
            q.scale = np.asarray([SOFTMAX_SCALE], np.float32)
            q.zeroPoint = np.asarray([SOFTMAX_ZERO_POINT], np.int64)
    for opcode in model.operatorCodes:
        wanted = INT8_VERSIONS[tflite_model.opcode_name(opcode)]
        opcode.version = max(int(opcode.version or 1), wanted)

    labels, labels_name = _labels(source, labels, labels_name)
    meta = _metadata(source, model, labels_name)
    tflite_model.set_metadata_buffer(model, tflite_meta.METADATA_BUFFER_NAME, None)
    tflite_model.set_metadata_buffer(
        model,
        tflite_meta.MIN_RUNTIME_VERSION_NAME,
        MIN_RUNTIME_VERSION.encode("ascii").ljust(16, b"\0"),
    )
    tflite_model.set_metadata_buffer(
        model, tflite_meta.METADATA_BUFFER_NAME, tflite_meta.build_metadata(meta)
    )
    old = model.description.decode("utf-8", "replace") if model.description else ""
    model.description = (old + "; " if old else "") + "full int8 derived by edge-app"
    _drop_unused_buffers(model)
    data = tflite_model.pack(model)
    if labels is not None:
        data = tflite_model.append_files(data, {labels_name: labels})
    return Conversion(
        model=data,
        source_sha256=hashlib.sha256(source).hexdigest(),
        labels_name=labels_name if labels is not None else "",
        weighted_ops=weighted,
    )


def _name(tensor) -> str:
    name = tensor.name.decode("utf-8", "replace") if isinstance(tensor.name, bytes) else tensor.name
    return repr(name or "?")


def _scales(tensor) -> np.ndarray:
    q = tensor.quantization
    if q is None or q.scale is None:
        return np.zeros(0, np.float32)
    return np.asarray(q.scale, np.float32)


def _zero_points(tensor) -> np.ndarray:
    q = tensor.quantization
    if q is None or q.zeroPoint is None:
        return np.zeros(0, np.int64)
    return np.asarray(q.zeroPoint, np.int64)


def _requantize_weights(tensor, raw: np.ndarray, axis: int | None, store, index: int) -> np.ndarray:
    """uint8 asymmetric -> int8 symmetric, per channel along ``axis``; returns the scales."""
    s = tflite_model.schema()
    shape = tuple(int(d) for d in tensor.shape)
    real = (raw.astype(np.float64) - float(_zero_points(tensor)[0])) * float(_scales(tensor)[0])
    real = real.reshape(shape)
    if axis is None:
        peak = np.abs(real).max(keepdims=True).reshape(1)
    else:
        others = tuple(d for d in range(real.ndim) if d != axis)
        peak = np.abs(real).max(axis=others)
    scales = (peak / 127.0).astype(np.float32)
    scales[scales == 0] = 1.0  # an all-zero channel: any finite scale, 1 keeps its bias in range
    shape_b = [1] * real.ndim
    if axis is not None:
        shape_b[axis] = -1
    q = np.clip(np.round(real / scales.astype(np.float64).reshape(shape_b)), -127, 127)
    store(index, q.astype(np.int8))
    tensor.type = s.TensorType.INT8
    quant = tensor.quantization
    quant.scale = scales
    quant.zeroPoint = np.zeros(len(scales), np.int64)
    quant.quantizedDimension = 0 if axis is None else axis
    quant.min = quant.max = None
    return scales


def _requantize_bias(tensor, raw: np.ndarray, input_scale, weight_scales, store, index) -> None:
    old_scale = float(_scales(tensor)[0]) if len(_scales(tensor)) else 0.0
    values = raw.view(np.int32).astype(np.float64)
    if values.shape[0] not in (1, len(weight_scales)) and len(weight_scales) != 1:
        raise ConversionRefused("cannot convert: a bias does not match its weights' channels")
    real = values * old_scale
    scales = (np.float64(input_scale) * weight_scales.astype(np.float64)).astype(np.float32)
    if len(scales) == 1 and values.shape[0] > 1:
        scales = np.repeat(scales, values.shape[0])
    q = np.round(real / scales.astype(np.float64))
    if np.abs(q).max(initial=0) > 2**31 - 1:
        raise ConversionRefused("cannot convert: a bias overflows int32 at the new scale")
    store(index, q.astype(np.int32))
    quant = tensor.quantization
    quant.scale = scales
    quant.zeroPoint = np.zeros(len(scales), np.int64)
    quant.quantizedDimension = 0
    quant.min = quant.max = None


def _drop_unused_buffers(model) -> None:
    """Renumber buffers so that only those tensors or metadata use remain (index 0, the
    schema's empty sentinel, stays): replaced weights leave no dead bytes behind."""
    used = {0}
    for graph in model.subgraphs:
        used.update(int(t.buffer) for t in graph.tensors)
    used.update(int(m.buffer) for m in model.metadata or [])
    order = sorted(used)
    new_index = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = new_index[int(tensor.buffer)]
    for entry in model.metadata or []:
        entry.buffer = new_index[int(entry.buffer)]


def _labels(source: bytes, labels: bytes | None, labels_name: str) -> tuple[bytes | None, str]:
    if labels is not None:
        return labels, labels_name or DEFAULT_LABELS_NAME
    meta = tflite_meta.read_model_metadata(source)
    files = tflite_meta.embedded_files(source)
    wanted = meta.labels_file if meta else None
    if wanted and wanted in files:
        return files[wanted], wanted
    texts = sorted(n for n in files if n.lower().endswith(".txt"))
    if texts:
        return files[texts[0]], texts[0]
    return None, ""


def _metadata(source: bytes, model, labels_name: str) -> tflite_meta.ModelMetadata:
    """The derived model's metadata: the source's where it has some, else an image
    classifier's, with the normalization the input quantization implies."""
    old = tflite_meta.read_model_metadata(source)
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    scale = float(_scales(tensor)[0])
    zero = float(_zero_points(tensor)[0]) + 128  # the uint8 zero point (already shifted)
    old_in = old.inputs[0] if old and old.inputs else None
    old_out = old.outputs[0] if old and old.outputs else None
    norm = old_in.normalization if old_in and old_in.normalization else None
    image = tflite_meta.TensorMetadata(
        name=old_in.name if old_in else "image",
        description=old_in.description if old_in else "Input image to be classified.",
        normalization=norm or tflite_meta.Normalization(mean=[zero], std=[1.0 / scale]),
        color_space="RGB",
        value_min=[0.0],
        value_max=[255.0],
    )
    out_name = old_out.name if old_out else "probability"
    output = tflite_meta.TensorMetadata(
        name=out_name,
        description=old_out.description if old_out else "Probabilities of the labels respectively.",
        value_min=[0.0],
        value_max=[255.0],
    )
    files = []
    if labels_name:
        files.append(
            tflite_meta.AssociatedFile(
                name=labels_name,
                type="TENSOR_AXIS_LABELS",
                description="Labels for categories that the model can recognize.",
                attached_to=f"output:{out_name}",
            )
        )
    return tflite_meta.ModelMetadata(
        name=old.name if old and old.name else "ImageClassifier",
        description=(
            old.description
            if old and old.description
            else "Identify the most prominent object in the image from a known set of categories."
        ),
        version=old.version if old else "",
        author=old.author if old else "",
        license=old.license if old else "",
        min_parser_version="1.0.0",
        inputs=[image],
        outputs=[output],
        associated_files=files,
    )


# --------------------------------------------------------------------------- self-check


@dataclass(frozen=True)
class CheckResult:
    inputs: int
    decided: int  # inputs on which the source is clearly decided (top-1 ahead by DECIDED)
    top1_agree: int  # of the decided ones, those where the derived model's top-1 is the same
    top5_hold: int  # inputs where each model's top-1 is in the other's top 5
    max_score_diff: float  # largest |p_source - p_derived| over all inputs and classes

    @property
    def passed(self) -> bool:
        return (
            self.top1_agree == self.decided
            # flat, uncertain outputs on a few synthetic images may swap their top 5
            and self.top5_hold >= self.inputs - self.inputs // 4
            and self.max_score_diff <= MAX_SCORE_DIFF
        )

    def describe(self) -> str:
        return (
            f"top-1 agrees on {self.top1_agree} of {self.decided} clear inputs, top-1 in the "
            f"other's top 5 on {self.top5_hold} of {self.inputs}, largest score difference "
            f"{self.max_score_diff:.3f} (allowed {MAX_SCORE_DIFF})"
        )


# Dequantized probabilities move by ~0.01-0.07 under int8 rounding; a broken conversion
# (a wrong weight axis, a lost bias) moves them by far more and loses the top-5 as well.
MAX_SCORE_DIFF = 0.15
DECIDED = 0.1  # on a closer call either answer is the source's too
SELF_CHECK_IMAGES = 16


def synthetic_inputs(height: int, width: int, count: int = SELF_CHECK_IMAGES) -> list[np.ndarray]:
    """Fixed RGB uint8 images (smooth colour fields with texture), the same every run."""
    rng = np.random.default_rng(20181002)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        channels = []
        for _c in range(3):
            fy, fx, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 6.3)
            wave = np.sin(2 * np.pi * (fy * ys / height + fx * xs / width) + phase)
            channels.append(127.5 + 100 * wave + rng.normal(0, 12, (height, width)))
        images.append(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))
    return images


def self_check(
    source: bytes,
    derived: bytes,
    images: Iterable[np.ndarray] | None = None,
    *,
    runtime=None,
) -> CheckResult:
    """Run source and derived model side by side on the same model-sized RGB uint8
    images (fixed synthetic ones by default, real photos when the caller has them)."""
    from edge_app.inference.runtime import select_runtime

    runtime = runtime or select_runtime("auto")
    a = runtime.make_interpreter(model_content=source, num_threads=1, name="the uint8 source")
    b = runtime.make_interpreter(model_content=derived, num_threads=1, name="the int8 result")
    height, width = (int(d) for d in a.get_input_details()[0]["shape"][1:3])
    images = list(images) if images is not None else synthetic_inputs(height, width)
    decided = agree = hold = 0
    worst = 0.0
    for image in images:
        pa, pb = _probabilities(a, image), _probabilities(b, image)
        worst = max(worst, float(np.abs(pa - pb).max()))
        top_a, top_b = np.argsort(-pa, kind="stable")[:5], np.argsort(-pb, kind="stable")[:5]
        hold += int(top_a[0] in top_b and top_b[0] in top_a)
        if pa[top_a[0]] - pa[top_a[1]] >= DECIDED:
            decided += 1
            agree += int(top_a[0] == top_b[0])
    return CheckResult(len(images), decided, agree, hold, worst)


def _probabilities(interpreter, rgb: np.ndarray) -> np.ndarray:
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if inp["dtype"] == np.int8:
        data = (rgb.astype(np.int16) - 128).astype(np.int8)
    else:
        data = rgb.astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], data[None])
    interpreter.invoke()
    raw = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float32)
    scale, zero = out["quantization"]
    return (raw - zero) * scale if scale else raw

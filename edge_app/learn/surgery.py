"""Flatbuffer surgery on MobileNet-like classifiers (pooling -> 1x1 conv / FC -> softmax).

Two edits, both on the TFLite schema's object API (``ai_edge_litert.schema_py_generated``):

* ``with_embedding_output``: the pooled feature becomes a second subgraph output, so
  one invoke gives scores and embedding. The graph is otherwise untouched, so XNNPACK
  keeps every node (unlike ``experimental_preserve_all_tensors``, which turns it off).
* ``replace_head``: new head weights (quantised like the base model's) and a new class
  count; the reshape constants and tensor shapes between head and softmax follow.

Reading, packing, metadata and the appended files go through the one model-file module,
``edge_app.inference.tflite_model`` (and ``tflite_meta`` for the metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_app.errors import ModelError
from edge_app.inference import tflite_model

EMBEDDING_OUTPUT_NAME = "embedding"


def read_model(model_bytes: bytes, where: str | None = None):
    """The model as a mutable ``ModelT`` object tree (the shared reader)."""
    return tflite_model.load(model_bytes, where)


# --------------------------------------------------------------------------- the head


@dataclass(frozen=True)
class Head:
    """Where the classifier head sits in subgraph 0 (tensor and operator indices)."""

    head_op: int  # the 1x1 CONV_2D or FULLY_CONNECTED op
    kind: str  # "CONV_2D" or "FULLY_CONNECTED"
    pooled: int  # the pooled feature: the head's data input
    weights: int
    bias: int
    logits: int  # the head's output
    softmax_op: int
    output: int  # the model's score output (softmax output)
    between_ops: tuple[int, ...]  # reshape/squeeze ops between head and softmax

    def feature_size(self, model) -> int:
        return int(model.subgraphs[0].tensors[self.weights].shape[-1])


_PASS_THROUGH = ("RESHAPE", "SQUEEZE")


def _op_name(model, op) -> str:
    return tflite_model.opcode_name(model.operatorCodes[op.opcodeIndex])


def find_head(model) -> Head:
    """Locate pooling -> head -> (reshape) -> softmax, or say why this is not such a model."""
    graph = model.subgraphs[0]
    if len(graph.outputs) != 1:
        raise ModelError(
            f"not a single-output classifier ({len(graph.outputs)} outputs); "
            "learning needs a MobileNet-like image classifier"
        )
    producer = {}
    for index, op in enumerate(graph.operators):
        for tensor in op.outputs:
            producer[int(tensor)] = index
    output = int(graph.outputs[0])
    softmax_op = producer.get(output)
    if softmax_op is None or _op_name(model, graph.operators[softmax_op]) != "SOFTMAX":
        raise ModelError("the model's output is not a softmax: no classifier head to replace")
    between: list[int] = []
    tensor = int(graph.operators[softmax_op].inputs[0])
    while True:
        index = producer.get(tensor)
        if index is None:
            raise ModelError("no 1x1 convolution or fully connected layer before the softmax")
        name = _op_name(model, graph.operators[index])
        if name in _PASS_THROUGH:
            between.append(index)
            tensor = int(graph.operators[index].inputs[0])
            continue
        if name not in ("CONV_2D", "FULLY_CONNECTED"):
            raise ModelError(f"the layer before the softmax is {name}, not a classifier head")
        break
    op = graph.operators[index]
    weights = int(op.inputs[1])
    if name == "CONV_2D" and list(graph.tensors[weights].shape[1:3]) != [1, 1]:
        raise ModelError("the convolution before the softmax is not 1x1: not a classifier head")
    if len(op.inputs) < 3 or int(op.inputs[2]) < 0:
        raise ModelError("the classifier head has no bias")
    pooled = int(op.inputs[0])
    pool_op = producer.get(pooled)
    # Pooling may sit behind a reshape (FC heads); follow it to check there is one.
    probe = pooled
    while pool_op is not None and _op_name(model, graph.operators[pool_op]) in _PASS_THROUGH:
        probe = int(graph.operators[pool_op].inputs[0])
        pool_op = producer.get(probe)
    if pool_op is None or _op_name(model, graph.operators[pool_op]) not in (
        "AVERAGE_POOL_2D",
        "MEAN",
        "MAX_POOL_2D",
    ):
        raise ModelError("no pooling layer before the classifier head: not MobileNet-like")
    return Head(
        head_op=index,
        kind=name,
        pooled=pooled,
        weights=weights,
        bias=int(op.inputs[2]),
        logits=int(op.outputs[0]),
        softmax_op=softmax_op,
        output=output,
        between_ops=tuple(between),
    )


def with_embedding_output(model_bytes: bytes) -> bytes:
    """The same model with the pooled feature as a second output (index 1)."""
    model = read_model(model_bytes)
    head = find_head(model)
    graph = model.subgraphs[0]
    graph.outputs = np.array([head.output, head.pooled], dtype=np.int32)
    schema = tflite_model.schema()
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == 0:
            entry = schema.TensorMapT()
            entry.name = EMBEDDING_OUTPUT_NAME.encode()
            entry.tensorIndex = head.pooled
            signature.outputs = [*(signature.outputs or []), entry]
    files = tflite_model.read_files(model_bytes)
    packed = tflite_model.pack(model)
    return tflite_model.append_files(packed, files) if files else packed


# --------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class QuantizedHead:
    weights: np.ndarray  # int8/uint8, [classes, features]
    weight_scale: np.ndarray  # float32 [classes] (per channel) or [1]
    weight_zero: np.ndarray  # int64, same length as weight_scale
    bias: np.ndarray  # int32 [classes]
    bias_scale: np.ndarray  # float32, same length as weight_scale


def quantize_head(
    weights: np.ndarray, bias: np.ndarray, input_scale: float, dtype, per_channel: bool
) -> QuantizedHead:
    """Weights quantised as TFLite expects: int8 symmetric per output channel (zero point
    0), or uint8 per tensor (asymmetric); int32 bias at input scale x weight scale."""
    weights = np.asarray(weights, np.float64)
    bias = np.asarray(bias, np.float64)
    if dtype == np.int8:
        if per_channel:
            peak = np.abs(weights).max(axis=1)
        else:
            peak = np.full(weights.shape[0], np.abs(weights).max())
        # A row of zeros still needs a positive scale (bias scale = input x weight).
        fallback = np.median(peak[peak > 0]) if np.any(peak > 0) else 1.0
        scale = np.where(peak > 0, peak, fallback) / 127.0
        q = np.clip(np.round(weights / scale[:, None]), -127, 127).astype(np.int8)
        zero = np.zeros(len(scale), np.int64)
        if not per_channel:
            scale, zero = scale[:1], zero[:1]
    elif dtype == np.uint8:
        lo, hi = min(weights.min(), 0.0), max(weights.max(), 0.0)
        s = (hi - lo) / 255.0 or 1.0
        z = int(np.clip(np.round(-lo / s), 0, 255))
        q = np.clip(np.round(weights / s) + z, 0, 255).astype(np.uint8)
        scale, zero = np.array([s]), np.array([z], np.int64)
    else:
        raise ModelError(f"cannot quantise a head for {np.dtype(dtype).name} weights")
    bias_scale = input_scale * scale
    bias_q = np.round(bias / (bias_scale if len(bias_scale) > 1 else bias_scale[0]))
    bias_q = np.clip(bias_q, -(2**31), 2**31 - 1).astype(np.int32)
    return QuantizedHead(q, scale.astype(np.float32), zero, bias_q, bias_scale.astype(np.float32))


def _quant(scale, zero, dim: int = 0):
    q = tflite_model.schema().QuantizationParametersT()
    q.scale = np.asarray(scale, np.float32).reshape(-1)
    q.zeroPoint = np.asarray(zero, np.int64).reshape(-1)
    q.quantizedDimension = dim
    return q


def _new_buffer(model, array: np.ndarray) -> int:
    buffer = tflite_model.schema().BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8).copy()
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def head_parameters(model) -> tuple[np.ndarray, np.ndarray]:
    """The head of a ``ModelT`` as float: weights [classes, features], bias [classes]."""
    head = find_head(model)
    graph = model.subgraphs[0]
    return _dequantized(model, graph.tensors[head.weights], 2), _dequantized(
        model, graph.tensors[head.bias], 1
    )


def _dequantized(model, tensor, rank: int) -> np.ndarray:
    dtypes = {0: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8}
    dtype = dtypes.get(tensor.type)
    if dtype is None:
        raise ModelError(f"unsupported head tensor type {tensor.type}")
    raw = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype)
    shape = [int(d) for d in tensor.shape]
    values = raw.reshape(shape[0], -1) if rank == 2 else raw.reshape(-1)
    if dtype == np.float32:
        return values.astype(np.float32)
    q = tensor.quantization
    scale = np.asarray(q.scale, np.float64)
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float64)
    if rank == 2 and len(scale) > 1:
        scale, zero = scale[:, None], zero[:, None]
    return ((values.astype(np.float64) - zero) * scale).astype(np.float32)


def replace_head(
    model,
    weights: np.ndarray,
    bias: np.ndarray,
    logit_range: tuple[float, float] | None = None,
) -> None:
    """Give the ``ModelT`` a new head of ``len(bias)`` classes (float weights, quantised
    here like the base head). ``logit_range`` sets the head output's quantisation
    (quantised models); None keeps the base's."""
    head = find_head(model)
    graph = model.subgraphs[0]
    classes, features = weights.shape
    if features != head.feature_size(model):
        raise ModelError(
            f"head weights have {features} features, the model {head.feature_size(model)}"
        )
    old_classes = int(graph.tensors[head.logits].shape[-1])
    w_tensor, b_tensor, logits = (
        graph.tensors[head.weights],
        graph.tensors[head.bias],
        graph.tensors[head.logits],
    )
    w_shape = [int(d) for d in w_tensor.shape]
    w_shape[0] = classes
    if w_tensor.type == 0:  # float32 model
        w_tensor.buffer = _new_buffer(model, weights.astype(np.float32).reshape(w_shape))
        b_tensor.buffer = _new_buffer(model, bias.astype(np.float32))
    else:
        dtype = np.int8 if w_tensor.type == 9 else np.uint8
        per_channel = (
            w_tensor.quantization.scale is not None and len(w_tensor.quantization.scale) > 1
        )
        input_scale = float(graph.tensors[head.pooled].quantization.scale[0])
        q = quantize_head(weights, bias, input_scale, dtype, per_channel)
        w_tensor.buffer = _new_buffer(model, q.weights.reshape(w_shape))
        w_tensor.quantization = _quant(q.weight_scale, q.weight_zero, 0)
        b_tensor.buffer = _new_buffer(model, q.bias)
        b_tensor.quantization = _quant(q.bias_scale, np.zeros(len(q.bias_scale), np.int64), 0)
        if logit_range is not None:
            lo, hi = min(logit_range[0], 0.0), max(logit_range[1], 0.0)
            qmin, qmax = (-128, 127) if dtype == np.int8 else (0, 255)
            scale = (hi - lo) / (qmax - qmin) or 1.0
            zero = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
            quant = _quant([scale], [zero])
            logits.quantization = quant
            for index in head.between_ops:
                graph.tensors[int(graph.operators[index].outputs[0])].quantization = _quant(
                    [scale], [zero]
                )
    w_tensor.shape = np.array(w_shape, np.int32)
    b_tensor.shape = np.array([classes], np.int32)
    _resize_last_dim(model, head, old_classes, classes)


def _resize_last_dim(model, head: Head, old: int, new: int) -> None:
    """Tensors from the head to the output, and reshape constants, go from old to new."""
    graph = model.subgraphs[0]
    touched = {head.logits, head.output}
    touched.update(int(graph.operators[i].outputs[0]) for i in head.between_ops)
    for index in touched:
        tensor = graph.tensors[index]
        shape = [int(d) for d in tensor.shape]
        shape[-1] = new
        tensor.shape = np.array(shape, np.int32)
        if tensor.shapeSignature is not None:
            signature = [int(d) for d in tensor.shapeSignature]
            signature[-1] = new if signature[-1] == old else signature[-1]
            tensor.shapeSignature = np.array(signature, np.int32)
    # Constant shape operands feeding the reshapes: the head's class count appears there
    # (directly, or via SHAPE -> STRIDED_SLICE -> PACK as the Keras converter writes it).
    consumers_of_shape = set()
    for index in head.between_ops:
        op = graph.operators[index]
        if len(op.inputs) > 1:
            consumers_of_shape.add(int(op.inputs[1]))
        options = op.builtinOptions
        if options is not None and getattr(options, "newShape", None) is not None:
            options.newShape = [new if int(d) == old else int(d) for d in options.newShape]
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    pending = list(consumers_of_shape)
    seen = set()
    while pending:
        tensor_index = pending.pop()
        if tensor_index in seen or tensor_index < 0:
            continue
        seen.add(tensor_index)
        tensor = graph.tensors[tensor_index]
        op = producer.get(tensor_index)
        if op is not None:
            if _op_name(model, op) == "PACK":
                pending.extend(int(t) for t in op.inputs)
            continue
        data = model.buffers[tensor.buffer].data
        if tensor.type == 2 and data is not None and len(data):
            values = np.frombuffer(bytes(data), np.int32).copy()
            if old in values:
                values[values == old] = new
                tensor.buffer = _new_buffer(model, values)


# --------------------------------------------------------------------------- metadata

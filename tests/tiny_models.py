"""Real, tiny TFLite models that are not image classifiers, built with the schema's
generated flatbuffer code (the `tflite` package), to check that such files are refused
with a clear message. They run in the real runtime like any other model."""

from __future__ import annotations

import flatbuffers
import tflite
from tflite.BuiltinOperator import BuiltinOperator
from tflite.TensorType import TensorType


def _int_vector(builder, start_fn, values):
    start_fn(builder, len(values))
    for value in reversed(values):
        builder.PrependInt32(value)
    return builder.EndVector()


def add_model(shape: list[int]) -> bytes:
    """A model computing out = x + x for a float32 tensor of ``shape``."""
    b = flatbuffers.Builder(1024)
    names = [b.CreateString("x"), b.CreateString("out")]
    tensors = []
    for i, name in enumerate(names):
        dims = _int_vector(b, tflite.TensorStartShapeVector, shape)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, dims)
        tflite.TensorAddType(b, TensorType.FLOAT32)
        tflite.TensorAddBuffer(b, i + 1)
        tflite.TensorAddName(b, name)
        tensors.append(tflite.TensorEnd(b))
    tflite.SubGraphStartTensorsVector(b, len(tensors))
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    tensor_vec = b.EndVector()
    op_inputs = _int_vector(b, tflite.OperatorStartInputsVector, [0, 0])
    op_outputs = _int_vector(b, tflite.OperatorStartOutputsVector, [1])
    tflite.AddOptionsStart(b)
    add_options = tflite.AddOptionsEnd(b)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.AddOptions)
    tflite.OperatorAddBuiltinOptions(b, add_options)
    op = tflite.OperatorEnd(b)
    tflite.SubGraphStartOperatorsVector(b, 1)
    b.PrependUOffsetTRelative(op)
    ops_vec = b.EndVector()
    sg_inputs = _int_vector(b, tflite.SubGraphStartInputsVector, [0])
    sg_outputs = _int_vector(b, tflite.SubGraphStartOutputsVector, [1])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddInputs(b, sg_inputs)
    tflite.SubGraphAddOutputs(b, sg_outputs)
    tflite.SubGraphAddOperators(b, ops_vec)
    subgraph = tflite.SubGraphEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, BuiltinOperator.ADD)
    tflite.OperatorCodeAddBuiltinCode(b, BuiltinOperator.ADD)
    tflite.OperatorCodeAddVersion(b, 1)
    opcode = tflite.OperatorCodeEnd(b)
    buffers = []
    for _ in range(3):
        tflite.BufferStart(b)
        buffers.append(tflite.BufferEnd(b))
    tflite.ModelStartBuffersVector(b, len(buffers))
    for buf in reversed(buffers):
        b.PrependUOffsetTRelative(buf)
    buffer_vec = b.EndVector()
    tflite.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(subgraph)
    subgraph_vec = b.EndVector()
    tflite.ModelStartOperatorCodesVector(b, 1)
    b.PrependUOffsetTRelative(opcode)
    opcode_vec = b.EndVector()
    description = b.CreateString("edge-app test model: not a classifier")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, opcode_vec)
    tflite.ModelAddSubgraphs(b, subgraph_vec)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffer_vec)
    model = tflite.ModelEnd(b)
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())

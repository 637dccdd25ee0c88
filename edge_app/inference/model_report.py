"""What a model costs: a per-layer table (parameters, multiply-accumulates) and how much
of it XNNPACK runs.

Both read the graph the interpreter itself built (``_get_ops_details()`` and
``get_tensor_details()``), so the figures are those of the file actually loaded, not of
a textbook MobileNet. ``_get_ops_details`` is private but present in all three runtimes
(ai_edge_litert, tflite_runtime, tensorflow); its absence becomes a ModelError.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.errors import LabelsError, ModelError
from edge_app.inference.labels import load_labels
from edge_app.inference.model import read_model_file
from edge_app.inference.runtime import select_runtime

DELEGATE_OP = "DELEGATE"
# Ops whose constant inputs are learned weights and biases (int32 biases included).
WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}
# Elsewhere a constant counts as a parameter only if it holds values, not shapes/indices
# (a RESHAPE's target shape or a STRIDED_SLICE's bounds are not parameters).
_VALUE_DTYPES = (np.floating, np.int8, np.uint8, np.int16)


@dataclass(frozen=True)
class Layer:
    index: int  # the interpreter's node index
    op: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activation: str = ""  # fused activation, e.g. RELU6


@dataclass(frozen=True)
class LayerReport:
    layers: list[Layer]
    separable_blocks: int  # DEPTHWISE_CONV_2D followed by a 1x1 CONV_2D

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)


@dataclass(frozen=True)
class XnnpackCoverage:
    delegated_nodes: int
    total_nodes: int
    partitions: int  # DELEGATE nodes: each is one run of the graph XNNPACK took over
    cpu_ops: list[str] = field(default_factory=list)  # op types left on reference kernels
    delegated_mac_share: float = 0.0  # 0..1

    @property
    def fully_delegated(self) -> bool:
        return self.delegated_nodes == self.total_nodes


class _Graph:
    """The interpreter's nodes and tensors, with producer/consumer maps."""

    def __init__(self, interpreter):
        try:
            nodes = interpreter._get_ops_details()
            tensors = interpreter.get_tensor_details()
        except AttributeError as exc:
            raise ModelError(
                "this TFLite runtime does not expose the model graph (_get_ops_details)"
            ) from exc
        self.nodes = [n for n in nodes if n["op_name"] != DELEGATE_OP]
        self.delegates = [n for n in nodes if n["op_name"] == DELEGATE_OP]
        self.tensors = {t["index"]: t for t in tensors}
        self.graph_inputs = {d["index"] for d in interpreter.get_input_details()}
        self.producer: dict[int, dict] = {}
        self.consumers: dict[int, list[dict]] = {}
        for node in self.nodes:
            for t in node["outputs"]:
                self.producer[int(t)] = node
            for t in node["inputs"]:
                self.consumers.setdefault(int(t), []).append(node)

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensors[index]["shape"])

    def is_constant(self, index: int) -> bool:
        return (
            index >= 0
            and index not in self.producer
            and index not in self.graph_inputs
            and index in self.tensors
        )

    def params(self, node: dict) -> int:
        total = 0
        for t in (int(i) for i in node["inputs"]):
            if not self.is_constant(t):
                continue
            dtype = np.dtype(self.tensors[t]["dtype"])
            if node["op_name"] in WEIGHTED_OPS or any(
                np.issubdtype(dtype, kind) for kind in _VALUE_DTYPES
            ):
                total += math.prod(self.shape(t))
        return total

    def macs(self, node: dict) -> int:
        op = node["op_name"]
        inputs = [int(i) for i in node["inputs"]]
        if not node["outputs"].size or len(inputs) < 2 or inputs[1] < 0:
            return 0
        out = self.shape(int(node["outputs"][0]))
        weights = self.shape(inputs[1])
        if op == "CONV_2D" and len(out) == 4 and len(weights) == 4:
            # weights [out_c, kh, kw, in_c / groups]
            _, out_h, out_w, out_c = out
            _, kh, kw, in_c = weights
            return out_h * out_w * out_c * kh * kw * in_c
        if op == "DEPTHWISE_CONV_2D" and len(out) == 4 and len(weights) == 4:
            # weights [1, kh, kw, out_c]: one kh x kw filter per output channel
            _, out_h, out_w, out_c = out
            return out_h * out_w * out_c * weights[1] * weights[2]
        if op == "FULLY_CONNECTED" and len(weights) == 2:
            rows = math.prod(out[:-1]) if len(out) > 1 else 1
            return rows * weights[0] * weights[1]
        return 0

    def is_pointwise_conv(self, node: dict) -> bool:
        if node["op_name"] != "CONV_2D" or len(node["inputs"]) < 2:
            return False
        weights = self.shape(int(node["inputs"][1]))
        return len(weights) == 4 and weights[1] == weights[2] == 1


def layer_report(interpreter, activations: Sequence[str] | None = None) -> LayerReport:
    """Per-layer table of an interpreter's graph (best made with ``xnnpack=False``).

    ``activations``: fused activation per node, as read by
    ``tflite_meta.operator_activations``; ignored unless it matches the node count.
    """
    graph = _Graph(interpreter)
    if activations is not None and len(activations) != len(graph.nodes):
        activations = None
    layers = []
    for position, node in enumerate(graph.nodes):
        outputs = node["outputs"]
        layers.append(
            Layer(
                index=int(node["index"]),
                op=node["op_name"],
                output_shape=graph.shape(int(outputs[0])) if outputs.size else (),
                params=graph.params(node),
                macs=graph.macs(node),
                activation=activations[position] if activations else "",
            )
        )
    blocks = 0
    for node in graph.nodes:
        if node["op_name"] != "DEPTHWISE_CONV_2D" or not node["outputs"].size:
            continue
        following = graph.consumers.get(int(node["outputs"][0]), [])
        if any(graph.is_pointwise_conv(n) for n in following):
            blocks += 1
    return LayerReport(layers=layers, separable_blocks=blocks)


def xnnpack_coverage(interpreter) -> XnnpackCoverage:
    """Which nodes of an interpreter made with XNNPACK on were taken by the delegate.

    With a delegate applied, ``_get_ops_details()`` lists the original nodes plus one
    DELEGATE node per partition, whose inputs/outputs are tensor indices. A node belongs
    to a partition if it is reached walking back from that partition's outputs through
    producers without crossing the partition's inputs.
    """
    graph = _Graph(interpreter)
    delegated: set[int] = set()
    for delegate in graph.delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        pending = [int(t) for t in delegate["outputs"]]
        seen: set[int] = set()
        while pending:
            tensor = pending.pop()
            if tensor in seen or tensor in boundary or tensor < 0:
                continue
            seen.add(tensor)
            node = graph.producer.get(tensor)
            if node is None or int(node["index"]) in delegated:
                continue
            delegated.add(int(node["index"]))
            pending.extend(int(t) for t in node["inputs"])
    cpu_ops: list[str] = []
    total_macs = delegated_macs = 0
    for node in graph.nodes:
        macs = graph.macs(node)
        total_macs += macs
        if int(node["index"]) in delegated:
            delegated_macs += macs
        elif node["op_name"] not in cpu_ops:
            cpu_ops.append(node["op_name"])
    return XnnpackCoverage(
        delegated_nodes=len(delegated),
        total_nodes=len(graph.nodes),
        partitions=len(graph.delegates),
        cpu_ops=cpu_ops,
        delegated_mac_share=delegated_macs / total_macs if total_macs else 0.0,
    )


# --------------------------------------------------------------------------- model info


def _quantization(detail: dict) -> dict | None:
    params = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in params.get("scales", [])]
    zero_points = [int(z) for z in params.get("zero_points", [])]
    if not scales:
        return None
    if len(scales) == 1:
        return {"scale": scales[0], "zero_point": zero_points[0] if zero_points else 0}
    return {"per_channel": len(scales), "axis": int(params.get("quantized_dimension", 0))}


def _io(details: list[dict], described: list) -> list[dict]:
    rows = []
    for position, detail in enumerate(details):
        meta = described[position] if position < len(described) else None
        rows.append(
            {
                "name": detail["name"],
                "shape": [int(d) for d in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "quantization": _quantization(detail),
                "metadata_name": meta.name if meta else "",
                "description": meta.description if meta else "",
            }
        )
    return rows


def model_info(path, runtime_name: str = "auto") -> dict:
    """Everything ``edge-app models info`` shows, as plain JSON-ready data."""
    # Here, not at the top: the generated schema it reads with costs ~0.2 s to import,
    # and run/serve import this module for xnnpack_coverage at start-up.
    from edge_app.inference import tflite_meta

    path = Path(path)
    model_bytes = read_model_file(path)
    runtime = select_runtime(runtime_name)
    plain = runtime.make_interpreter(path, num_threads=1, xnnpack=False)
    metadata = tflite_meta.read_model_metadata(model_bytes, where=str(path))
    report = layer_report(plain, tflite_meta.operator_activations(model_bytes, where=str(path)))
    coverage = xnnpack_coverage(runtime.make_interpreter(path, num_threads=1, xnnpack=True))
    outputs = plain.get_output_details()
    labels: dict = {"source": "", "count": 0, "first": "", "error": ""}
    try:
        names, source = load_labels(path, model_bytes, int(outputs[0]["shape"][-1]))
        labels.update(source=source, count=len(names), first=names[0] if names else "")
    except LabelsError as exc:
        labels["error"] = exc.message
    normalization = metadata.input_normalization if metadata else None
    return {
        "model": {
            "path": str(path),
            "name": path.stem,
            "size_bytes": len(model_bytes),
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
        },
        "metadata": None
        if metadata is None
        else {
            "name": metadata.name,
            "description": metadata.description,
            "version": metadata.version,
            "author": metadata.author,
            "license": metadata.license,
            "min_parser_version": metadata.min_parser_version,
            "associated_files": [
                {"name": f.name, "type": f.type, "attached_to": f.attached_to}
                for f in metadata.associated_files
            ],
        },
        "min_runtime_version": tflite_meta.min_runtime_version(model_bytes, where=str(path)),
        "runtime": {"name": runtime.name, "version": runtime.version},
        "inputs": _io(plain.get_input_details(), metadata.inputs if metadata else []),
        "outputs": _io(outputs, metadata.outputs if metadata else []),
        "normalization": None
        if normalization is None
        else {"mean": normalization.mean, "std": normalization.std},
        "labels": labels,
        "xnnpack": {
            "delegated_nodes": coverage.delegated_nodes,
            "total_nodes": coverage.total_nodes,
            "partitions": coverage.partitions,
            "cpu_ops": coverage.cpu_ops,
            "delegated_mac_share": coverage.delegated_mac_share,
        },
        "layers": [
            {
                "index": layer.index,
                "op": layer.op,
                "output_shape": list(layer.output_shape),
                "activation": layer.activation,
                "params": layer.params,
                "macs": layer.macs,
            }
            for layer in report.layers
        ],
        "totals": {
            "params": report.total_params,
            "macs": report.total_macs,
            "separable_blocks": report.separable_blocks,
        },
    }

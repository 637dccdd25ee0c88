"""What a model expects and produces, read from the model itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.errors import ModelError, os_reason, translate

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (np.uint8, np.int8, np.float32)


def read_model_file(path: Path) -> bytes:
    """A model file's bytes, or a ModelError saying plainly why not."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"model path is a folder, not a .tflite file: {path}")
    with translate({OSError: lambda e: ModelError(f"cannot read model {path}: {os_reason(e)}")}):
        return path.read_bytes()


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    input_index: int
    input_height: int
    input_width: int
    input_dtype: type
    input_scale: float
    input_zero_point: int
    output_index: int
    num_outputs: int
    output_dtype: type
    output_scale: float
    output_zero_point: int
    # float inputs: model value = (pixel - mean) / std, per channel (RGB)
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    normalization_source: str = "default"

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    def describe(self) -> str:
        return (
            f"{self.name}: {self.input_height}x{self.input_width} "
            f"{np.dtype(self.input_dtype).name} -> {self.num_outputs} classes"
        )


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def inspect_interpreter(interpreter, path: Path, model_bytes: bytes) -> ModelSpec:
    """Check the model is an image classifier and read its I/O contract."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"not an image classifier: {path.name} has {len(inputs)} inputs and "
            f"{len(outputs)} outputs (expected 1 image input and 1 score output)"
        )
    inp, out = inputs[0], outputs[0]
    shape = [int(d) for d in inp["shape"]]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ModelError(
            f"not an image classifier: {path.name} input shape is {shape} "
            "(expected [1, height, width, 3])"
        )
    out_shape = [int(d) for d in out["shape"]]
    if out_shape[0] != 1 or int(np.prod(out_shape)) != out_shape[-1] or out_shape[-1] < 2:
        raise ModelError(
            f"not an image classifier: {path.name} output shape is {out_shape} "
            "(expected [1, classes])"
        )
    for role, detail in (("input", inp), ("output", out)):
        if detail["dtype"] not in SUPPORTED_DTYPES:
            raise ModelError(
                f"unsupported {role} type {_dtype_name(detail['dtype'])} in {path.name} "
                "(supported: uint8, int8, float32)"
            )
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    mean, std, norm_source = (127.5,) * 3, (127.5,) * 3, "default"
    if inp["dtype"] == np.float32:
        mean, std, norm_source = _float_normalization(model_bytes, path)
    return ModelSpec(
        path=path,
        input_index=int(inp["index"]),
        input_height=shape[1],
        input_width=shape[2],
        input_dtype=inp["dtype"],
        input_scale=float(in_scale),
        input_zero_point=int(in_zp),
        output_index=int(out["index"]),
        num_outputs=out_shape[-1],
        output_dtype=out["dtype"],
        output_scale=float(out_scale) if out_scale else 1.0,
        output_zero_point=int(out_zp),
        mean=mean,
        std=std,
        normalization_source=norm_source,
    )


def _float_normalization(model_bytes: bytes, path: Path):
    """Mean/std from the model's TFLite metadata (NormalizationOptions)."""
    try:
        from edge_app.inference.tflite_meta import read_model_metadata

        meta = read_model_metadata(model_bytes)
    except (ImportError, ModelError) as exc:
        log.debug("no metadata in %s: %s", path, exc)
        meta = None
    norm = getattr(meta, "input_normalization", None) if meta else None
    if norm:
        mean, std = list(norm.mean), list(norm.std)
        if len(mean) == 1:
            mean = list(mean) * 3
        if len(std) == 1:
            std = list(std) * 3
        return tuple(float(m) for m in mean), tuple(float(s) for s in std), "metadata"
    log.warning("%s has no normalization metadata; assuming (pixel - 127.5) / 127.5", path.name)
    return (127.5,) * 3, (127.5,) * 3, "default"

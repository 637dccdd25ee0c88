"""The TFLite metadata reader (generated schema + flatbuffers runtime), on the real shared
models."""

from __future__ import annotations

import random

import pytest

from edge_app.errors import ModelError
from edge_app.inference.runtime import select_runtime
from edge_app.inference.tflite_meta import (
    embedded_files,
    min_runtime_version,
    operator_activations,
    read_model_metadata,
)

MODEL_FILES = [
    "mobilenet_v1_1.0_224_int8.tflite",
    "mobilenet_v1_1.0_224_quant.tflite",
    "mobilenet_v1_1.0_224_float.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.25_128_quant.tflite",
]


@pytest.fixture(scope="module")
def small_model_bytes(shared_models) -> bytes:
    return (shared_models / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()


def test_float_model_metadata_gives_normalization(float_model):
    meta = read_model_metadata(float_model.read_bytes())
    assert meta is not None
    assert meta.name == "ImageClassifier"
    assert meta.input_normalization is not None
    assert meta.input_normalization.mean == [127.5]
    assert meta.input_normalization.std == [127.5]
    assert meta.inputs[0].name == "image"
    assert meta.inputs[0].color_space == "RGB"
    assert meta.outputs[0].name == "probability"
    assert meta.min_parser_version == "1.0.0"


@pytest.mark.parametrize("file_name", MODEL_FILES)
def test_every_shared_model_names_its_embedded_labels(shared_models, file_name):
    model_bytes = (shared_models / file_name).read_bytes()
    meta = read_model_metadata(model_bytes)
    assert meta is not None
    [labels] = [f for f in meta.associated_files if f.type == "TENSOR_AXIS_LABELS"]
    assert labels.name == "imagenet_labels.txt"
    assert labels.attached_to == "output:probability"
    assert meta.labels_file == "imagenet_labels.txt"
    assert labels.name in embedded_files(model_bytes)
    assert min_runtime_version(model_bytes) == "1.5.0"


def test_embedded_labels_match_the_shared_labels_file(int8_model, shared_models):
    files = embedded_files(int8_model.read_bytes())
    assert list(files) == ["imagenet_labels.txt"]
    text = files["imagenet_labels.txt"].decode("utf-8")
    lines = text.splitlines()
    assert len(lines) == 1001
    assert lines[0] == "background"
    assert lines[1] == "tench, Tinca tinca"
    assert files["imagenet_labels.txt"] == (shared_models / "imagenet_labels.txt").read_bytes()


def test_fused_activations_line_up_with_interpreter_nodes(int8_model):
    activations = operator_activations(int8_model.read_bytes())
    interpreter = select_runtime("auto").make_interpreter(int8_model, num_threads=1, xnnpack=False)
    ops = interpreter._get_ops_details()
    assert len(activations) == len(ops) == 34
    convs = [a for a, op in zip(activations, ops, strict=True) if "CONV" in op["op_name"]]
    assert convs[:27] == ["RELU6"] * 27
    assert convs[27] == ""  # the classifier's 1x1 conv produces logits, no activation
    assert activations[-1] == ""  # SOFTMAX


def test_model_without_metadata_has_none(tmp_path):
    from tiny_models import add_model

    model_bytes = add_model([1, 4])
    assert read_model_metadata(model_bytes) is None
    assert embedded_files(model_bytes) == {}
    assert min_runtime_version(model_bytes) == ""
    assert operator_activations(model_bytes) == [""]


@pytest.mark.parametrize("cut", [0, 7, 8, 64, 4096, 250_000, 500_000])
def test_truncated_model_is_a_model_error(small_model_bytes, cut):
    truncated = small_model_bytes[:cut]
    with pytest.raises(ModelError) as excinfo:
        read_model_metadata(truncated)
    assert "\n" not in str(excinfo.value)


def test_garbage_is_a_model_error():
    with pytest.raises(ModelError, match="not a TFLite model"):
        read_model_metadata(b"this is not a model at all")
    with pytest.raises(ModelError, match="not a TFLite model"):
        operator_activations(b"\x00" * 3)


def test_corrupted_bytes_never_escape_as_other_exceptions(small_model_bytes):
    """Random damage to the flatbuffer header and the metadata region: either a result
    or a ModelError, never an IndexError/struct.error."""
    rng = random.Random(20240601)
    size = len(small_model_bytes)
    metadata_region = small_model_bytes.rfind(b"M001") - 4
    outcomes = {"read": 0, "refused": 0}
    for _ in range(300):
        damaged = bytearray(small_model_bytes)
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.5:
                pos = rng.randrange(0, 2048)
            else:
                pos = rng.randrange(metadata_region, min(size, metadata_region + 1500))
            damaged[pos] = rng.randrange(256)
        for reader in (read_model_metadata, operator_activations, min_runtime_version):
            try:
                reader(damaged)
                outcomes["read"] += 1
            except ModelError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0  # the damage was real enough to be noticed


def test_corrupt_embedded_zip_is_a_model_error(small_model_bytes):
    start = small_model_bytes.rfind(b"PK\x03\x04")
    damaged = bytearray(small_model_bytes)
    damaged[start + 100 : start + 200] = b"\xff" * 100  # inside the stored labels: CRC fails
    with pytest.raises(ModelError, match="embedded files are corrupt"):
        embedded_files(bytes(damaged))

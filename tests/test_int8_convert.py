"""The full-int8 model derived from the uint8 QAT models on the device, without TensorFlow.

Judged as a user would: the derived default model's answers on the 1,000-image sample and
on the test photos, its bytes across runs, its metadata as other TFLite tools read it, and
`edge-app models convert-int8` on good and unconvertible models.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edge_app.batch.decode import decode_image
from edge_app.cli import cli
from edge_app.errors import ModelError
from edge_app.inference import int8_convert, tflite_meta, tflite_model
from edge_app.inference.classifier import Classifier
from edge_app.inference.model_store import IMAGENET_LABELS

# The answers /work/shared/README.md lists as holding under any sensible crop.
ROBUST_TOP1 = {
    "parrot.jpg": "macaw",
    "hot_dog.jpg": "hotdog",
    "dragonfly.bmp": "dragonfly",
    "bird.bmp": "chickadee",
    "cat.bmp": "Egyptian cat",
    "cat_720p.jpg": "Egyptian cat",
    "cat_1080p.jpg": "Egyptian cat",
    "sunflower.bmp": "daisy",
    "missvickie_potato_chips.bmp": "packet",
}
WIDTHS = ["0.75_192", "0.5_160", "0.25_128"]


def derive(source: bytes) -> bytes:
    """As the model store does: the package's labels embedded."""
    return int8_convert.convert(
        source, labels=IMAGENET_LABELS.read_bytes(), labels_name=IMAGENET_LABELS.name
    ).model


@pytest.fixture(scope="module")
def derived_default(uint8_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("derived") / "mobilenet_v1_1.0_224_int8.tflite"
    path.write_bytes(derive(uint8_model.read_bytes()))
    return path


def edge_app(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_derived_default_scores_on_the_sample(derived_default, imagenet_sample):
    result = edge_app(
        "eval", imagenet_sample, "--truth", "filename", "--json", "-m", derived_default
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["evaluated"] == 1000
    assert report["top1"] >= 88.5


@pytest.mark.parametrize("name", sorted(ROBUST_TOP1))
def test_derived_default_answers_the_test_photos(derived_default, test_images, name):
    classifier = Classifier(derived_default, threads=1)
    image = decode_image(test_images / name, model_size=classifier.input_size).image
    assert classifier.classify(image).top[0].label.split(",")[0] == ROBUST_TOP1[name]


def test_derived_model_is_full_int8_with_per_channel_symmetric_weights(derived_default):
    s = tflite_model.schema()
    model = tflite_model.load(derived_default.read_bytes())
    graph = model.subgraphs[0]
    types = {t.type for t in graph.tensors}
    assert types == {s.TensorType.INT8, s.TensorType.INT32}
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    assert [float(x) for x in inp.quantization.scale] == [1 / 128]
    assert [int(x) for x in inp.quantization.zeroPoint] == [0]
    assert list(out.quantization.zeroPoint) == [-128]
    assert list(out.quantization.scale) == [pytest.approx(1 / 256)]
    convs = [
        op
        for op in graph.operators
        if tflite_model.opcode_name(model.operatorCodes[op.opcodeIndex]) == "CONV_2D"
    ]
    weights = graph.tensors[convs[0].inputs[1]]
    assert len(weights.quantization.scale) == 32 and not any(weights.quantization.zeroPoint)
    versions = {tflite_model.opcode_name(c): c.version for c in model.operatorCodes}
    assert versions == {
        "CONV_2D": 3,
        "DEPTHWISE_CONV_2D": 3,
        "AVERAGE_POOL_2D": 2,
        "RESHAPE": 1,
        "SOFTMAX": 2,
    }


def test_derived_model_describes_itself(derived_default):
    data = derived_default.read_bytes()
    meta = tflite_meta.read_model_metadata(data)
    assert meta is not None
    assert meta.input_normalization == tflite_meta.Normalization(mean=[127.5], std=[127.5])
    assert meta.inputs[0].color_space == "RGB"
    assert meta.labels_file == "imagenet_labels.txt"
    assert tflite_meta.embedded_files(data) == {"imagenet_labels.txt": IMAGENET_LABELS.read_bytes()}
    assert tflite_meta.min_runtime_version(data) == "1.14.0"
    classifier = Classifier(derived_default, threads=1)
    assert classifier.labels_source == "embedded: imagenet_labels.txt"
    assert classifier.labels[0] == "background"


def test_other_tflite_tools_read_the_derived_model(derived_default):
    """The `tflite` package (generated from the same schema, another code base) reads the
    graph; the metadata buffer is where TFLite Support looks for it."""
    import tflite

    data = derived_default.read_bytes()
    model = tflite.Model.GetRootAsModel(data, 0)
    names = {model.Metadata(i).Name().decode(): i for i in range(model.MetadataLength())}
    assert set(names) == {"min_runtime_version", "TFLITE_METADATA"}
    buffer = model.Buffers(model.Metadata(names["TFLITE_METADATA"]).Buffer())
    assert buffer.DataAsNumpy().tobytes()[4:8] == b"M001"
    graph = model.Subgraphs(0)
    assert graph.Tensors(graph.Inputs(0)).Type() == tflite.TensorType.INT8


def test_same_source_same_bytes(uint8_model, derived_default):
    again = derive(uint8_model.read_bytes())
    assert (
        hashlib.sha256(again).hexdigest()
        == hashlib.sha256(derived_default.read_bytes()).hexdigest()
    )


def test_source_without_metadata_gives_the_same_graph(uint8_model, derived_default):
    """The official archive's file carries no metadata or labels: derived from it the
    model is the same but for those, and the package's labels make it self-describing."""
    model = tflite_model.load(uint8_model.read_bytes())
    tflite_model.set_metadata_buffer(model, tflite_meta.METADATA_BUFFER_NAME, None)
    bare = tflite_model.pack(model)
    assert tflite_meta.read_model_metadata(bare) is None and tflite_meta.embedded_files(bare) == {}
    derived = derive(bare)
    assert tflite_meta.read_model_metadata(derived).labels_file == "imagenet_labels.txt"
    a, b = tflite_model.load(derived), tflite_model.load(derived_default.read_bytes())
    weights_a = [tflite_model.buffer_bytes(a, t.buffer) for t in a.subgraphs[0].tensors]
    weights_b = [tflite_model.buffer_bytes(b, t.buffer) for t in b.subgraphs[0].tensors]
    assert weights_a == weights_b


@pytest.mark.parametrize("width", WIDTHS)
def test_width_variants_derive_and_pass_the_self_check(shared_models, width):
    source = (shared_models / f"mobilenet_v1_{width}_quant.tflite").read_bytes()
    derived = derive(source)
    check = int8_convert.self_check(source, derived)
    assert check.passed, check.describe()
    assert check.decided >= 1


def test_self_check_refuses_a_broken_conversion(uint8_model, derived_default):
    """A lost bias (as a wrong scale would give) must be caught before installing."""
    model = tflite_model.load(derived_default.read_bytes())
    graph = model.subgraphs[0]
    last_conv = [
        op
        for op in graph.operators
        if tflite_model.opcode_name(model.operatorCodes[op.opcodeIndex]) == "CONV_2D"
    ][-1]
    bias = graph.tensors[last_conv.inputs[2]]
    broken_bias = np.zeros(len(tflite_model.buffer_bytes(model, bias.buffer)), np.uint8)
    weights = graph.tensors[last_conv.inputs[1]]
    raw = np.frombuffer(tflite_model.buffer_bytes(model, weights.buffer), np.int8)
    model.buffers[bias.buffer].data = broken_bias
    model.buffers[weights.buffer].data = np.ascontiguousarray(raw[::-1]).view(np.uint8)
    broken = tflite_model.pack(model)
    check = int8_convert.self_check(uint8_model.read_bytes(), broken)
    assert not check.passed
    assert int8_convert.self_check(uint8_model.read_bytes(), derived_default.read_bytes()).passed


def test_pack_of_load_runs_the_same(uint8_model):
    """The generic helpers the model surgery of other modules relies on: a model loaded
    and packed again gives the same scores."""
    from edge_app.inference.runtime import select_runtime

    source = uint8_model.read_bytes()
    again = tflite_model.append_files(
        tflite_model.pack(tflite_model.load(source)), tflite_meta.embedded_files(source)
    )
    assert tflite_meta.read_model_metadata(again) == tflite_meta.read_model_metadata(source)
    runtime = select_runtime("auto")
    image = int8_convert.synthetic_inputs(224, 224, 1)[0]
    scores = [
        int8_convert._probabilities(runtime.make_interpreter(model_content=m, num_threads=1), image)
        for m in (source, again)
    ]
    assert np.array_equal(scores[0], scores[1])


def test_metadata_round_trip():
    meta = tflite_meta.ModelMetadata(
        name="Birds",
        description="Which bird",
        version="3",
        author="me",
        license="MIT",
        min_parser_version="1.0.0",
        inputs=[
            tflite_meta.TensorMetadata(
                name="image",
                description="a photo",
                normalization=tflite_meta.Normalization([0.0, 1.0, 2.0], [255.0, 255.0, 255.0]),
                color_space="RGB",
                value_min=[0.0],
                value_max=[255.0],
            )
        ],
        outputs=[tflite_meta.TensorMetadata(name="scores", value_min=[0.0], value_max=[1.0])],
        associated_files=[
            # the reader lists the model's files first, then the tensors'
            tflite_meta.AssociatedFile("README", "DESCRIPTIONS", attached_to="model"),
            tflite_meta.AssociatedFile(
                "birds.txt", "TENSOR_AXIS_LABELS", attached_to="output:scores"
            ),
        ],
    )
    buf = tflite_meta.build_metadata(meta)
    assert buf[4:8] == b"M001"
    assert tflite_meta.parse_metadata(buf) == meta
    assert tflite_meta.build_metadata(meta) == buf


# --------------------------------------------------------------------------- the CLI


def test_convert_int8_command(shared_models, tmp_path):
    out = tmp_path / "mine_int8.tflite"
    source = shared_models / "mobilenet_v1_0.25_128_quant.tflite"
    result = CliRunner().invoke(cli, ["models", "convert-int8", str(source), str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{out}: int8, 28 weighted layers requantized")
    assert out.read_bytes() == derive(source.read_bytes())
    again = CliRunner().invoke(cli, ["models", "convert-int8", str(source), str(out)])
    assert again.exit_code == 2
    assert again.stderr.strip() == f"edge-app: error: {out} exists; pass --force to replace it"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_convert_int8_refuses_a_float_model(float_model, tmp_path):
    out = tmp_path / "x.tflite"
    result = CliRunner().invoke(cli, ["models", "convert-int8", str(float_model), str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"edge-app: error: cannot convert {float_model}: 'input' is FLOAT32, not UINT8 "
        "(only uint8 quantized models are converted)"
    )
    assert not out.exists()


def test_convert_int8_refuses_unsupported_operators(uint8_model, tmp_path):
    """A uint8 model with an operator the derivation does not handle exactly."""
    s = tflite_model.schema()
    model = tflite_model.load(uint8_model.read_bytes())
    softmax = [c for c in model.operatorCodes if tflite_model.opcode_name(c) == "SOFTMAX"][0]
    softmax.builtinCode = softmax.deprecatedBuiltinCode = s.BuiltinOperator.LOGISTIC
    path = tmp_path / "odd.tflite"
    path.write_bytes(tflite_model.pack(model))
    with pytest.raises(int8_convert.ConversionRefused, match="operator.s. LOGISTIC"):
        int8_convert.convert(path.read_bytes(), where=str(path))
    result = CliRunner().invoke(cli, ["models", "convert-int8", str(path), str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"cannot convert {path} exactly: operator(s) LOGISTIC" in result.stderr


def test_convert_int8_on_garbage_names_the_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 4 + b"TFL3" + b"\xff" * 200)
    result = CliRunner().invoke(cli, ["models", "convert-int8", str(bad), str(tmp_path / "o")])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("edge-app: error: ") and str(bad) in line
    with pytest.raises(ModelError):
        int8_convert.convert(b"not a model")


def test_model_without_labels_gets_the_packaged_imagenet_labels(uint8_model, tmp_path):
    model = tflite_model.load(uint8_model.read_bytes())
    tflite_model.set_metadata_buffer(model, tflite_meta.METADATA_BUFFER_NAME, None)
    path = tmp_path / "bare" / "mobilenet_v1_1.0_224_quant.tflite"
    path.parent.mkdir()
    path.write_bytes(tflite_model.pack(model))
    classifier = Classifier(path, threads=1)
    assert classifier.labels_source == "packaged: imagenet_labels.txt"
    assert len(classifier.labels) == 1001 and classifier.labels[1] == "tench, Tinca tinca"

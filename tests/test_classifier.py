"""The classifier on real models and real photos."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.batch.decode import decode_image
from edge_app.errors import ConfigError, LabelsError, ModelError
from edge_app.inference.classifier import Classifier
from edge_app.inference.runtime import select_runtime

pytestmark = pytest.mark.core

EXPECTED_TOP1 = {
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


@pytest.fixture(scope="module")
def int8(int8_model):
    return Classifier(int8_model, threads=2)


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_well_known_photos_get_their_answer(int8, test_images, name):
    image = decode_image(test_images / name, model_size=int8.input_size).image
    result = int8.classify(image)
    assert result.top[0].label.split(",")[0] == EXPECTED_TOP1[name]
    assert len(result.top) == 5
    assert result.inference_ms > 0


def test_preprocessing_matters_for_grace_hopper(int8, test_images):
    image = decode_image(test_images / "grace_hopper.bmp").image
    assert int8.classify(image, crop="central").top[0].label == "mortarboard"
    assert int8.classify(image, crop="square").top[0].label == "military uniform"
    assert int8.classify(image, crop="none").top[0].label == "military uniform"


@pytest.mark.parametrize("model_fixture", ["int8_model", "uint8_model", "float_model"])
def test_scores_equal_a_direct_interpreter_call(request, test_images, model_fixture):
    """Our dequantized scores are exactly what the runtime computes for that tensor."""
    model_path = request.getfixturevalue(model_fixture)
    classifier = Classifier(model_path, threads=1)
    image = decode_image(test_images / "cat.bmp").image
    classifier.preprocess(image)
    tensor = classifier.interpreter.get_tensor(classifier.spec.input_index).copy()
    classifier.invoke()
    ours = classifier.scores()

    direct = select_runtime().make_interpreter(model_path, num_threads=1)
    inp = direct.get_input_details()[0]
    out = direct.get_output_details()[0]
    assert tensor.dtype == inp["dtype"]
    direct.set_tensor(inp["index"], tensor)
    direct.invoke()
    raw = direct.get_tensor(out["index"]).reshape(-1)
    scale, zero = out["quantization"]
    expected = (
        raw.astype(np.float32)
        if raw.dtype == np.float32
        else (raw.astype(np.float32) - zero) * scale
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert int(np.argmax(ours)) == 286  # Egyptian cat


def test_int8_model_contract_is_read_from_the_model(int8):
    spec = int8.spec
    assert spec.input_size == (224, 224)
    assert np.dtype(spec.input_dtype) == np.int8
    assert spec.input_scale == pytest.approx(1 / 128) and spec.input_zero_point == 0
    assert spec.num_outputs == 1001
    assert spec.output_scale == pytest.approx(1 / 256) and spec.output_zero_point == -128


def test_float_model_normalisation_comes_from_its_metadata(float_model):
    classifier = Classifier(float_model, threads=1)
    assert classifier.spec.normalization_source == "metadata"
    assert classifier.spec.mean == (127.5, 127.5, 127.5)


def test_smaller_width_variant_reads_its_own_input_size(shared_models, test_images):
    classifier = Classifier(shared_models / "mobilenet_v1_0.5_160_quant.tflite", threads=1)
    assert classifier.input_size == (160, 160)
    image = decode_image(test_images / "parrot.jpg").image
    assert classifier.classify(image).top[0].label == "macaw"


def test_embedded_labels_include_the_background_class(int8):
    assert len(int8.labels) == 1001
    assert int8.labels[0] == "background"
    assert int8.labels[653] == "military uniform"
    assert int8.labels_source.startswith("embedded")


@pytest.mark.parametrize(
    "layout",
    ["plain_1001", "plain_1000", "id_space", "id_colon"],
)
def test_label_files_in_every_accepted_layout(tmp_path, int8_model, shared_models, layout):
    lines = (shared_models / "imagenet_labels.txt").read_text().splitlines()
    if layout == "plain_1001":
        text = "\n".join(lines)
    elif layout == "plain_1000":
        text = "\n".join(lines[1:])  # no background line: index 0 is added
    elif layout == "id_space":
        text = "\n".join(f"{i} {label}" for i, label in enumerate(lines))
    else:
        text = "\n".join(f"{i}:{label}" for i, label in enumerate(lines))
    path = tmp_path / "labels.txt"
    path.write_text(text + "\n")
    classifier = Classifier(int8_model, labels=path, threads=1)
    assert classifier.labels[653] == "military uniform"
    assert classifier.labels[0] == "background"


def test_label_count_mismatch_is_one_line(tmp_path, int8_model):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n")
    with pytest.raises(LabelsError, match="has 2 labels but the model has 1001 outputs"):
        Classifier(int8_model, labels=path, threads=1)


def test_missing_labels_file_is_named(tmp_path, int8_model):
    with pytest.raises(LabelsError, match="labels file not found"):
        Classifier(int8_model, labels=tmp_path / "nope.txt", threads=1)


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        Classifier(tmp_path / "missing.tflite")


def test_threshold_drops_low_scores(int8_model, test_images):
    classifier = Classifier(int8_model, threads=1, threshold=0.5)
    image = decode_image(test_images / "parrot.jpg").image
    top = classifier.classify(image).top
    assert [p.label for p in top] == ["macaw"]


def test_equal_scores_rank_by_class_index_even_across_the_cut(int8):
    # int8 outputs tie often; the shown top-k must not depend on a partition's whim
    scores = np.zeros(1001, np.float32)
    scores[[900, 40, 700, 3, 500]] = 0.5
    scores[950] = 0.75
    assert [p.index for p in int8.top(scores, k=3)] == [950, 3, 40]
    assert [p.index for p in int8.top(scores, k=6)] == [950, 3, 40, 500, 700, 900]


def test_bad_settings_are_config_errors(int8_model):
    with pytest.raises(ConfigError):
        Classifier(int8_model, crop="diagonal")
    with pytest.raises(ConfigError):
        Classifier(int8_model, top_k=0)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 8], "input shape is \\[1, 8\\]"),
        ([1, 32, 32, 3], "output shape is \\[1, 32, 32, 3\\]"),
    ],
)
def test_a_model_that_is_not_a_classifier_is_refused(tmp_path, shape, message):
    from tiny_models import add_model

    path = tmp_path / "adder.tflite"
    path.write_bytes(add_model(shape))
    # it is a real, working TFLite model...
    interpreter = select_runtime().make_interpreter(path, num_threads=1)
    interpreter.invoke()
    # ...but not an image classifier
    with pytest.raises(ModelError, match=f"not an image classifier: adder.tflite {message}"):
        Classifier(path, labels=None, threads=1)

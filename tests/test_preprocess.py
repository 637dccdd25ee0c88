"""The one preprocessing path: crop geometry, colour order, dtype mapping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_app.inference.preprocess import Preprocessor, crop_box, crop_covers

pytestmark = pytest.mark.core


def test_central_crop_is_87_5_percent_of_the_shorter_side_centred():
    assert crop_box(480, 640, "central") == (30, 110, 420, 420)
    assert crop_box(480, 640, "square") == (0, 80, 480, 480)
    assert crop_box(480, 640, "none") == (0, 0, 480, 640)
    # portrait photos crop the same way
    assert crop_box(640, 480, "central") == (110, 30, 420, 420)


def test_crop_keeps_a_non_square_model_aspect():
    top, left, h, w = crop_box(1080, 1920, "square", target_aspect=2.0)
    assert (h, w) == (960, 1920) and top == 60 and left == 0


def test_crop_covers_tells_when_a_reduced_image_is_still_big_enough():
    assert crop_covers(270, 480, "central", (224, 224))  # 1080p / 4: 236 px crop
    assert not crop_covers(135, 240, "central", (224, 224))  # 1080p / 8


@pytest.fixture(scope="module")
def photo(test_images):
    image = cv2.imread(str(test_images / "parrot.jpg"))
    assert image is not None
    return image


def reference_rgb(frame: np.ndarray, crop: str = "central") -> np.ndarray:
    """The documented path: crop, area-average by the largest power of two that leaves
    at least the model size (the crop then snapped to that grid), bilinear for the
    rest, RGB."""
    height, width = frame.shape[:2]
    top, left, h, w = crop_box(height, width, crop)
    factor = min(h // 224, w // 224)
    if factor >= 2:
        factor = 2 ** int(np.log2(factor))
        top, left, h, w = (
            v * factor for v in crop_box(-(-height // factor), -(-width // factor), crop)
        )
        h, w = min(h, height - top) // factor * factor, min(w, width - left) // factor * factor
    region = frame[top : top + h, left : left + w]
    if factor >= 2:
        size = (region.shape[1] // factor, region.shape[0] // factor)
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    resized = cv2.resize(region, (224, 224), interpolation=cv2.INTER_LINEAR_EXACT)
    return resized[:, :, ::-1]


def test_big_frames_follow_the_documented_path(photo):
    for size in ((1920, 1080), (1280, 720), (4000, 3000), (3001, 2001)):
        frame = cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
        for crop in ("central", "square", "none"):
            out = Preprocessor((224, 224), np.uint8, crop).to_model_array(frame)
            np.testing.assert_array_equal(out, reference_rgb(frame, crop), err_msg=str(size))


def test_a_big_jpeg_reaches_the_model_alike_decoded_reduced_or_in_full(photo, tmp_path):
    """libjpeg's 1/8 decode and a full decode must give the model the same picture,
    or --full-decode would change answers (it once did: 1.6 points of top-1)."""
    from edge_app.batch.decode import decode_image

    path = tmp_path / "12mp.jpg"
    big = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    reduced = decode_image(path, model_size=(224, 224))
    full = decode_image(path, model_size=(224, 224), reduced=False)
    assert (reduced.reduction, full.reduction) == (8, 1)
    preprocessor = Preprocessor((224, 224), np.uint8, "central")
    a = preprocessor.to_model_array(reduced.image).astype(np.int16)
    b = preprocessor.to_model_array(full.image).astype(np.int16)
    difference = np.abs(a - b)
    assert difference.mean() < 1.0 and difference.max() <= 8


@pytest.mark.parametrize("crop", ["central", "square", "none"])
def test_uint8_input_is_the_rgb_crop_resized(photo, crop):
    out = Preprocessor((224, 224), np.uint8, crop).to_model_array(photo)
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, reference_rgb(photo, crop))


def test_big_frames_are_area_averaged_not_aliased():
    """A 1080p frame of 1-pixel stripes must reach the model as flat grey, not moire."""
    stripes = np.zeros((1080, 1920, 3), np.uint8)
    stripes[:, ::2] = 255
    out = Preprocessor((224, 224), np.uint8, "central").to_model_array(stripes)
    assert abs(float(out.mean()) - 127.5) < 3
    assert out.std() < 10


def test_int8_input_is_pixel_minus_128_exactly(photo):
    as_uint8 = Preprocessor((224, 224), np.uint8).to_model_array(photo).astype(np.int16)
    as_int8 = Preprocessor((224, 224), np.int8).to_model_array(photo)
    assert as_int8.dtype == np.int8
    np.testing.assert_array_equal(as_int8.astype(np.int16), as_uint8 - 128)


def test_float_input_uses_the_given_normalisation(photo):
    pre = Preprocessor((224, 224), np.float32, mean=(127.5,) * 3, std=(127.5,) * 3)
    out = pre.to_model_array(photo)
    expected = (reference_rgb(photo).astype(np.float32) - 127.5) / 127.5
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert -1.0 <= out.min() and out.max() <= 1.0


def test_channels_reach_the_model_as_rgb():
    blue_bgr = np.zeros((300, 400, 3), np.uint8)
    blue_bgr[:, :, 0] = 255  # OpenCV frames are BGR: channel 0 is blue
    out = Preprocessor((224, 224), np.uint8, "none").to_model_array(blue_bgr)
    assert (out[:, :, 2] == 255).all() and (out[:, :, :2] == 0).all()


def test_writes_straight_into_the_given_buffer(photo):
    buffer = np.zeros((1, 224, 224, 3), np.int8)
    Preprocessor((224, 224), np.int8)(photo, buffer[0])
    assert buffer.any()  # the caller's memory (the interpreter input) was filled in place


def test_small_frames_are_enlarged_not_refused():
    tiny = np.full((60, 80, 3), 200, np.uint8)
    out = Preprocessor((224, 224), np.uint8, "none").to_model_array(tiny)
    assert out.shape == (224, 224, 3) and (out == 200).all()

"""Frame sources: picamera2 (through the one fake, Pi 4 and Pi 5 modes), OpenCV video
files, cameras and streams, and `--source` parsing including `auto`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from fake_picamera2 import make_fake_picamera2, ycbcr_full_to_rgb

from edge_app.errors import CameraUnavailable, SourceError
from edge_app.sources import make_source, open_source, v4l2_capture_devices
from edge_app.sources.opencv_source import OpenCVCameraSource, StreamSource, VideoFileSource
from edge_app.sources.picamera2_source import Picamera2Source, yuv420_to_bgr


@pytest.fixture(scope="module")
def parrot(test_images) -> np.ndarray:
    return cv2.imread(str(test_images / "parrot.jpg"))


@pytest.fixture(scope="module")
def classifiers(shared_models):
    """The default 224 px int8 model and the 128 px uint8 one, by input size."""
    from edge_app.inference.classifier import Classifier

    names = ("mobilenet_v1_1.0_224_int8", "mobilenet_v1_0.25_128_quant")
    loaded = [Classifier(shared_models / f"{name}.tflite", threads=1) for name in names]
    return {clf.input_size[0]: clf for clf in loaded}


@pytest.fixture(scope="module")
def classifier(classifiers):
    return classifiers[224]


def model_input_rgb(classifier, bgr: np.ndarray) -> np.ndarray:
    """The pixels the model sees (its input tensor, back to 0..255 RGB), for the
    model-sized image the pipeline hands over with crop "none"."""
    classifier.preprocess(bgr, crop="none")
    tensor = classifier.interpreter.get_tensor(classifier.spec.input_index)[0]
    if tensor.dtype == np.int8:  # q = pixel - 128
        return (tensor.astype(np.int16) + 128).astype(np.uint8)
    assert tensor.dtype == np.uint8  # q = pixel
    return tensor.copy()


def camera_source(picamera2, libcamera, **kwargs) -> Picamera2Source:
    kwargs.setdefault("fps", 200.0)
    return Picamera2Source(picamera2_module=picamera2, libcamera_module=libcamera, **kwargs)


# -- picamera2, Pi 4: YUV420 lores with padded strides ------------------------------------
@pytest.mark.parametrize("model_px", [224, 128])  # stride 256 (padded) and 128 (not)
def test_pi4_yuv420_lores_reaches_the_model_as_the_right_rgb(parrot, classifiers, model_px):
    classifier = classifiers[model_px]
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=4)
    with camera_source(picamera2, libcamera, model_size=(model_px, model_px)) as source:
        lores = source._cam.stream_configuration("lores")
        assert lores["format"] == "YUV420"
        assert lores["stride"] == (256 if model_px == 224 else 128)
        frame = source.read()
        y, u, v = source._cam.last_yuv
        truth_rgb = source._cam.truth("lores")[..., ::-1]
    assert frame.model_image.shape == (model_px, model_px, 3)
    seen = model_input_rgb(classifier, frame.model_image)

    # Expected: the full-range BT.601 inverse of the camera's planes, chroma repeated 2x2.
    up = np.ones((2, 2), np.uint8)
    expected = ycbcr_full_to_rgb(y, np.kron(u, up), np.kron(v, up))
    diff = np.abs(seen.astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"off by up to {diff.max()} from the exact conversion"
    # And the picture is the scene: no channel swap, range stretch or stride shear.
    # Chroma subsampling blurs colour edges (unbiased); those faults would bias it.
    error = seen.astype(float) - truth_rgb.astype(float)
    assert np.abs(error).mean() < 6.0
    assert np.abs(error.mean(axis=(0, 1))).max() < 1.5


def test_pi4_yuv_conversion_is_full_range_not_video_range():
    """picamera2's preview colour space is sYCC (full range). OpenCV's I420 conversion
    assumes video range and would stretch a light grey; ours keeps it."""
    grey = np.full((64, 64, 3), 200, np.uint8)
    picamera2, libcamera, world = make_fake_picamera2(grey, pi=4)
    with camera_source(picamera2, libcamera, size=(64, 64), model_size=(64, 64)) as source:
        frame = source.read()
        raw = source._cam.capture_array("lores")
    assert raw.shape == (96, 64)  # (h * 3 / 2, stride)
    assert np.abs(frame.model_image.astype(int) - 200).max() <= 1
    video_range = cv2.cvtColor(raw, cv2.COLOR_YUV2BGR_I420)
    assert np.abs(video_range.astype(int) - 200).max() > 10


def test_yuv420_to_bgr_drops_padding_per_plane():
    """Padding bytes (0xA5) in any plane must not leak into the picture."""
    w, h, stride = 6, 4, 16
    y = np.arange(w * h, dtype=np.uint8).reshape(h, w) + 100
    u = np.array([[120, 130, 140], [125, 135, 145]], np.uint8)
    v = np.array([[110, 150, 128], [128, 100, 160]], np.uint8)
    buf = np.full((h * 3 // 2, stride), 0xA5, np.uint8)
    buf[:h, :w] = y
    chroma = buf[h:].reshape(-1)
    chroma[: h // 2 * stride // 2].reshape(h // 2, stride // 2)[:, : w // 2] = u
    chroma[h // 2 * stride // 2 :].reshape(h // 2, stride // 2)[:, : w // 2] = v
    got = yuv420_to_bgr(buf, w, h)[..., ::-1]
    up = np.ones((2, 2), np.uint8)
    expected = ycbcr_full_to_rgb(y, np.kron(u, up), np.kron(v, up))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


# -- picamera2, Pi 5: RGB lores ------------------------------------------------------------
def test_pi5_rgb888_lores_is_bgr_in_memory_and_reaches_the_model_exactly(parrot, classifier):
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=5)
    with camera_source(picamera2, libcamera, model_size=(224, 224)) as source:
        lores = source._cam.stream_configuration("lores")
        assert lores["format"] == "RGB888"
        assert lores["stride"] == 704  # 224 * 3 = 672, padded to 64 bytes
        frame = source.read()
        truth_bgr = source._cam.truth("lores")
    np.testing.assert_array_equal(frame.model_image, truth_bgr)
    np.testing.assert_array_equal(
        model_input_rgb(classifier, frame.model_image), truth_bgr[..., ::-1]
    )


def test_pi4_refuses_rgb_lores_like_the_real_camera(parrot):
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=4)
    cam = picamera2.Picamera2(0)
    config = cam.create_preview_configuration(lores={"size": (224, 224), "format": "RGB888"})
    with pytest.raises(RuntimeError, match="lores stream must be YUV"):
        cam.configure(config)
    cam.close()


@pytest.mark.parametrize("pi", [4, 5])
def test_main_stream_is_the_bgr_display_picture_with_the_asked_settings(parrot, pi):
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=pi)
    source = camera_source(
        picamera2, libcamera, size=(800, 600), fps=50.0, buffer_count=6, hflip=True
    )
    source.open()
    try:
        config = source._cam.camera_config
        assert config["main"]["size"] == (800, 600)
        assert config["buffer_count"] == 6
        assert config["controls"]["FrameRate"] == 50.0
        assert config["transform"].hflip == 1 and config["transform"].vflip == 0
        first, second = source.read(), source.read()
        np.testing.assert_array_equal(first.image, source._cam.truth("main"))
        mirrored = cv2.resize(parrot, (800, 600), interpolation=cv2.INTER_AREA)[:, ::-1]
        np.testing.assert_array_equal(first.image, mirrored)
        assert (first.number, second.number) == (0, 1)
        assert second.monotonic >= first.monotonic
        assert source._cam.requests_out == 0  # every request went back to the camera
    finally:
        source.close()
    assert world.open_cameras == [] and world.closed == 1


def test_missing_busy_and_uninstalled_pi_cameras_give_readable_errors(parrot):
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=4)
    with pytest.raises(CameraUnavailable, match="no Pi camera number 1 .*imx708"):
        camera_source(picamera2, libcamera, camera=1).open()
    world.busy = True
    with pytest.raises(CameraUnavailable, match="another program"):
        camera_source(picamera2, libcamera).open()
    try:
        import picamera2 as real  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="apt install python3-picamera2"):
            Picamera2Source(0).open()


def test_an_unplugged_camera_raises_instead_of_waiting_forever(parrot):
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=5)
    with camera_source(picamera2, libcamera, capture_timeout=0.1) as source:
        assert source.read() is not None
        world.unplug()
        with pytest.raises(SourceError, match="stopped delivering frames"):
            source.read()


# -- --source auto ---------------------------------------------------------------------
def test_auto_prefers_a_pi_camera(parrot, tmp_path):
    picamera2, libcamera, world = make_fake_picamera2(parrot, pi=5)
    source = make_source(
        "auto", picamera2_module=picamera2, libcamera_module=libcamera, dev_root=tmp_path
    )
    assert isinstance(source, Picamera2Source)


def test_auto_skips_usb_cameras_listed_by_picamera2(parrot, tmp_path):
    usb = {
        "Model": "HD Webcam",
        "Id": "/base/scb/pcie@7d500000/pci@0,0/usb@0,0-1:1.0-046d:0825",
        "Num": 0,
    }
    picamera2, libcamera, world = make_fake_picamera2(parrot, cameras=[usb])
    with pytest.raises(CameraUnavailable) as excinfo:
        make_source(
            "auto", picamera2_module=picamera2, libcamera_module=libcamera, dev_root=tmp_path
        )
    assert "picamera2 (no Pi camera found)" in str(excinfo.value)


def test_auto_with_no_camera_says_what_it_tried_and_how_to_pass_a_file(tmp_path):
    (tmp_path / "video0").write_text("not a device")  # ioctl fails: not a camera
    with pytest.raises(CameraUnavailable) as excinfo:
        make_source("auto", dev_root=tmp_path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "no camera found" in message
    assert "picamera2" in message and "V4L2" in message
    assert "--source FILE" in message and "rtsp://" in message
    assert v4l2_capture_devices(tmp_path) == []


# -- spec parsing ------------------------------------------------------------------------
def test_specs_choose_the_right_source(demo_video, parrot):
    picamera2, libcamera, _ = make_fake_picamera2(parrot)
    camera = make_source("picamera2:0", picamera2_module=picamera2, libcamera_module=libcamera)
    assert isinstance(camera, Picamera2Source) and camera.camera == 0
    assert isinstance(make_source("0"), OpenCVCameraSource)
    assert make_source("/dev/video3").device == "/dev/video3"
    assert isinstance(make_source("rtsp://cam.local:8554/live"), StreamSource)
    assert isinstance(make_source("http://cam.local/stream.mjpg"), StreamSource)
    video = make_source(str(demo_video), pace=False, loop=True)
    assert isinstance(video, VideoFileSource) and video.lossless and video.loop
    assert not make_source(str(demo_video)).lossless  # paced by default
    assert isinstance(make_source(f"file://{demo_video}"), VideoFileSource)


def test_missing_file_and_missing_devices_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file .*rtsp://"):
        make_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(CameraUnavailable, match="does not exist"):
        open_source("/dev/video99")
    with pytest.raises(CameraUnavailable, match="cannot open stream"):
        open_source("rtsp://127.0.0.1:9/nothing-listens-here")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    with pytest.raises(SourceError, match="not a video OpenCV can decode"):
        open_source(str(not_video))


# -- video files -----------------------------------------------------------------------
def test_video_file_delivers_every_frame_numbered_then_ends(demo_video):
    with open_source(str(demo_video), pace=False) as source:
        assert source.fps == pytest.approx(30.0)
        assert source.frame_count == 420
        numbers = []
        while (frame := source.read()) is not None:
            assert frame.image.shape == (480, 640, 3) and frame.model_image is None
            numbers.append(frame.number)
    assert numbers == list(range(420))


def test_loop_repeats_the_video_with_rising_frame_numbers(demo_video):
    with open_source(str(demo_video), pace=False, loop=True) as source:
        first = source.read()
        for _ in range(419):
            source.read()
        again = source.read()
    assert again.number == 420
    np.testing.assert_array_equal(again.image, first.image)


def test_paced_file_delivers_at_its_own_frame_rate(demo_video):
    """Frame n is not delivered before n / fps: a one-sided check that cannot flake (one
    interval of slack for a late stamp of frame 0 on a busy machine)."""
    with open_source(str(demo_video), pace=True) as source:
        frames = [source.read() for _ in range(10)]
    span = frames[-1].monotonic - frames[0].monotonic
    assert span >= 8 / 30.0

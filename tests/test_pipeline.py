"""The live pipeline: hand-off, meters, limits, smoothing, failures and reconnects,
with the real model and the demo video (the Pi camera through the one fake)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import cv2
import numpy as np
import pytest
from fake_picamera2 import make_fake_picamera2

from edge_app.errors import SourceError
from edge_app.live.pipeline import FrameSlot, LatencyHistogram, Pipeline
from edge_app.live.smoothing import LabelSmoother
from edge_app.results import Frame, Prediction
from edge_app.sources import open_source
from edge_app.sources.picamera2_source import Picamera2Source

# The answer (first synonym of the label) for each demo segment's photo; grace_hopper
# depends on the crop (README), so it is not judged.
ANSWERS = {
    "parrot.jpg": "macaw",
    "hot_dog.jpg": "hotdog",
    "dragonfly.bmp": "dragonfly",
    "bird.bmp": "chickadee",
    "cat.bmp": "Egyptian cat",
    "sunflower.bmp": "daisy",
}


@pytest.fixture(scope="module")
def classifier(int8_model):
    from edge_app.inference.classifier import Classifier

    return Classifier(int8_model)


@pytest.fixture(scope="module")
def parrot(test_images):
    return cv2.imread(str(test_images / "parrot.jpg"))


def wait_until(predicate, timeout: float = 20.0) -> bool:
    """Poll for a condition (the test fails on the assertion, not on a clock)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def collect(pipeline: Pipeline) -> list:
    results = []
    pipeline.add_listener(lambda result, frame: results.append(result))
    return results


def fake_camera_source(scene, pi=4, **kwargs):
    picamera2, libcamera, world = make_fake_picamera2(scene, pi=pi)
    kwargs.setdefault("fps", 100.0)
    source = Picamera2Source(
        model_size=(224, 224), picamera2_module=picamera2, libcamera_module=libcamera, **kwargs
    )
    return source, world


# -- the judged run -----------------------------------------------------------------------
def test_no_pace_video_classifies_every_frame_in_order(classifier, demo_video, demo_segments):
    pipeline = Pipeline(open_source(str(demo_video), pace=False), classifier)
    results = collect(pipeline)
    pipeline.start()
    assert pipeline.wait(120)
    pipeline.stop()
    assert [r.frame for r in results] == list(range(420))
    stats = pipeline.stats()
    assert stats["frames"] == 420 and stats["results"] == 420 and stats["dropped"] == 0
    assert stats["source_state"] == "ended" and pipeline.error is None
    for first, last, photo in demo_segments:
        if photo not in ANSWERS:
            continue
        top1 = Counter(r.top[0].label.split(",")[0] for r in results[first : last + 1])
        assert top1[ANSWERS[photo]] > (last - first + 1) / 2, (photo, top1.most_common(3))


# -- hand-off --------------------------------------------------------------------------
def _frame(n: int) -> Frame:
    return Frame(n, time.time(), np.zeros((4, 4, 3), np.uint8), None, time.monotonic())


def test_slot_keeps_the_newest_frame_and_counts_the_replaced():
    slot = FrameSlot()
    for n in range(5):
        slot.put(_frame(n))
    assert slot.take(0).number == 4
    assert slot.dropped == 4
    assert slot.take(0) is None


def test_lossless_put_waits_for_the_frame_to_be_taken():
    slot = FrameSlot()
    slot.put(_frame(0), wait=True)
    second_in = threading.Event()
    threading.Thread(target=lambda: (slot.put(_frame(1), wait=True), second_in.set())).start()
    assert not second_in.wait(0.2)  # still waiting: frame 0 not taken
    assert slot.take(1).number == 0
    assert second_in.wait(5)
    assert slot.take(1).number == 1 and slot.dropped == 0
    slot.close()
    assert slot.put(_frame(2), wait=True) is False


def test_a_slow_consumer_drops_camera_frames_and_counts_them(classifier, parrot):
    source, world = fake_camera_source(parrot, fps=200.0)
    pipeline = Pipeline(source, classifier, max_results=3)
    held = []

    def slow_listener(result, frame):
        # Hold inference until the camera has delivered three more frames.
        start = world.frames
        wait_until(lambda: world.frames >= start + 3)
        held.append(result)

    pipeline.add_listener(slow_listener)
    pipeline.start()
    assert pipeline.wait(30)
    pipeline.stop()
    stats = pipeline.stats()
    assert stats["results"] == 3
    assert stats["dropped"] >= 2  # each hold let at least 3 frames into the one slot
    # Every captured frame was classified, dropped, or is the one left in the slot.
    assert (
        stats["results"] + stats["dropped"]
        <= stats["frames"]
        <= stats["results"] + stats["dropped"] + 1
    )
    numbers = [r.frame for r in held]
    assert numbers == sorted(numbers) and numbers[-1] - numbers[0] >= 4  # newest wins


# -- the Pi camera path ------------------------------------------------------------------
@pytest.mark.parametrize("pi", [4, 5])
def test_pi_camera_lores_goes_to_the_model_uncropped(classifier, parrot, pi):
    from edge_app.inference.classifier import Classifier

    seen = []

    class RecordingClassifier(Classifier):
        def classify(self, bgr, crop=None):
            seen.append((bgr.shape, crop))
            return super().classify(bgr, crop)

    recording = RecordingClassifier(classifier.model_path, threads=1)
    source, world = fake_camera_source(parrot, pi=pi)
    pipeline = Pipeline(source, recording, max_results=3)
    results = collect(pipeline)
    pipeline.start()
    assert pipeline.wait(30)
    pipeline.stop()
    assert seen == [((224, 224, 3), "none")] * 3
    assert all(r.top[0].label == "macaw" for r in results)
    assert world.open_cameras == []  # stop released the camera


# -- limits ------------------------------------------------------------------------------
def test_max_results_ends_the_run(classifier, demo_video):
    pipeline = Pipeline(open_source(str(demo_video), pace=False), classifier, max_results=7)
    results = collect(pipeline)
    pipeline.start()
    assert pipeline.wait(30)
    pipeline.stop()
    assert [r.frame for r in results] == list(range(7))
    assert pipeline.stats()["source_state"] == "ended"


def test_duration_ends_a_looping_paced_video(classifier, demo_video):
    pipeline = Pipeline(
        open_source(str(demo_video), pace=True, loop=True), classifier, duration=0.5
    )
    pipeline.start()
    assert pipeline.wait(30)  # would never end by itself: it loops
    pipeline.stop()
    stats = pipeline.stats()
    assert stats["source_state"] == "ended" and stats["results"] >= 1


def test_paced_video_runs_at_its_frame_rate_without_queueing(classifier, demo_video):
    """Paced like a camera: capture never runs ahead of the file's rate, and no frame
    waits anywhere but in the one-frame slot, so latency stays bounded."""
    pipeline = Pipeline(open_source(str(demo_video), pace=True), classifier, max_results=45)
    results = collect(pipeline)
    frames = []
    pipeline.add_listener(lambda result, frame: frames.append(frame))
    pipeline.start()
    assert pipeline.wait(60)
    pipeline.stop()
    stats = pipeline.stats()
    numbers = [r.frame for r in results]
    assert numbers == sorted(set(numbers))
    # Every frame was classified, dropped, or is the one left in the slot.
    assert stats["frames"] - stats["results"] - stats["dropped"] in (0, 1)
    # The pacer never delivers faster than the file's rate: frame n is not stamped before
    # n / fps after frame 0. One-sided (a busy machine only delivers later), with one frame
    # interval of slack for a late stamp of frame 0 itself.
    first = frames[0]
    for frame in frames[1:]:
        assert frame.monotonic - first.monotonic >= (frame.number - first.number - 1) / 30.0
    assert stats["latency_ms_p95"] < 1000.0


# -- meters ------------------------------------------------------------------------------
def test_stats_report_the_contract_fields(classifier, demo_video):
    pipeline = Pipeline(open_source(str(demo_video), pace=False), classifier, max_results=40)
    pipeline.start()
    assert pipeline.wait(30)
    stats = pipeline.stats()
    summary = pipeline.summary()
    pipeline.stop()
    for key in (
        "frames", "results", "dropped", "camera_fps", "inference_fps", "invoke_ms",
        "latency_ms_p50", "latency_ms_p95", "source_state", "heartbeat", "model",
        "runtime", "threads",
    ):  # fmt: skip
        assert key in stats, key
    assert stats["model"] == "mobilenet_v1_1.0_224_int8"
    assert stats["runtime"].startswith(classifier.runtime.name)
    assert stats["threads"] == classifier.threads
    assert stats["invoke_ms"] > 0
    assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p95"]
    assert stats["heartbeat"] <= time.monotonic()
    assert summary["results"] == 40 and summary["mean_fps"] > 0
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p95"]
    result, frame = pipeline.latest()
    assert result.frame == frame.number == 39
    assert pipeline.latest_scores().shape == (1001,)


def test_latency_histogram_percentiles_within_a_percent():
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.add(float(ms))
    assert histogram.percentile(50) == pytest.approx(50, rel=0.02)
    assert histogram.percentile(95) == pytest.approx(95, rel=0.02)


def test_a_failing_listener_does_not_stop_the_pipeline(classifier, demo_video):
    pipeline = Pipeline(open_source(str(demo_video), pace=False), classifier, max_results=5)

    def broken(result, frame):
        raise ValueError("listener bug")

    pipeline.add_listener(broken)
    results = collect(pipeline)
    pipeline.start()
    assert pipeline.wait(30)
    pipeline.stop()
    assert len(results) == 5


def test_pause_holds_a_video_and_resume_continues(classifier, demo_video):
    pipeline = Pipeline(open_source(str(demo_video), pace=False), classifier, max_results=40)
    results = collect(pipeline)
    pipeline.start()
    assert wait_until(lambda: len(results) >= 3)
    pipeline.pause()
    paused_at = time.monotonic()
    # Once the inference thread comes round its loop after the pause, whatever it was
    # classifying has been delivered; from then on nothing more may arrive.
    assert wait_until(lambda: pipeline.stats()["heartbeat"] > paused_at)
    held = len(results)
    time.sleep(0.3)
    assert len(results) == held and pipeline.stats()["paused"]
    pipeline.resume()
    assert pipeline.wait(60)
    pipeline.stop()
    assert [r.frame for r in results] == list(range(40))  # nothing skipped by the pause


# -- smoothing ---------------------------------------------------------------------------
def test_smoothing_is_an_exponential_average():
    smoother = LabelSmoother(smooth=0.5)
    a = np.array([1.0, 0.0], np.float32)
    b = np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(smoother.update(a), [1.0, 0.0])
    np.testing.assert_allclose(smoother.update(b), [0.5, 0.5])
    np.testing.assert_allclose(smoother.update(b), [0.25, 0.75])
    assert LabelSmoother().update(a) is a  # off: untouched


def test_hysteresis_keeps_the_label_until_beaten_by_the_margin():
    labels = ["background", "cat", "dog"]
    smoother = LabelSmoother(hysteresis=0.1)

    def shown(cat, dog):
        scores = np.array([0.0, cat, dog], np.float32)
        top = [Prediction(i, labels[i], float(scores[i])) for i in np.argsort(-scores)[:2]]
        return smoother.top(scores, top, labels)[0].label

    assert shown(0.6, 0.4) == "cat"
    assert shown(0.46, 0.54) == "cat"  # dog leads, but by less than 0.1
    assert shown(0.44, 0.56) == "dog"  # by 0.12: switches
    assert shown(0.5, 0.5) == "dog"
    assert LabelSmoother().top(np.array([0.0, 0.4, 0.6]), [], labels) == []


def test_smoothing_in_the_pipeline_keeps_raw_scores(classifier, demo_video):
    pipeline = Pipeline(
        open_source(str(demo_video), pace=False),
        classifier,
        smooth=0.8,
        hysteresis=0.1,
        max_results=110,
    )
    results = collect(pipeline)
    pipeline.start()
    assert pipeline.wait(120)
    pipeline.stop()
    changes = sum(
        a.top[0].index != b.top[0].index for a, b in zip(results, results[1:], strict=False)
    )
    raw_changes = sum(
        a.raw_top[0].index != b.raw_top[0].index for a, b in zip(results, results[1:], strict=False)
    )
    assert changes <= raw_changes and changes <= 3  # one segment change, little flicker
    # Raw results are those of the unsmoothed model; at a segment change the smoothed
    # label lags behind the raw one.
    assert results[60].raw_top[0].label == "macaw"
    assert results[60].top[0].label != "macaw"
    assert results[100].top[0].label == "macaw"


# -- failures and reconnects -------------------------------------------------------------
def test_a_missing_source_fails_start_with_a_readable_error(classifier, parrot):
    source, world = fake_camera_source(parrot)
    world.busy = True
    pipeline = Pipeline(source, classifier)
    with pytest.raises(SourceError, match="another program"):
        pipeline.start()
    pipeline.stop()


def test_without_reconnect_an_unplugged_camera_ends_the_run_with_the_error(classifier, parrot):
    source, world = fake_camera_source(parrot, capture_timeout=0.1)
    pipeline = Pipeline(source, classifier)
    results = collect(pipeline)
    pipeline.start()
    assert wait_until(lambda: len(results) >= 2)
    world.unplug()
    assert pipeline.wait(30)
    pipeline.stop()
    assert isinstance(pipeline.error, SourceError)
    assert "stopped delivering frames" in str(pipeline.error)
    assert pipeline.stats()["source_state"] == "failed"
    assert world.open_cameras == []


def test_reconnect_survives_an_unplugged_camera_and_resumes(classifier, parrot, caplog):
    scene = parrot
    picamera2, libcamera, world = make_fake_picamera2(scene, pi=5)

    def factory():
        return Picamera2Source(
            fps=100.0,
            model_size=(224, 224),
            capture_timeout=0.1,
            picamera2_module=picamera2,
            libcamera_module=libcamera,
        )

    pipeline = Pipeline(None, classifier, reconnect=True, source_factory=factory)
    results = collect(pipeline)
    with caplog.at_level("INFO", logger="edge_app.live.pipeline"):
        pipeline.start()
        assert wait_until(lambda: len(results) >= 3)
        world.unplug()
        assert wait_until(lambda: pipeline.stats()["source_state"] == "retrying")
        assert world.open_cameras == []  # the dead camera was released
        before = len(results)
        # While unplugged the capture loop keeps reporting it is alive: its heartbeat moves on.
        beat = pipeline.stats()["heartbeat"]
        assert wait_until(lambda: pipeline.stats()["heartbeat"] > beat + 0.5)
        assert pipeline.stats()["source_state"] == "retrying"
        world.plug()
        assert wait_until(lambda: len(results) >= before + 3)
        assert pipeline.stats()["source_state"] == "running"
        assert not pipeline.wait(0)
        pipeline.stop()
    assert world.opened >= 2 and world.open_cameras == []
    messages = [r.getMessage() for r in caplog.records if r.name == "edge_app.live.pipeline"]
    assert sum("retrying" in m for m in messages) == 1  # once per state change
    assert sum("is back" in m for m in messages) == 1


def test_reconnect_waits_for_a_busy_camera_at_start(classifier, parrot):
    source, world = fake_camera_source(parrot)
    world.busy = True
    pipeline = Pipeline(source, classifier, reconnect=True)  # no factory: reopens source
    results = collect(pipeline)
    pipeline.start()  # does not raise: the service keeps running
    assert wait_until(lambda: pipeline.stats()["source_state"] == "retrying")
    world.busy = False
    assert wait_until(lambda: len(results) >= 2)
    pipeline.stop()
    assert world.open_cameras == []

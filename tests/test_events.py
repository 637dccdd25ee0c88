"""Events from real video: episodes where the segments say, best snapshots, clips with
pre- and post-roll decoded back with OpenCV, the SQLite index, retention, and the motion
gate on a video with long still stretches.

Frames are read from the videos and given their video time as capture time (start +
n / fps), classified by the real model and handed to the recorder exactly as the
service's pipeline listener does; the gate decides which frames are classified as it
does in the pipeline. So the times asserted are the videos' own.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.live.motion import MotionGate
from edge_app.results import Frame, LiveResult
from edge_app.service.clips import CODECS, probe_codec
from edge_app.service.event_store import EventStore
from edge_app.service.events import EpisodeDetector, Watch
from edge_app.service.recorder import EventRecorder

T0 = 1_780_000_000.0  # a fixed Unix time for the videos' first frame
EVENT_KEYS = {
    "id",
    "name",
    "label",
    "index",
    "start",
    "end",
    "duration_s",
    "top_score",
    "score",
    "results",
    "state",
    "snapshot",
    "clip",
    "clip_type",
    "clip_stream",
}


@pytest.fixture(scope="module")
def classifier(int8_model):
    from edge_app.inference.classifier import Classifier

    return Classifier(int8_model)


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames, fps


def result_for(classifier, image, number: int, t: float, trigger: str) -> LiveResult:
    c = classifier.classify(image)
    return LiveResult(
        frame=number,
        time=t,
        top=c.top,
        inference_ms=c.inference_ms,
        latency_ms=0.0,
        fps=0.0,
        camera_fps=0.0,
        raw_top=c.top,
        trigger=trigger,
    )


def play(recorder, classifier, frames, fps, *, step=1, gate=None) -> dict:
    """Feed the video to the recorder like the pipeline does; counts of each trigger."""
    counts = {"always": 0, "motion": 0, "refresh": 0, "skipped": 0}
    for n in range(0, len(frames), step):
        t = T0 + n / fps
        frame = Frame(number=n, timestamp=t, image=frames[n], monotonic=time.monotonic())
        trigger = "always"
        if gate is not None:
            trigger = gate.should_infer(frame, t - T0)
            if trigger is None:
                counts["skipped"] += 1
                continue
        counts[trigger] += 1
        recorder.submit(result_for(classifier, frames[n], n, t, trigger), frame)
    assert recorder.wait_idle(60)
    return counts


def decode_clip(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    count, shape = 0, None
    while True:
        ok, image = cap.read()
        if not ok:
            break
        count += 1
        shape = image.shape[:2]
    cap.release()
    return count, shape


def make_recorder(tmp_path, watches, **kwargs) -> EventRecorder:
    store = EventStore(tmp_path / "events")
    options = dict(pre_roll_s=1.0, post_roll_s=1.0, clip_fps=10.0, wait_when_full=True)
    options.update(kwargs)
    return EventRecorder(watches, store, probe_codec("auto"), **options)


def collect_events(recorder) -> list[tuple[str, dict]]:
    seen = []
    recorder.add_listener(lambda kind, event: seen.append((kind, dict(event))))
    return seen


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def check_event_media(store: EventStore, event: dict, recorder: EventRecorder) -> None:
    snapshot = store.media_path(event["id"], "snapshot.jpg")
    assert snapshot is not None
    image = cv2.imread(str(snapshot))
    assert image is not None and image.shape == (480, 640, 3)
    clip = store.media_path(event["id"], event["clip"].rsplit("/", 1)[1])
    assert clip is not None and event["clip_type"] == recorder.codec.mime
    count, shape = decode_clip(clip)
    covered = event["end"] - event["start"] + recorder.pre_roll_s + recorder.post_roll_s
    assert count >= int(covered * recorder.clip_fps) - 1, (count, covered)
    assert count <= (covered + 2.0) * recorder.clip_fps + 2, (count, covered)
    assert shape == (480, 640)


# -- the demo video --------------------------------------------------------------------
def test_demo_video_events_start_and_end_where_the_segments_say(
    classifier, demo_video, demo_segments, tmp_path
):
    frames, fps = read_video(demo_video)
    watches = [
        Watch("parrot", "macaw", min_score=0.4, consensus=3, end_after_s=1.0),
        Watch("hotdog", "hotdog", min_score=0.4, consensus=3, end_after_s=1.0),
        Watch("dragonfly", "dragonfly", min_score=0.4, consensus=3, end_after_s=1.0),
    ]
    recorder = make_recorder(tmp_path, watches)
    seen = collect_events(recorder)
    play(recorder, classifier, frames, fps, step=3)  # 10 results a second, like a Pi 4
    assert wait_for(lambda: recorder.ended == 3), recorder.stats()

    segments = {photo: (first, last) for first, last, photo in demo_segments}
    expected = {
        "parrot": segments["parrot.jpg"],
        "hotdog": segments["hot_dog.jpg"],
        "dragonfly": segments["dragonfly.bmp"],
    }
    ended = {event["name"]: event for kind, event in seen if kind == "end"}
    assert set(ended) == set(expected)
    store = recorder.store
    for name, (first, last) in expected.items():
        event = ended[name]
        assert set(event) == EVENT_KEYS
        # Within about one result (0.1 s) plus the consensus of three (0.2 s).
        assert abs(event["start"] - (T0 + first / fps)) <= 0.35, (name, event)
        assert abs(event["end"] - (T0 + last / fps)) <= 0.35, (name, event)
        assert event["state"] == "ended" and event["top_score"] >= 0.4
        check_event_media(store, event, recorder)
        kinds = [k for k, e in seen if e["id"] == event["id"]]
        assert kinds[0] == "new" and kinds[-1] == "end"
    assert ended["parrot"]["label"].startswith("macaw")
    # The index holds the same, newest first.
    page = store.history(limit=10)
    assert [e["name"] for e in page["events"]] == ["dragonfly", "hotdog", "parrot"]
    assert page["next"] is None
    recorder.close()


# -- a video with long still stretches, the motion gate in front ---------------------
@pytest.fixture(scope="module")
def still_video(tmp_path_factory, test_images) -> tuple[Path, list[tuple[float, float, str]]]:
    """12 s of a still scene (grace_hopper), 4 s of the parrot, 12 s still again, 10 FPS,
    with sensor-like noise on every frame; (start s, end s, photo) per stretch."""
    folder = tmp_path_factory.mktemp("still")
    path = folder / "still.avi"
    fps = 10.0
    plan = [("grace_hopper.bmp", 12.0), ("parrot.jpg", 4.0), ("grace_hopper.bmp", 12.0)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    rng = np.random.default_rng(15)
    noises = [rng.normal(0, 3, (480, 640, 3)).astype(np.int16) for _ in range(7)]
    stretches, t = [], 0.0
    for photo, seconds in plan:
        picture = cv2.resize(cv2.imread(str(test_images / photo)), (640, 480)).astype(np.int16)
        for i in range(int(seconds * fps)):
            writer.write(np.clip(picture + noises[i % 7], 0, 255).astype(np.uint8))
        stretches.append((t, t + seconds - 1 / fps, photo))
        t += seconds
    writer.release()
    return path, stretches


def test_still_video_gated_events_and_clips(classifier, still_video, tmp_path):
    path, stretches = still_video
    frames, fps = read_video(path)
    assert len(frames) == 280
    gate = MotionGate(threshold=12, min_area=0.005, max_interval=3.0)
    recorder = make_recorder(tmp_path, [Watch("parrot", "macaw", 0.4, 3, 1.0)])
    seen = collect_events(recorder)
    counts = play(recorder, classifier, frames, fps, gate=gate)
    assert wait_for(lambda: recorder.ended == 1), recorder.stats()

    # Most frames of the still stretches were skipped; each cut was seen as motion, and a
    # still scene was still classified every max_interval.
    assert counts["skipped"] >= 0.6 * len(frames), counts
    assert counts["refresh"] >= 4 and counts["motion"] >= 3, counts
    assert gate.stats()["gated_share"] == pytest.approx(counts["skipped"] / len(frames), abs=1e-3)

    (event,) = [e for kind, e in seen if kind == "end"]
    start, end, photo = stretches[1]
    assert photo == "parrot.jpg"
    assert abs(event["start"] - (T0 + start)) <= 0.35, event
    # Under the gate the parrot was on screen until the first changed frame.
    assert abs(event["end"] - (T0 + end)) <= 0.35, event
    check_event_media(recorder.store, event, recorder)
    # The pre-roll shows the still scene before the parrot, not the parrot.
    clip = recorder.store.media_path(event["id"], event["clip"].rsplit("/", 1)[1])
    cap = cv2.VideoCapture(str(clip))
    ok, first = cap.read()
    cap.release()
    hopper = cv2.resize(frames[0], (640, 480)).astype(np.float32)
    parrot = cv2.resize(frames[130], (640, 480)).astype(np.float32)
    assert ok
    assert np.abs(first - hopper).mean() < np.abs(first - parrot).mean()
    recorder.close()


def test_gate_skips_a_still_picture_and_sees_a_change():
    rng = np.random.default_rng(1)
    ramp = np.linspace(30, 220, 640, dtype=np.float32)
    scene = np.repeat(np.repeat(ramp[None, :, None], 480, 0), 3, 2).astype(np.uint8)
    gate = MotionGate(threshold=12, min_area=0.01, max_interval=5.0)

    def frame(image):
        return Frame(number=0, timestamp=0.0, image=image)

    def noisy(image):
        return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)

    assert gate.should_infer(frame(scene), 0.0) == "motion"  # the first frame
    reasons = [gate.should_infer(frame(noisy(scene)), 0.1 * i) for i in range(1, 40)]
    assert reasons.count(None) == 39 - reasons.count("refresh")
    assert reasons.count("refresh") == 0  # 3.9 s < max_interval
    assert gate.should_infer(frame(noisy(scene)), 5.5) == "refresh"
    moved = scene.copy()
    cv2.rectangle(moved, (200, 100), (300, 200), (20, 20, 20), -1)  # something entered
    assert gate.should_infer(frame(moved), 5.6) == "motion"


# -- the detector's rules ---------------------------------------------------------------
def _result(label: str, score: float, trigger="always"):
    from edge_app.results import Prediction

    top = [Prediction(index=89, label=label, score=score)]
    return LiveResult(0, 0.0, top, 0.0, 0.0, 0.0, 0.0, top, trigger)


def test_consensus_and_end_after_without_the_label():
    detector = EpisodeDetector([Watch("p", "macaw", 0.5, consensus=3, end_after_s=2.0)])
    assert detector.update(_result("macaw", 0.9), 0.0) == []
    assert detector.update(_result("cat", 0.9), 0.1) == []  # the streak breaks
    assert detector.update(_result("macaw", 0.6), 0.2) == []
    assert detector.update(_result("macaw", 0.3), 0.3) == []  # too low: breaks again
    detector.update(_result("macaw", 0.6), 0.4)
    detector.update(_result("macaw", 0.7), 0.5)
    ((kind, episode),) = detector.update(_result("macaw", 0.8), 0.6)
    assert kind == "new" and episode.start == 0.4 and episode.top_score == 0.8
    assert detector.update(_result("macaw", 0.95), 1.0) == [("best", episode)]
    assert detector.tick(10.0) == []  # no result without it yet: a still scene
    assert detector.update(_result("cat", 0.9), 10.1) == [("end", episode)]
    assert episode.end == 1.0  # the last result with it (no gate)


def test_retention_deletes_oldest_first(tmp_path):
    store = EventStore(tmp_path / "events")
    now = time.time()
    ids = []
    for i in range(6):
        start = now - 3600 * (10 - i)
        event_id = f"2026010{i}T000000000Z-e"
        event = {
            "id": event_id, "name": "e", "label": "macaw", "index": 89, "start": start,
            "end": start + 5, "top_score": 0.9, "score": 0.9, "results": 10,
            "state": "ended", "snapshot": f"media/{event_id}/snapshot.jpg", "clip": None,
        }  # fmt: skip
        store.publish_bytes(event_id, "snapshot.jpg", bytes(100_000))
        store.insert(event)
        ids.append(event_id)
    assert store.total_bytes() == 600_000
    # By age: older than 7.5 hours goes (the first three), oldest first.
    store.max_age_s = 7.5 * 3600
    assert store.enforce_retention(now) == ids[:3]
    # By disk cap: down to 150 kB, the oldest of the rest go first.
    store.max_age_s, store.max_bytes = 0, 150_000
    assert store.enforce_retention(now) == ids[3:5]
    assert [e["id"] for e in store.history()["events"]] == ids[5:]
    assert sorted(p.name for p in store.media.iterdir()) == ids[5:]
    store.close()


def test_media_paths_refuse_anything_outside(tmp_path):
    store = EventStore(tmp_path / "events")
    event_id = "20260101T000000000Z-e"
    store.publish_bytes(event_id, "snapshot.jpg", b"jpeg")
    (tmp_path / "events" / "secret.jpg").write_bytes(b"no")
    store.insert(
        {
            "id": event_id, "name": "e", "label": "x", "index": 1, "start": 1.0, "end": 2.0,
            "top_score": 0.9, "score": 0.9, "results": 3, "state": "ended",
            "snapshot": f"media/{event_id}/snapshot.jpg", "clip": None,
        }
    )  # fmt: skip
    assert store.media_path(event_id, "snapshot.jpg") == store.media / event_id / "snapshot.jpg"
    for bad_id, name in (
        ("..", "secret.jpg"),
        ("..", "index.sqlite3"),
        (event_id, "../../secret.jpg"),
        (event_id, "clip.webm"),  # a known name, but not there
        ("20260101T000000000Z-other", "snapshot.jpg"),  # not in the index
        (event_id + "/..", "snapshot.jpg"),
        ("%2e%2e", "snapshot.jpg"),
    ):
        assert store.media_path(bad_id, name) is None, (bad_id, name)
    # A link planted in the media folder does not lead out of it.
    link_id = "20260101T000000001Z-e"
    (tmp_path / "snapshot.jpg").write_bytes(b"outside")
    (store.media / link_id).symlink_to(tmp_path)
    store.insert({**store.get(event_id), "id": link_id, "snapshot": None})
    assert store.media_path(link_id, "snapshot.jpg") is None
    store.close()


def test_codec_probe_picks_a_working_codec(tmp_path):
    codec = probe_codec("auto")
    assert codec.name in CODECS
    assert probe_codec("mjpeg").name == "mjpeg"  # always there, and kept when asked for
    assert sqlite3.sqlite_version_info >= (3, 7)


def test_run_gate_motion_classifies_changes_and_refreshes(still_video, int8_model):
    import json
    import subprocess
    import sys

    path, _ = still_video
    done = subprocess.run(
        [
            sys.executable, "-m", "edge_app", "run", "--source", str(path), "--no-pace",
            "--model", str(int8_model), "--threads", "1", "--headless", "--json",
            "--gate", "motion", "--max-interval", "0.5",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    triggers = [r["trigger"] for r in records]
    assert set(triggers) <= {"motion", "refresh"} and triggers[0] == "motion"
    # The still stretches are mostly skipped: far fewer results than the 280 frames.
    assert triggers.count("motion") >= 3 and len(records) < 0.6 * 280, len(records)
    # The parrot was classified right at its cut (frame 120), not a refresh later.
    cut = next(r for r in records if r["frame"] >= 120)
    assert cut["frame"] == 120 and cut["trigger"] == "motion"
    assert cut["top"][0]["label"].startswith("macaw")

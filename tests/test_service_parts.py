"""The service's parts on their own: sd_notify, the shared JPEG feed, the event log,
snapshot triggers and the Prometheus text."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import cv2
import numpy as np
import pytest
from service_support import parse_prometheus

from edge_app.live.overlay import Overlay
from edge_app.results import Frame, LiveResult, Prediction
from edge_app.service.eventlog import EventLog
from edge_app.service.frames import JpegFeed, LatestBoard
from edge_app.service.metrics import MetricsText
from edge_app.service.notify import Notifier
from edge_app.service.triggers import Trigger, Triggers

LABELS = {
    "macaw": Prediction(89, "macaw", 0.93),
    "chickadee": Prediction(20, "chickadee", 0.81),
    "hotdog": Prediction(935, "hotdog, hot dog, red hot", 0.99),
    "daisy": Prediction(986, "daisy", 0.6),
}


def result(number: int, *names: str, scores: tuple[float, ...] = ()) -> LiveResult:
    top = [LABELS[n] for n in names]
    if scores:
        top = [Prediction(p.index, p.label, s) for p, s in zip(top, scores, strict=True)]
    return LiveResult(
        frame=number,
        time=1_700_000_000.0 + number / 30,
        top=top,
        inference_ms=12.5,
        latency_ms=20.0,
        fps=25.0,
        camera_fps=30.0,
    )


@pytest.fixture(scope="module")
def parrot_frame(test_images) -> Frame:
    image = cv2.imread(str(test_images / "parrot.jpg"))
    image = cv2.resize(image, (640, 480))
    return Frame(number=0, timestamp=1_700_000_000.0, image=image, monotonic=time.monotonic())


# -- sd_notify ------------------------------------------------------------------------------
def test_notify_sends_to_an_abstract_socket():
    name = f"edge-app-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000"})
        assert notifier.enabled and notifier.watchdog_interval == 2.0
        assert notifier.ready("running: 12.0 FPS")
        assert server.recv(1024) == b"READY=1\nSTATUS=running: 12.0 FPS"
        assert notifier.watchdog()
        assert server.recv(1024) == b"WATCHDOG=1"
        assert notifier.reloading()
        lines = server.recv(1024).decode().split("\n")
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        notifier.close()


def test_notify_sends_to_a_socket_path(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.watchdog_interval is None  # no WatchdogSec=
        assert notifier.status("multi\nline")
        assert server.recv(1024) == b"STATUS=multi line"


def test_notify_without_systemd_does_nothing():
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    # WATCHDOG_PID naming another process: the watchdog is not ours to ping
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None


def test_notify_to_a_vanished_socket_does_not_raise(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False


# -- the JPEG feed --------------------------------------------------------------------------
def test_jpeg_feed_encodes_once_for_all_viewers_and_only_while_watched(parrot_frame):
    overlay = Overlay("mobilenet", 5)
    feed = JpegFeed(overlay.draw, max_fps=30, quality=80)
    try:
        feed.submit(result(0, "macaw", "chickadee"), parrot_frame)
        time.sleep(0.3)
        assert feed.encoded == 0  # nobody watches: nothing is encoded
        got = []

        def viewer():
            with feed.watching():
                seq, jpeg = feed.wait_next(feed.start_seq(), 10)
                got.append((seq, jpeg))

        threads = [threading.Thread(target=viewer) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert len(got) == 5
        assert len({jpeg for _, jpeg in got}) == 1  # the very same bytes for everyone
        assert feed.encoded == 1
        image = cv2.imdecode(np.frombuffer(got[0][1], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (480, 640, 3)
        # The overlay is burned in: the top-left box is darkened, the rest is the photo.
        original = parrot_frame.image
        assert image[400:, 560:].astype(int).mean() == pytest.approx(
            original[400:, 560:].astype(int).mean(), abs=6
        )
        x0, y0, x1, y1 = overlay.layout(480, 640).panel(1)  # the panel's first line
        box = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))
        assert image[box].mean() < original[box].mean() * 0.6
        # A snapshot of an unchanged frame reuses the cached JPEG.
        assert feed.snapshot() == got[0][1]
        assert feed.encoded == 1
    finally:
        feed.close()


def test_jpeg_feed_snapshot_without_any_frame_is_none():
    feed = JpegFeed(lambda image, r: image)
    try:
        assert feed.snapshot(timeout=0.5) is None
    finally:
        feed.close()


def test_latest_board_wakes_waiters_and_closes():
    board = LatestBoard()
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(board.wait_newer(0, 10)))
    waiter.start()
    board.publish("a")
    waiter.join(10)
    assert seen == [(1, "a")]
    board.close()
    assert board.wait_newer(1, 10) == (1, "a")


# -- the event log --------------------------------------------------------------------------
def read_lines(path):
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def test_event_log_changes_mode_writes_label_changes_only(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", mode="changes", extra={"device_id": "cam1"})
    for number, name in enumerate(["macaw", "macaw", "hotdog", "hotdog", "macaw"]):
        log.submit(result(number, name))
    log.close()
    records = read_lines(tmp_path / "events.jsonl")
    assert [r["frame"] for r in records] == [0, 2, 4]
    assert [r["label"] for r in records] == ["macaw", "hotdog, hot dog, red hot", "macaw"]
    first = records[0]
    assert first["device_id"] == "cam1"
    expected = result(0, "macaw").to_json()
    assert {k: first[k] for k in expected} == expected  # the `run --json` record


def test_event_log_all_mode_rotates_by_size_keeping_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, mode="all", max_bytes=2048, backups=2)
    for number in range(200):
        log.submit(result(number, "daisy", "macaw"))
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    frames = []
    for f in (path.with_name("events.jsonl.2"), path.with_name("events.jsonl.1"), path):
        assert f.stat().st_size <= 2048
        frames += [r["frame"] for r in read_lines(f)]
    # The newest records, in order, none cut: the oldest went out with rotation.
    assert frames == list(range(200 - len(frames), 200))
    assert log.lines == 200


def test_event_log_cuts_a_partial_last_line_left_by_a_power_cut(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"frame":1}\n{"frame":2,"lab')
    log = EventLog(path, mode="all")
    log.submit(result(3, "macaw"))
    log.close()
    assert [r["frame"] for r in read_lines(path)] == [1, 3]


def test_event_log_in_an_unwritable_place_is_a_config_error(tmp_path):
    from edge_app.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="eventlog.path"):
        EventLog(blocker / "events.jsonl")


# -- triggers -------------------------------------------------------------------------------
def test_trigger_matches_a_pattern_at_a_score_with_a_cooldown(tmp_path):
    trigger = Trigger("birds", "chickadee|macaw", 0.5, 10.0, tmp_path, 10**6)
    assert trigger.match(result(0, "hotdog", "daisy"), now=100.0) is None
    low = result(1, "hotdog", "macaw", scores=(0.6, 0.3))
    assert trigger.match(low, now=100.0) is None  # matches, but scores too low
    fired = trigger.match(result(2, "daisy", "chickadee", scores=(0.4, 0.55)), now=100.0)
    assert fired.label == "chickadee"  # any of the top-k may fire it
    assert trigger.match(result(3, "macaw"), now=105.0) is None  # cooling down
    assert trigger.match(result(4, "macaw"), now=110.5).label == "macaw"


def test_triggers_save_annotated_snapshots_and_cap_disk_use(tmp_path, parrot_frame):
    overlay = Overlay("mobilenet", 5)
    folder = tmp_path / "snaps"
    # Someone else's file in the folder is never touched by the cap.
    folder.mkdir()
    (folder / "keep-me.jpg").write_bytes(b"x" * 50_000)
    trigger = Trigger("parrots", "MACAW", 0.5, 0.0, folder, max_bytes=200_000)
    triggers = Triggers([trigger], overlay.draw)
    for number in range(12):
        frame = Frame(number, 1_700_000_000.0 + number, parrot_frame.image, None, 0.0)
        triggers.submit(result(number, "macaw"), frame)
        # The save queue is short on purpose (a busy Pi drops snapshots rather than
        # queueing them), so let each one land before the next, however slow the machine.
        deadline = time.monotonic() + 30
        while trigger.saved < number + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    triggers.close(timeout=10)
    saved = trigger.snapshots()
    assert trigger.saved == 12
    assert sum(p.stat().st_size for p in saved) <= 200_000
    assert trigger.deleted == trigger.saved - len(saved) > 0
    assert (folder / "keep-me.jpg").exists()
    assert not list(folder.glob(".*.tmp"))
    newest = saved[-1]
    assert newest.name.endswith("_parrots_macaw_093.jpg")
    image = cv2.imread(str(newest))
    assert image.shape == (480, 640, 3)
    x0, y0, x1, y1 = overlay.layout(480, 640).panel(1)  # the panel's first line
    box = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))
    assert image[box].mean() < parrot_frame.image[box].mean() * 0.6


# -- Prometheus text ------------------------------------------------------------------------
def test_metrics_text_is_valid_exposition_format():
    m = MetricsText()
    m.add("frames_total", "counter", "Frames.", 12)
    m.add("fps", "gauge", "Rate.", 29.97)
    m.add("top_score", "gauge", 'Score of "the" label\\.', 0.5, {"label": 'hot "dog"\\\nx'})
    m.add("latency_milliseconds", "gauge", "Latency.", 10, {"quantile": "0.5"})
    m.add("latency_milliseconds", "gauge", "Latency.", 20, {"quantile": "0.95"})
    families = parse_prometheus(m.render())
    assert families["edge_app_frames_total"]["type"] == "counter"
    assert families["edge_app_frames_total"]["samples"] == [("edge_app_frames_total", {}, 12.0)]
    assert families["edge_app_fps"]["samples"][0][2] == 29.97
    label = families["edge_app_top_score"]["samples"][0][1]["label"]
    assert label == 'hot "dog"\\\nx'
    assert len(families["edge_app_latency_milliseconds"]["samples"]) == 2


def test_metrics_text_refuses_bad_names():
    m = MetricsText()
    with pytest.raises(ValueError):
        m.add("frames", "counter", "a counter without _total", 1)
    with pytest.raises(ValueError):
        m.add("bad-name", "gauge", "", 1)
    with pytest.raises(ValueError):
        m.add("x", "gauge", "", 1, {"bad-label": "v"})

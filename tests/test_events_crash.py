"""SIGKILL in the middle of recording, then a restart: the index is readable and no
half-written media sits under a final name.

A child process runs the recorder on the demo video (looping, real time, the real model)
while events come and go; it is killed with SIGKILL while a clip is being written and
after at least one clip was finished. Then the store is opened again, as the service's
next start does.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2

from edge_app.service.clips import TEMP_MARK
from edge_app.service.event_store import EventStore

CHILD = textwrap.dedent(
    """
    import sys, time
    import cv2
    from edge_app.inference.classifier import Classifier
    from edge_app.results import Frame, LiveResult
    from edge_app.service.clips import probe_codec
    from edge_app.service.event_store import EventStore
    from edge_app.service.events import Watch
    from edge_app.service.recorder import EventRecorder

    video, model, folder = sys.argv[1:4]
    classifier = Classifier(model, threads=1)
    watches = [Watch(n, p, 0.3, 2, 0.5) for n, p in
               (("parrot", "macaw"), ("hotdog", "hotdog"), ("dragonfly", "dragonfly"))]
    recorder = EventRecorder(watches, EventStore(folder), probe_codec("auto"),
                             pre_roll_s=1.0, post_roll_s=1.5, clip_fps=15.0)
    n = 0
    while True:
        cap = cv2.VideoCapture(video)
        while True:
            ok, image = cap.read()
            if not ok:
                break
            n += 1
            if n % 2:
                continue
            c = classifier.classify(image)
            now = time.time()
            frame = Frame(number=n, timestamp=now, image=image, monotonic=time.monotonic())
            recorder.submit(LiveResult(n, now, c.top, c.inference_ms, 0.0, 0.0, 0.0, c.top), frame)
            time.sleep(1 / 30)
        cap.release()
    """
)


def writing_now(media: Path) -> list[Path]:
    return [p for p in media.rglob(f"*{TEMP_MARK}*") if p.stat().st_size > 0]


def finished_clips(media: Path) -> list[Path]:
    return [p for p in media.glob("*/clip.*") if TEMP_MARK not in p.name]


def test_sigkill_while_writing_leaves_a_readable_index_and_whole_media(
    demo_video, int8_model, tmp_path
):
    folder = tmp_path / "events"
    media = folder / "media"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(demo_video), str(int8_model), str(folder)],
        stderr=subprocess.PIPE,
    )
    killed_while_writing = False
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if media.is_dir() and finished_clips(media) and writing_now(media):
                os.kill(child.pid, signal.SIGKILL)
                killed_while_writing = True
                break
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
        _, stderr = child.communicate(timeout=30)
    assert killed_while_writing, stderr.decode()[-3000:]
    assert child.returncode == -signal.SIGKILL
    assert list(media.rglob(f"*{TEMP_MARK}*"))  # the kill left a clip half-written

    # The next start.
    store = EventStore(folder)
    assert not list(media.rglob(f"*{TEMP_MARK}*")), "temporary files were not swept"
    with sqlite3.connect(folder / "index.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    events = store.history(limit=500)["events"]
    assert events and all(e["state"] == "ended" for e in events)
    with_clip = [e for e in events if e["clip"]]
    assert with_clip, events
    for event in events:
        for key in ("snapshot", "clip"):
            if event[key]:
                name = event[key].rsplit("/", 1)[1]
                assert store.media_path(event["id"], name) is not None, event
    # Every file under a final name is whole: each clip decodes to the end, each
    # snapshot is a JPEG.
    for path in media.rglob("*"):
        if path.is_dir():
            continue
        if path.name == "snapshot.jpg":
            assert cv2.imread(str(path)) is not None, path
        else:
            cap = cv2.VideoCapture(str(path))
            frames = 0
            while cap.read()[0]:
                frames += 1
            cap.release()
            assert frames >= 15, (path, frames)  # at least the 1 s pre-roll
    # The folders match the index exactly.
    assert sorted(p.name for p in media.iterdir()) == sorted(e["id"] for e in events)
    store.close()

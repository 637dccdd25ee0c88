"""The event recorder: an output of the service like MQTT or the event log.

``submit(result, frame)`` runs on the inference thread: it feeds the episode detector
(``events.py``: a few regular-expression searches), so events start and end on every
result however busy recording is, and queues a reference to the frame only when the
recorder needs one (a state change, or a frame for the pre-roll ring and the clips at
``clip_fps``); a full queue drops such a frame and counts it. The recorder's own thread,
at a lower priority, does the rest: the pre-roll ring, each event's best snapshot and
its clip (``clips.py``) in the store (``event_store.py``), retention, and listeners.

Listeners: ``add_listener(callback)``; ``callback(kind, event)`` runs on the recorder's
thread with kind "new" (an episode started; its first snapshot is saved), "update" (a
better snapshot was saved, at most once a second) or "end" (the episode ended and its
clip, with post-roll, is saved). ``event`` is the dict described in ``events.py``. Keep
callbacks quick; an exception is logged once and the others still run.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_app.service.clips import ClipWriter, Codec, FrameRing, JpegCache, clip_size, fit
from edge_app.service.event_store import EventStore
from edge_app.service.events import Episode, EpisodeDetector, Watch

log = logging.getLogger(__name__)

Listener = Callable[[str, dict], None]
SNAPSHOT_EVERY_S = 1.0
RETENTION_EVERY_S = 600.0
_TURN_S = 0.25


class _Recording:
    """One episode being recorded: its clip writer and its best frame so far."""

    def __init__(self, episode: Episode, writer: ClipWriter | None):
        self.episode = episode
        self.writer = writer
        self.best: tuple | None = None  # (image, result) of the best match
        self.snapshot_due = True
        self.snapshot_at = -1e9
        self.until: float | None = None  # clip end (episode end + post-roll) once ended


class EventRecorder:
    _END = object()

    def __init__(
        self,
        watches: list[Watch],
        store: EventStore,
        codec: Codec,
        *,
        pre_roll_s: float = 3.0,
        post_roll_s: float = 3.0,
        clip_fps: float = 10.0,
        clip_width: int = 640,
        buffer_bytes: int = 32_000_000,
        jpeg_quality: int = 85,
        max_clip_s: float = 300.0,
        draw: Callable[[np.ndarray, object], np.ndarray] | None = None,
        log_path: Path | None = None,
        wait_when_full: bool = False,
        queue_size: int = 16,
        stale_s: float = 120.0,
    ):
        self.detector = EpisodeDetector(watches, stale_s=stale_s)
        self.store = store
        self.codec = codec
        self.pre_roll_s = pre_roll_s
        self.post_roll_s = post_roll_s
        self.clip_fps = clip_fps
        self.clip_width = clip_width
        self.buffer_bytes = buffer_bytes
        self.quality = jpeg_quality
        self.max_clip_s = max_clip_s
        self.draw = draw  # draws the predictions on a snapshot; None: a clean picture
        self.log_path = log_path
        self.wait_when_full = wait_when_full  # tests and benchmarks: never drop a frame
        self.dropped = 0
        self.started = 0
        self.ended = 0
        self.failed = 0
        self.last_event: dict | None = None
        self._listeners: list[Listener] = []
        self._failed_listeners: set[int] = set()
        self._recordings: dict[str, _Recording] = {}
        self._ring: FrameRing | None = None
        self._jpegs = JpegCache(80)  # clip frames, encoded once for every clip
        self._size: tuple[int, int] | None = None
        self._last_t: float | None = None  # capture time of the newest frame
        self._last_mono = time.monotonic()  # when it arrived
        self._next_retention = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._detector_lock = threading.Lock()  # submit() and the recorder's ticks
        self._frame_due = float("-inf")  # capture time from which a frame is wanted again
        self._thread = threading.Thread(target=self._run, name="edge-app-events", daemon=True)
        self._thread.start()

    # -- the pipeline side -----------------------------------------------------------
    def submit(self, result, frame) -> None:
        """Pipeline listener: detect (cheap) and queue a reference when a frame is wanted."""
        t = frame.timestamp
        with self._detector_lock:
            changes = self.detector.update(result, t)
        if not changes and t < self._frame_due:
            return  # between clip frames: nothing to keep
        self._frame_due = t + 0.9 / self.clip_fps
        item = (result, frame, changes)
        if self.wait_when_full:
            self._queue.put(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if not changes:
                self.dropped += 1
                return
            try:  # a start or an end must not be lost: wait a little for room
                self._queue.put(item, timeout=1.0)
            except queue.Full:
                self.dropped += 1
                log.warning("events: recording is behind; an event change was lost")

    def add_listener(self, callback: Listener) -> None:
        self._listeners.append(callback)

    # -- reading ---------------------------------------------------------------------
    def active(self) -> list[dict]:
        return [r.episode.to_dict() for r in list(self._recordings.values())]

    def stats(self) -> dict:
        return {
            "active": [e["label"] for e in self.active() if e["state"] == "active"],
            "started": self.started,
            "ended": self.ended,
            "stored": self.store.count(),
            "bytes": self.store.total_bytes(),
            "dropped": self.dropped,
            "failed": self.failed,
            "codec": self.codec.name,
            "last": self.last_event,
        }

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted frame has been handled (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # -- the recorder thread ---------------------------------------------------------
    def _run(self) -> None:
        from edge_app.service.frames import lower_thread_priority

        lower_thread_priority()
        self._retention()
        while True:
            try:
                item = self._queue.get(timeout=_TURN_S)
            except queue.Empty:
                item = None
            try:
                if item is self._END:
                    self._finish_all()
                    return
                if item is None:
                    self._tick()
                else:
                    self._handle(*item)
            except Exception:
                self.failed += 1
                log.exception("events: recording failed")
            finally:
                if item is not None:
                    self._queue.task_done()

    def _now(self) -> float | None:
        """The frames' clock, advanced by the time since the newest frame came."""
        if self._last_t is None:
            return None
        return self._last_t + (time.monotonic() - self._last_mono)

    def _tick(self) -> None:
        now = self._now()
        if now is not None:
            with self._detector_lock:
                changes = self.detector.tick(now)
            self._apply(changes, None, None, now)
            self._finish_due(now)
        if time.monotonic() >= self._next_retention:
            self._retention()

    def _handle(self, result, frame, changes) -> None:
        t = frame.timestamp
        self._last_t, self._last_mono = t, time.monotonic()
        if self._size is None:
            height, width = frame.image.shape[:2]
            self._size = clip_size(width, height, self.clip_width)
            self._ring = FrameRing(
                self.pre_roll_s, self.clip_fps, self._size, self.buffer_bytes, 80, self._jpegs
            )
            log.debug(
                "events: pre-roll ring of %d frames, %s",
                self._ring.capacity,
                "JPEG" if self._ring.compressed else "raw",
            )
        image = fit(frame.image, self._size)
        self._ring.add(t, image)
        self._apply(changes, result, frame, t)
        for recording in self._recordings.values():
            if recording.writer is not None:
                recording.writer.add(t, image)
        self._finish_due(t)

    def _apply(self, changes, result, frame, t: float) -> None:
        for kind, episode in changes:
            if kind == "new":
                self._begin(episode, result, frame)
            elif kind == "best":
                recording = self._recordings.get(episode.id)
                if recording is not None and frame is not None:
                    recording.best = (frame.image, result)
                    recording.snapshot_due = True
            elif kind == "end":
                recording = self._recordings.get(episode.id)
                if recording is not None:
                    episode.state = "ended"
                    recording.until = (episode.end or t) + self.post_roll_s
        for recording in list(self._recordings.values()):
            due = recording.snapshot_due and t - recording.snapshot_at >= SNAPSHOT_EVERY_S
            if due and recording.until is None and recording.best is not None:
                self._save_snapshot(recording, t)
                self._tell("update", recording.episode)

    def _begin(self, episode: Episode, result, frame) -> None:
        self.started += 1
        writer = None
        try:
            folder = self.store.event_folder(episode.id)
            writer = ClipWriter(
                folder,
                self.codec,
                self.clip_fps,
                self._size,
                episode.start - self.pre_roll_s,
                self.max_clip_s,
                self._jpegs,
            )
            # The ring holds the pre-roll; the current frame is in it too (or is added
            # right after, by the caller), and the writer ignores repeats.
            for t, image in self._ring.since(writer.start):
                writer.add(t, image)
        except OSError as exc:
            self.failed += 1
            log.warning("events: %s: no clip: %s", episode.id, exc)
        recording = _Recording(episode, writer)
        if episode.end is not None:  # it ended before this thread got to its start
            recording.until = episode.end + self.post_roll_s
        recording.best = (frame.image, result) if frame is not None else None
        self._recordings[episode.id] = recording
        self._save_snapshot(recording, episode.start)
        self.store.insert(episode.to_dict())
        log.info("event %s: %s %.2f started", episode.id, episode.label, episode.top_score)
        self._tell("new", episode)

    def _save_snapshot(self, recording: _Recording, t: float) -> None:
        if recording.best is None:
            return
        image, result = recording.best
        if self.draw is not None and result is not None:
            image = self.draw(image.copy(), result)
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        episode = recording.episode
        try:
            self.store.publish_bytes(episode.id, "snapshot.jpg", buffer.tobytes())
        except OSError as exc:
            self.failed += 1
            log.warning("events: %s: cannot save the snapshot: %s", episode.id, exc)
            return
        episode.snapshot = f"media/{episode.id}/snapshot.jpg"
        recording.snapshot_due = False
        recording.snapshot_at = t
        if episode.state == "active":
            self.store.update(episode.to_dict())

    def _finish_due(self, now: float) -> None:
        for recording in list(self._recordings.values()):
            if recording.until is not None and now >= recording.until:
                self._finish(recording, recording.until)

    def _finish(self, recording: _Recording, until: float) -> None:
        episode = recording.episode
        self._recordings.pop(episode.id, None)
        if recording.snapshot_due:
            self._save_snapshot(recording, until)
        if recording.writer is not None:
            try:
                temporary = recording.writer.finish(until)
                name = f"clip.{self.codec.ext}"
                self.store.publish_file(episode.id, temporary, name)
                episode.clip = f"media/{episode.id}/{name}"
                episode.clip_type = self.codec.mime
            except OSError as exc:
                self.failed += 1
                recording.writer.abort()
                log.warning("events: %s: cannot save the clip: %s", episode.id, exc)
        episode.state = "ended"
        event = episode.to_dict()
        self.store.update(event)
        self.ended += 1
        self.last_event = event
        log.info(
            "event %s: %s ended after %.1f s (top %.2f)",
            episode.id,
            episode.label,
            event["duration_s"],
            episode.top_score,
        )
        if self.log_path is not None:
            try:
                with open(self.log_path, "a", encoding="utf-8") as out:
                    out.write(json.dumps(event, separators=(",", ":")) + "\n")
            except OSError as exc:
                log.warning("events: cannot append to %s: %s", self.log_path, exc)
        self._tell("end", episode)
        self._retention()

    def _finish_all(self) -> None:
        now = self._now() or time.time()
        with self._detector_lock:
            changes = self.detector.close()
        self._apply(changes, None, None, now)
        for recording in list(self._recordings.values()):
            # Stopping: the post-roll is what has been recorded so far.
            end = recording.episode.end or now
            self._finish(recording, min(recording.until or now, max(end, now)))

    def _retention(self) -> None:
        self._next_retention = time.monotonic() + RETENTION_EVERY_S
        try:
            self.store.enforce_retention()
        except OSError as exc:
            log.warning("events: retention failed: %s", exc)

    def _tell(self, kind: str, episode: Episode) -> None:
        if not self._listeners:
            return
        event = episode.to_dict()
        for callback in self._listeners:
            try:
                callback(kind, event)
            except Exception:
                if id(callback) not in self._failed_listeners:
                    self._failed_listeners.add(id(callback))
                    log.exception(
                        "event listener %r failed (further failures not logged)", callback
                    )

    def close(self, timeout: float = 1.0) -> None:
        """Finish active events (their clips end here) and stop the thread."""
        try:
            self._queue.put(self._END, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.store.close()


def build_recorder(config, draw=None) -> EventRecorder:
    """The recorder for a ServiceConfig's ``[events]`` and ``[[event]]`` sections."""
    from edge_app.service.clips import probe_codec

    ev = config.events
    store = EventStore(
        config.in_state_dir(ev.dir),
        max_age_s=ev.max_age_days * 86400.0,
        max_bytes=int(ev.max_mb * 1_000_000),
    )
    watches = [
        Watch(
            name=config.event_name(i),
            pattern=e.pattern,
            min_score=e.min_score,
            consensus=e.consensus,
            end_after_s=e.end_after_s,
        )
        for i, e in enumerate(config.event)
    ]
    codec = probe_codec(ev.codec)
    log.info("events: %d watch(es), clips in %s (%s)", len(watches), store.folder, codec.name)
    return EventRecorder(
        watches,
        store,
        codec,
        pre_roll_s=ev.pre_roll_s,
        post_roll_s=ev.post_roll_s,
        clip_fps=ev.clip_fps,
        clip_width=ev.clip_width,
        buffer_bytes=int(ev.buffer_mb * 1_000_000),
        jpeg_quality=ev.jpeg_quality,
        max_clip_s=ev.max_s,
        draw=draw if ev.snapshot_overlay else None,
        log_path=config.in_state_dir(ev.log) if ev.log else None,
        stale_s=max(120.0, 3 * config.pipeline.gate_max_interval),
    )

"""Snapshot triggers: save an annotated JPEG when a label matches and scores enough.

A trigger fires when any of a result's top-k predictions matches its pattern (a
regular expression searched case-insensitively in the label line) with at least
``min_score``; it then waits ``cooldown_s`` before it can fire again. The snapshots of
one trigger live in its folder, named ``<UTC time>_<trigger>_<label>_<score>.jpg``;
when they pass ``max_mb`` the oldest are deleted. Files are written under a temporary
name and renamed, so a half-written snapshot is never seen.

Matching runs on the inference thread (a few regex searches); drawing, encoding and
writing run on the triggers' own thread.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_app.errors import ConfigError, OutputError, os_reason, translate
from edge_app.live.sinks import end_worker

log = logging.getLogger(__name__)

SUFFIX = ".jpg"


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text.split(",")[0]).strip("-").lower()[:limit] or "x"


@dataclass
class Trigger:
    name: str
    pattern: str
    min_score: float
    cooldown_s: float
    folder: Path
    max_bytes: int
    saved: int = 0
    deleted: int = 0
    _regex: re.Pattern = field(init=False, repr=False)
    _next_allowed: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(self.pattern, re.IGNORECASE)

    def match(self, result, now: float):
        """The first prediction that fires this trigger now, else None."""
        if now < self._next_allowed:
            return None
        for prediction in result.top:
            if prediction.score >= self.min_score and self._regex.search(prediction.label):
                self._next_allowed = now + self.cooldown_s
                return prediction
        return None

    def file_name(self, when: float, prediction) -> str:
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        score = int(round(prediction.score * 100))
        return f"{stamp}_{self.name}_{_slug(prediction.label)}_{score:03d}{SUFFIX}"

    def snapshots(self) -> list[Path]:
        """This trigger's snapshots, oldest first (names start with the UTC time)."""
        if not self.folder.is_dir():
            return []
        marker = f"_{self.name}_"
        return sorted(p for p in self.folder.iterdir() if p.suffix == SUFFIX and marker in p.name)

    def enforce_cap(self) -> None:
        """Delete the oldest snapshots until this trigger's use is within ``max_bytes``."""
        files = self.snapshots()
        sizes = []
        for path in files:
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        total = sum(sizes)
        for path, size in zip(files, sizes, strict=True):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
                self.deleted += 1
            except OSError as exc:
                log.warning("trigger %s: cannot delete %s: %s", self.name, path, exc)
                break
            total -= size


def _failed(trigger: Trigger, what: str, exc: BaseException) -> OutputError:
    return OutputError(f"trigger {trigger.name}: cannot {what}: {os_reason(exc)}")


class Triggers:
    """All configured triggers and the thread that saves their snapshots."""

    _END = object()

    def __init__(
        self,
        triggers: list[Trigger],
        draw: Callable[[np.ndarray, object], np.ndarray],
        *,
        quality: int = 90,
    ):
        self.triggers = triggers
        self.draw = draw  # draw(image_copy, result) -> annotated image; own thread only
        self.quality = quality
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        for trigger in triggers:
            try:
                trigger.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                # At start (or reload) the folder is the config's: the user fixes the config.
                raise ConfigError(
                    f"trigger {trigger.name}: cannot create {trigger.folder}: {os_reason(exc)}"
                ) from exc
            trigger.enforce_cap()
        self._thread = threading.Thread(target=self._run, name="edge-app-triggers", daemon=True)
        self._thread.start()

    def submit(self, result, frame) -> None:
        """Pipeline listener: match (cheap) and queue the frame for each trigger that fired."""
        now = time.monotonic()
        for trigger in self.triggers:
            prediction = trigger.match(result, now)
            if prediction is not None:
                try:
                    self._queue.put_nowait((trigger, prediction, result, frame))
                except queue.Full:
                    log.warning("trigger %s: snapshot skipped (saving is behind)", trigger.name)

    def _run(self) -> None:
        from edge_app.service.frames import lower_thread_priority

        lower_thread_priority()
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            trigger, prediction, result, frame = item
            try:
                path = self._save(trigger, prediction, result, frame)
                trigger.saved += 1
                log.info(
                    "trigger %s: %s %.2f -> %s",
                    trigger.name,
                    prediction.label,
                    prediction.score,
                    path,
                )
                with translate({OSError: lambda e, t=trigger: _failed(t, "cap its folder", e)}):
                    trigger.enforce_cap()
            except OutputError as exc:
                self.failed += 1
                log.warning("%s", exc.message)

    def _save(self, trigger: Trigger, prediction, result, frame) -> Path:
        """Write the annotated snapshot (whole: a temporary file renamed into place)."""
        import cv2

        with translate({OSError: lambda e: _failed(trigger, "save snapshot", e)}):
            image = self.draw(frame.image.copy(), result)
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise OSError("JPEG encoding failed")
            path = trigger.folder / trigger.file_name(frame.timestamp, prediction)
            temporary = path.with_name("." + path.name + ".tmp")
            temporary.write_bytes(buffer.tobytes())
            os.replace(temporary, path)
        return path

    def close(self, timeout: float = 1.0) -> None:
        end_worker(self._queue, self._END, self._thread, timeout)

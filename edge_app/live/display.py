"""The OpenCV window for `edge-app run`: annotated live picture and keys.

Keys: ``q`` or Esc quit, ``s`` saves an annotated snapshot (PNG plus JSON), ``p``
pauses and resumes, ``c`` shows or hides the outline of the model's crop. OpenCV's window must be driven from the main thread, so the
display loop runs there and only ever reads the pipeline's latest frame and result.
Nothing here is touched in a headless run: with OpenCV's Qt build, creating a window
without a display would abort the process.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from edge_app.errors import OutputError, os_reason, translate
from edge_app.live.overlay import Overlay
from edge_app.results import Frame, LiveResult

log = logging.getLogger(__name__)

WINDOW_TITLE = "edge-app"
KEY_ESC = 27


def display_problem() -> str | None:
    """Why no window can open here, or None when a display is available."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


def has_gui() -> bool:
    """True when this OpenCV build has a window backend (not opencv-python-headless)."""
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "GUI":
            return value.strip().upper() not in ("", "NONE", "NO")
    return False


def save_snapshot(
    folder: Path, image: np.ndarray, result: LiveResult | None, extra: dict | None = None
) -> Path:
    """Write ``edge-app-<time>-f<frame>.png`` and a .json beside it; returns the PNG path.
    Raises OutputError (one line) when the folder or the files cannot be written."""
    with translate(
        {
            OSError: lambda e: OutputError(f"cannot save a snapshot in {folder}: {os_reason(e)}"),
            cv2.error: lambda e: OutputError(f"cannot save a snapshot in {folder}: {e.err}"),
        }
    ):
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        frame = f"-f{result.frame}" if result is not None else ""
        png = folder / f"edge-app-{stamp}{frame}.png"
        n = 1
        while png.exists():
            png = folder / f"edge-app-{stamp}{frame}-{n}.png"
            n += 1
        if not cv2.imwrite(str(png), image):
            raise OutputError(f"cannot write snapshot {png}")
        record = {
            "image": png.name,
            **(extra or {}),
            "result": result.to_json() if result else None,
        }
        png.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return png


class Window:
    """One OpenCV window (Qt, GTK... whatever the build has)."""

    def __init__(self, title: str = WINDOW_TITLE, fullscreen: bool = False):
        self.title = title
        flags = cv2.WINDOW_GUI_NORMAL  # no Qt toolbar or status bar: just the picture
        flags |= cv2.WINDOW_NORMAL if fullscreen else cv2.WINDOW_AUTOSIZE
        cv2.namedWindow(title, flags)
        if fullscreen:
            cv2.setWindowProperty(title, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        self._shown = False

    def show(self, image: np.ndarray) -> None:
        cv2.imshow(self.title, image)
        self._shown = True

    def key(self, wait_ms: int = 1) -> int:
        """The key pressed (lower-cased code), or -1; also runs the window's events."""
        code = cv2.waitKey(wait_ms)
        return -1 if code < 0 else code & 0xFF

    def closed_by_user(self) -> bool:
        if not self._shown:
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


class LiveDisplay:
    """Shows the newest frame with the newest result until quit or the run ends.

    A result sink: the pipeline hands it each result (``submit``); the frames it shows
    are the newest captured (``pipeline.latest_frame()``), so the picture moves at the
    camera's rate while the labels change at inference's. ``close`` closes the window.
    """

    def __init__(
        self,
        pipeline,
        overlay: Overlay,
        window: Window,
        snapshot_dir: Path = Path("."),
        snapshot_extra: dict | None = None,
        teacher=None,  # edge_app.learn.teach.KeyTeacher: keys 1..9 save the frame
    ):
        self.teacher = teacher
        self.pipeline = pipeline
        self.overlay = overlay
        self.window = window
        self.snapshot_dir = snapshot_dir
        self.snapshot_extra = snapshot_extra or {}
        self.shown = 0
        self._last_frame: Frame | None = None
        self._last_image: np.ndarray | None = None
        self._last_result: LiveResult | None = None
        latest = pipeline.latest()  # results from before it was added as a sink
        self._result: LiveResult | None = latest[0] if latest is not None else None

    def submit(self, result: LiveResult, frame: Frame | None = None) -> None:
        """Take the newest result (inference thread: one reference, drawn by ``run``)."""
        self._result = result

    def close(self, timeout: float = 1.0) -> None:
        self.window.close()

    def run(self) -> str:
        """Loop until the user quits ("quit") or the pipeline ends ("ended")."""
        while True:
            if self.pipeline.wait(0):
                return "ended"
            self._refresh()
            key = self.window.key(5)
            if key in (ord("q"), KEY_ESC) or self.window.closed_by_user():
                return "quit"
            if key == ord("s"):
                self.snapshot()
            elif key == ord("c"):
                self.overlay.show_crop = not self.overlay.show_crop
                self._last_frame = None  # redraw with the outline changed
            elif key == ord("p"):
                if self.pipeline.paused:
                    self.pipeline.resume()
                else:
                    self.pipeline.pause()
                self._last_frame = None  # redraw with the paused mark changed
            elif self.teacher is not None and self._last_frame is not None:
                if self.teacher.handle_key(key, self._last_frame.image) is not None:
                    self._last_frame = None  # redraw with the new count

    def _refresh(self) -> None:
        paused = self.pipeline.paused
        result = self._result
        frame = self._last_frame if paused and self._last_frame else self.pipeline.latest_frame()
        if frame is None or (frame is self._last_frame and result is self._last_result):
            return
        # A copy: the model may still be reading this frame, and must not see the overlay.
        image = frame.image.copy()
        self.overlay.draw(image, result, paused=paused)
        if self.teacher is not None:
            self.teacher.draw(image)
        self.window.show(image)
        self.shown += 1
        self._last_frame, self._last_result, self._last_image = frame, result, image

    def snapshot(self) -> Path | None:
        """Save what the window shows; a failure is logged in one line and the run goes on."""
        if self._last_image is None:
            return None
        try:
            path = save_snapshot(
                self.snapshot_dir, self._last_image, self._last_result, self.snapshot_extra
            )
        except OutputError as exc:
            log.error("%s", exc.message)
            return None
        log.info("snapshot saved: %s", path)
        return path

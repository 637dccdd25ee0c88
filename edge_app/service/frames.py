"""Hand-offs between the inference thread and the service's readers.

``LatestBoard`` keeps the newest item with a sequence number; readers wait for a newer
one. ``JpegFeed`` turns the newest (result, frame) into one JPEG with the overlay burned
in, on its own thread, at most ``max_fps`` times a second and only while someone watches;
every viewer gets the same bytes, and a viewer too slow for some frames simply gets the
newest one when it is ready again. Neither ever makes the inference thread wait: the
pipeline's listener only stores a reference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

READER_NICE = 10  # encoder and viewer threads yield the CPU to capture and inference


def lower_thread_priority(nice: int = READER_NICE) -> None:
    """Make the calling thread nicer (Linux nice values are per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: only a nicety
        pass


class LatestBoard:
    """The newest item and a sequence number; ``wait_newer`` blocks until it changes."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._item: Any = None
        self.seq = 0
        self.closed = False

    def publish(self, item: Any) -> None:
        with self._cond:
            self._item = item
            self.seq += 1
            self._cond.notify_all()

    def get(self) -> tuple[int, Any]:
        with self._cond:
            return self.seq, self._item

    def wait_newer(self, seq: int, timeout: float) -> tuple[int, Any]:
        """(seq, item) once seq has moved past ``seq``, or the current pair after
        ``timeout`` or on close."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq != seq or self.closed, timeout)
            return self.seq, self._item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class JpegFeed:
    """One encoder for every viewer of the live picture; see the module docstring."""

    def __init__(
        self,
        draw: Callable[[np.ndarray, Any], np.ndarray],
        *,
        max_fps: float = 10.0,
        quality: int = 80,
    ):
        self.draw = draw  # draw(image_copy, result) -> annotated image; encoder thread only
        self.max_fps = max_fps
        self.quality = quality
        self._input = LatestBoard()  # (result, frame) from the pipeline
        self._cond = threading.Condition(threading.Lock())
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._encoded_input = 0  # input seq the current JPEG was made from
        self._viewers = 0
        self._closed = False
        self.encoded = 0
        self.encode_ms = 0.0
        self._thread = threading.Thread(target=self._run, name="edge-app-jpeg", daemon=True)
        self._thread.start()

    # -- the pipeline side -----------------------------------------------------------
    def submit(self, result, frame) -> None:
        """Pipeline listener: store the newest pair (no copy, no encoding here)."""
        self._input.publish((result, frame))

    # -- the viewer side ---------------------------------------------------------------
    @property
    def viewers(self) -> int:
        return self._viewers

    @property
    def has_input(self) -> bool:
        return self._input.seq > 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """While inside, the encoder runs (it idles when nobody watches)."""
        with self._cond:
            self._viewers += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._viewers -= 1

    def start_seq(self) -> int:
        """Where a new viewer starts: 0 takes the cached JPEG at once; the current
        sequence waits for a fresh one when newer frames have arrived since it was made
        (the encoder idles while nobody watches, so the cache may be old)."""
        with self._cond:
            stale = self._encoded_input != self._input.seq
            return self._jpeg_seq if stale else 0

    def wait_next(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest JPEG once it is newer than sequence ``after`` (or after timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._jpeg_seq != after or self._closed, timeout)
            return self._jpeg_seq, self._jpeg

    def snapshot(self, timeout: float = 3.0) -> bytes | None:
        """A JPEG of the newest frame: the cached one when current, else a fresh one."""
        with self._cond:
            if self._jpeg is not None and self._encoded_input == self._input.seq:
                return self._jpeg
            seq = self._jpeg_seq
        if not self.has_input:
            return None
        with self.watching():
            _, jpeg = self.wait_next(seq, timeout)
        return jpeg

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._input.close()
        self._thread.join(timeout)

    # -- the encoder thread ------------------------------------------------------------
    def _run(self) -> None:
        import cv2

        lower_thread_priority()
        last = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._viewers > 0 or self._closed)
                if self._closed:
                    return
                encoded_input = self._encoded_input
            # Wake for a new frame, re-checking now and then for viewers leaving.
            seq, item = self._input.wait_newer(encoded_input, 0.5)
            if self._closed:
                return
            if item is None or seq == encoded_input:
                continue
            delay = last + 1.0 / self.max_fps - time.monotonic()
            if delay > 0:  # the rate cap: sleep, then take whatever is newest then
                time.sleep(delay)
                seq, item = self._input.get()
            result, frame = item
            start = time.perf_counter()
            try:
                image = self.draw(frame.image.copy(), result)
                ok, buffer = cv2.imencode(
                    ".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(self.quality)]
                )
            except Exception:
                log.exception("cannot encode the live picture")
                ok = False
            last = time.monotonic()
            if not ok:
                with self._cond:
                    self._encoded_input = seq  # do not spin on a frame that fails
                continue
            self.encode_ms = (time.perf_counter() - start) * 1000.0
            with self._cond:
                self._jpeg = buffer.tobytes()
                self._jpeg_seq += 1
                self._encoded_input = seq
                self.encoded += 1
                self._cond.notify_all()

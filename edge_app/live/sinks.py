"""The one contract every output of the live pipeline implements, and the JSON lines one.

A result sink is handed each result with the frame it was computed from, on the
pipeline's inference thread, so ``submit`` only hands references on (each sink does its
work on its own thread); ``close(timeout)`` flushes what is pending and releases the
sink, giving up after ``timeout`` seconds. Outputs: the window (``live.display``), JSON
lines (here), the web view's frames (``service.frames``), MQTT, the event log and the
triggers (``service``).
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Protocol, TextIO, runtime_checkable

from edge_app.results import Frame, LiveResult


@runtime_checkable
class ResultSink(Protocol):
    def submit(self, result: LiveResult, frame: Frame) -> None:
        """Take one result (inference thread: cheap, never blocking for long)."""

    def close(self, timeout: float = 1.0) -> None:
        """Flush and release; return within about ``timeout`` seconds."""


def end_worker(work: queue.Queue, end: object, thread: threading.Thread, timeout: float) -> bool:
    """Queue the ``end`` marker behind the pending work and wait for ``thread`` to write
    it all; False when it did not finish within ``timeout`` (the work is abandoned)."""
    try:
        work.put(end, timeout=timeout)
    except queue.Full:
        pass
    thread.join(timeout)
    return not thread.is_alive()


class JsonLinesWriter:
    """Prints one JSON record per result on its own thread, so a slow reader of stdout
    never holds up inference. ``lossless`` (every frame matters) waits for room instead
    of dropping records when the reader falls far behind."""

    _END = object()

    def __init__(self, stream: TextIO, lossless: bool, capacity: int = 1024):
        self.stream = stream
        self.lossless = lossless
        self.dropped = 0  # records not queued: the reader was too slow
        self.submitted = 0
        self.written = 0
        self.broken = threading.Event()  # the reader went away (e.g. `| head`)
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._write, name="edge-app-json", daemon=True)
        self._thread.start()

    def submit(self, result: LiveResult, frame: Frame | None = None) -> None:
        if self.broken.is_set():
            return
        self.submitted += 1
        try:
            if self.lossless:
                self._queue.put(result, timeout=5.0)
            else:
                self._queue.put_nowait(result)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while True:
            result = self._queue.get()
            if result is self._END:
                return
            try:
                self.stream.write(json.dumps(result.to_json()) + "\n")
                self.stream.flush()
                self.written += 1
            except (BrokenPipeError, ValueError, OSError):
                self.broken.set()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued; give up after ``timeout`` if stdout stays blocked."""
        end_worker(self._queue, self._END, self._thread, timeout)

    @property
    def unwritten(self) -> int:
        return 0 if self.broken.is_set() else self.submitted - self.written

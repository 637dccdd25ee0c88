"""A one-line byte progress display for downloads: bytes, rate and time left.

``ByteProgress`` is the ``on_progress(done, total)`` callback the model store calls; it
redraws one terminal line at most ``MIN_INTERVAL_S`` apart and stays silent when the
stream is not a terminal (logs and pipes get the store's step lines only).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_INTERVAL_S = 0.2


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_progress(done: int, total: int, elapsed_s: float, since: int = 0) -> str:
    """e.g. ``1.2 MB of 4.3 MB  28%  850.0 kB/s  ETA 0:04`` (``since``: bytes that were
    already there when timing began, as with a resumed download)."""
    rate = (done - since) / elapsed_s if elapsed_s > 0 else 0.0
    parts = [f"{_size(done)} of {_size(total)}" if total else _size(done)]
    if total:
        parts.append(f"{100 * done / total:3.0f}%")
    if rate > 0:
        parts.append(f"{_size(rate)}/s")
        if total and done < total:
            parts.append(f"ETA {_duration((total - done) / rate)}")
    return "  ".join(parts)


class ByteProgress:
    """Callable ``(done, total)``; call ``finish()`` to end the line."""

    def __init__(self, stream: TextIO | None = None, *, force: bool = False, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.clock = clock
        self.label = ""
        self._start: float | None = None
        self._since = 0
        self._last_draw = 0.0
        self._drawn = False

    def start(self, label: str) -> None:
        """A new transfer: its label; timing restarts at its first call."""
        self.finish()
        self.label = label
        self._start = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._start is None:
            self._start, self._since = now, done
        if self._drawn and now - self._last_draw < MIN_INTERVAL_S and done != total:
            return
        self._last_draw = now
        text = format_progress(done, total, now - self._start, self._since)
        prefix = f"{self.label}: " if self.label else ""
        self.stream.write(f"\r{prefix}{text}\033[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

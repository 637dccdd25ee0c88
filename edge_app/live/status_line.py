"""The status line of a run without a window: what is seen, how fast, how late, what is lost.

    edge-app: 00:12 Egyptian cat 86 % | 29.8 FPS (camera 30.0) | invoke 7.1 ms, latency 21 ms
    | 0 dropped                                                               (one line)

Over SSH or in a log a headless `edge-app run` would otherwise be silent for minutes.
On a terminal the line is redrawn in place twice a second; elsewhere (a pipe, a log
file, journald) one line is printed every ``interval`` seconds. The label follows the
human rule of :func:`edge_app.results.human_label` (no ``background``, nothing under
1 %, "uncertain" otherwise).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

from edge_app.results import LiveResult, human_label

LOG_INTERVAL_S = 5.0  # off a terminal: one line this often
LIVE_INTERVAL_S = 0.5  # on a terminal: redraw this often


def format_status(stats: dict, result: LiveResult | None, elapsed: float | None = None) -> str:
    """One status line from ``Pipeline.stats()`` and the newest result."""
    if result is None:
        seen = "waiting for the first result"
    else:
        label, score = human_label(result.top)
        seen = label if score is None else f"{label} {score * 100:.0f} %"
    state = stats.get("source_state", "running")
    if stats.get("paused"):
        state = "paused"
    fps, camera_fps = stats.get("inference_fps", 0.0), stats.get("camera_fps", 0.0)
    invoke_ms, latency_ms = stats.get("invoke_ms", 0.0), stats.get("latency_ms_p50", 0.0)
    parts = [
        seen,
        f"{fps:.1f} FPS (camera {camera_fps:.1f})",
        f"invoke {invoke_ms:.1f} ms, latency {latency_ms:.0f} ms",
        f"{stats.get('dropped', 0)} dropped",
    ]
    if state not in ("running", "starting"):
        parts.append(state)
    head = ""
    if elapsed is not None:
        minutes, seconds = divmod(int(elapsed), 60)
        head = f"{minutes:02d}:{seconds:02d} "
    return head + " | ".join(parts)


class StatusLine:
    """Prints :func:`format_status` for a pipeline; call ``tick()`` often (it decides
    when to print) and ``close()`` at the end."""

    def __init__(
        self,
        pipeline,
        stream: TextIO,
        *,
        live: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "edge-app: ",
    ):
        self.pipeline = pipeline
        self.stream = stream
        if live is None:
            try:
                live = stream.isatty()
            except (AttributeError, ValueError):
                live = False
        self.live = live
        self.interval = interval or (LIVE_INTERVAL_S if live else LOG_INTERVAL_S)
        self.clock = clock
        self.prefix = prefix
        self.started = clock()
        self.printed = 0
        self._next = self.started + (self.interval if not live else 0.0)
        self._drawn = False

    def line(self) -> str:
        latest = self.pipeline.latest()
        result = latest[0] if latest is not None else None
        return self.prefix + format_status(
            self.pipeline.stats(), result, self.clock() - self.started
        )

    def tick(self) -> bool:
        """Print when due; True when a line was printed."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        text = self.line()
        try:
            if self.live:  # one screen line, or \r cannot take it back
                text = text[: shutil.get_terminal_size((100, 24)).columns - 1]
                self.stream.write("\r\x1b[K" + text)
                self._drawn = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            return False  # stderr went away: the run goes on
        self.printed += 1
        return True

    def close(self) -> None:
        """End a live line so the summary starts on a line of its own."""
        if self.live and self._drawn:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False

"""The last minutes of the service's figures, one sample a second, for the page's chart.

Sampled by the service's main loop (not the inference thread); read by web threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class Series:
    def __init__(self, seconds: int = 600, every_s: float = 1.0):
        self.every_s = every_s
        self._samples: deque[dict] = deque(maxlen=seconds)
        self._lock = threading.Lock()
        self._next = 0.0

    def maybe_sample(self, stats: dict, top, events: int = 0) -> None:
        """Keep one sample per ``every_s``: rates, the top label and score, gating."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        gate = stats.get("gate") or {}
        sample = {
            "t": round(time.time(), 2),
            "fps": stats.get("inference_fps", 0.0),
            "camera_fps": stats.get("camera_fps", 0.0),
            "score": round(top.score, 4) if top is not None else None,
            "label": top.label.split(",")[0] if top is not None else None,
            "gated": gate.get("gated_share"),
            "events": events,
        }
        with self._lock:
            self._samples.append(sample)

    def since(self, t: float = 0.0) -> list[dict]:
        with self._lock:
            return [s for s in self._samples if s["t"] > t]

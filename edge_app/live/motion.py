"""Motion gating: classify only when the picture changes, and now and then regardless.

Each frame is shrunk to a small grey picture (64x48 by default, from every few pixels:
about 0.1 ms for 640x480 here, against 10 ms and more for one invoke), blurred a little,
and compared with a background that follows the scene slowly. A pixel has changed when
it differs from the background by more than ``threshold`` grey levels; the frame counts
as motion when at least ``min_area`` of the pixels changed. Sensor noise is
absorbed by the shrinking and the blur; slow light changes by the background's drift
(``adapt`` per frame). A still scene is still classified every ``max_interval`` seconds,
so a result never grows older than that.

``should_infer(frame, now)`` returns "motion", "refresh" or None (skip this frame). It is
called on the inference thread only and keeps no lock.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_app.errors import ConfigError
from edge_app.settings import GATE_CHOICES


class MotionGate:
    def __init__(
        self,
        *,
        threshold: float = 12.0,
        min_area: float = 0.005,
        max_interval: float = 10.0,
        size: tuple[int, int] = (64, 48),
        adapt: float = 0.1,
    ):
        if not 0 < threshold < 255:
            raise ConfigError(f"gate threshold must be from 0 to 255 grey levels, got {threshold}")
        if not 0 <= min_area <= 1:
            raise ConfigError(f"gate min_area must be a fraction from 0 to 1, got {min_area}")
        if max_interval <= 0:
            raise ConfigError(f"gate max_interval must be positive, got {max_interval}")
        if not 0 < adapt <= 1:
            raise ConfigError(f"gate adapt must be above 0 and at most 1, got {adapt}")
        self.threshold = float(threshold)
        self.min_area = float(min_area)
        self.max_interval = float(max_interval)
        self.size = size
        self.adapt = float(adapt)
        self._background: np.ndarray | None = None
        self._last_inferred = 0.0
        self.changed = 0.0  # the newest frame's changed share, for stats and tuning
        self.counts = {"motion": 0, "refresh": 0, "skipped": 0}

    def small_grey(self, image: np.ndarray) -> np.ndarray:
        # Every step-th pixel first (a view, no copy), then area-averaged: a fifth of the
        # cost of averaging the whole frame, and still far finer than anything that moves.
        step = max(
            1, min(image.shape[1] // (2 * self.size[0]), image.shape[0] // (2 * self.size[1]))
        )
        small = cv2.resize(image[::step, ::step], self.size, interpolation=cv2.INTER_AREA)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(small, (3, 3), 0).astype(np.float32)

    def should_infer(self, frame, now: float) -> str | None:
        """ "motion", "refresh" or None for ``frame`` (a Frame) seen at ``now`` (monotonic)."""
        image = frame.model_image if frame.model_image is not None else frame.image
        grey = self.small_grey(image)
        background = self._background
        if background is None or background.shape != grey.shape:
            self._background = grey
            self.changed = 1.0
            return self._count("motion", now)
        moved = np.abs(grey - background) > self.threshold
        self.changed = float(np.count_nonzero(moved)) / moved.size
        cv2.accumulateWeighted(grey, background, self.adapt)
        if self.changed >= self.min_area and self.changed > 0:
            return self._count("motion", now)
        if now - self._last_inferred >= self.max_interval:
            return self._count("refresh", now)
        self.counts["skipped"] += 1
        return None

    def _count(self, reason: str, now: float) -> str:
        self.counts[reason] += 1
        self._last_inferred = now
        return reason

    def stats(self) -> dict:
        counts = dict(self.counts)
        seen = sum(counts.values())
        return {
            "mode": "motion",
            **counts,
            "gated_share": round(counts["skipped"] / seen, 4) if seen else 0.0,
            "changed": round(self.changed, 4),
        }


def make_gate(mode: str, *, threshold=12.0, min_area=0.005, max_interval=10.0) -> MotionGate | None:
    """The gate for ``mode`` ("off" or "motion"); None for off."""
    if mode == "off":
        return None
    if mode == "motion":
        return MotionGate(threshold=threshold, min_area=min_area, max_interval=max_interval)
    raise ConfigError(f"gate must be one of {', '.join(GATE_CHOICES)}, got {mode!r}")

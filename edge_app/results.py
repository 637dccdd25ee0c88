"""Plain data passed between the seams: predictions, frames and live results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    index: int  # the model's output index (1001-class models: 0 is background)
    label: str  # the full label line
    score: float  # dequantized score (probability for softmax models)

    def to_json(self) -> dict:
        return {"index": self.index, "label": self.label, "score": round(self.score, 5)}


@dataclass(slots=True)
class Frame:
    """One captured frame.

    ``image`` is the display picture, BGR (OpenCV's order). ``model_image`` is an optional
    second, smaller BGR picture meant for the model (picamera2's ISP-scaled ``lores``
    stream); when None the model input is made from ``image``.
    """

    number: int  # the source's frame number, from 0
    timestamp: float  # wall-clock capture time, time.time()
    image: np.ndarray
    model_image: np.ndarray | None = None
    monotonic: float = 0.0  # time.monotonic() at capture, for latency


@dataclass(slots=True)
class LiveResult:
    """One inference result of the live pipeline; ``to_json`` is the `run --json` record."""

    frame: int
    time: float
    top: list[Prediction]
    inference_ms: float
    latency_ms: float
    fps: float
    camera_fps: float
    raw_top: list[Prediction] = field(default_factory=list)  # before smoothing
    # Why this frame was classified: "always" (no gate), "motion" (the picture changed)
    # or "refresh" (a still scene, classified again after gate.max_interval).
    trigger: str = "always"

    def to_json(self) -> dict:
        return {
            "frame": self.frame,
            "time": round(self.time, 3),
            "top": [p.to_json() for p in self.top],
            "inference_ms": round(self.inference_ms, 2),
            "latency_ms": round(self.latency_ms, 2),
            "fps": round(self.fps, 2),
            "camera_fps": round(self.camera_fps, 2),
            "trigger": self.trigger,
        }

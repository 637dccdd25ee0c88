"""Plain data passed between the seams: predictions, frames and live results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

HUMAN_FLOOR = 0.01  # scores below 1 % are noise to a reader
UNCERTAIN = "uncertain"  # what a human view says when no prediction clears the floor
BACKGROUND = "background"  # index 0 of 1001-class ImageNet models: "none of the classes"


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


P = TypeVar("P")


def _label_score(prediction) -> tuple[str, float]:
    if isinstance(prediction, dict):
        return str(prediction.get("label", "")), float(prediction.get("score", 0.0))
    return prediction.label, prediction.score


def is_background(label: str) -> bool:
    """True for the catch-all class of 1001-class models (their label 0, ``background``)."""
    return label.strip().lower() == BACKGROUND


def human_top(predictions: list[P], floor: float = HUMAN_FLOOR) -> list[P]:
    """The predictions a person should see: the one rule of every human-facing view.

    The rule (the web page applies the same one in JavaScript):
      * the ``background`` class (index 0 of 1001-class models) is never shown;
      * predictions scoring below ``floor`` (1 % by default) are hidden: "0 % tench" is
        noise, not information;
      * when nothing is left, the view says ``UNCERTAIN`` ("uncertain") instead of a list.
    Order is kept. Works on ``Prediction`` objects and on their JSON dicts alike.
    Machine formats (JSONL, CSV, ``run --json``) do not use this: they keep exactly
    ``--top-k`` entries (unless ``--threshold``), without ``background`` unless
    ``--keep-background``.
    """
    shown = []
    for prediction in predictions:
        label, score = _label_score(prediction)
        if score >= floor and not is_background(label):
            shown.append(prediction)
    return shown


def human_label(predictions: list, floor: float = HUMAN_FLOOR) -> tuple[str, float | None]:
    """(first synonym of the best shown label, its score), or (``UNCERTAIN``, None)."""
    shown = human_top(predictions, floor)
    if not shown:
        return UNCERTAIN, None
    label, score = _label_score(shown[0])
    return label.split(",", 1)[0].strip(), score

"""Temporal smoothing of scores and label hysteresis, so a live label does not flicker.

Smoothing is an exponential moving average over each result's score vector:
``smoothed = smooth * previous + (1 - smooth) * scores``; 0 turns it off, 0.7 averages
over roughly the last three results. Hysteresis keeps the shown label until another
label's (smoothed) score beats it by more than a margin.
"""

from __future__ import annotations

import numpy as np

from edge_app.errors import ConfigError
from edge_app.results import Prediction, is_background


class LabelSmoother:
    def __init__(self, smooth: float = 0.0, hysteresis: float = 0.0):
        if not 0.0 <= smooth < 1.0:
            raise ConfigError(f"pipeline.smooth must be at least 0 and below 1, not {smooth}")
        if not 0.0 <= hysteresis <= 1.0:
            raise ConfigError(f"pipeline.hysteresis must be from 0 to 1, not {hysteresis}")
        self.smooth = float(smooth)
        self.hysteresis = float(hysteresis)
        self._average: np.ndarray | None = None
        self._shown: int | None = None

    @property
    def active(self) -> bool:
        return self.smooth > 0.0 or self.hysteresis > 0.0

    def reset(self) -> None:
        self._average = None
        self._shown = None

    def update(self, scores: np.ndarray) -> np.ndarray:
        """The smoothed scores after this result (the input itself when smoothing is off)."""
        if self.smooth <= 0.0:
            return scores
        if self._average is None or self._average.shape != scores.shape:
            self._average = scores.astype(np.float32, copy=True)
        else:
            self._average *= self.smooth
            self._average += (1.0 - self.smooth) * scores
        return self._average

    def shown(self, scores: np.ndarray) -> int:
        """The label index to show: the best one, unless the one shown holds within the
        hysteresis margin."""
        best = int(np.argmax(scores))
        if self._shown is None or scores[best] > scores[self._shown] + self.hysteresis:
            self._shown = best
        return self._shown

    def top(self, scores: np.ndarray, top: list[Prediction], labels: list[str]) -> list[Prediction]:
        """``top`` (the top-k of ``scores``) reordered so the held label leads."""
        shown = self.shown(scores)
        if not top or top[0].index == shown:
            return top
        if is_background(labels[shown]) and all(p.index != shown for p in top):
            self._shown = top[0].index  # top-k left background out: hold a real class
            return top
        held = Prediction(shown, labels[shown], float(scores[shown]))
        return [held, *(p for p in top if p.index != shown)][: len(top)]

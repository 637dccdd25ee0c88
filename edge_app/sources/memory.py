"""Frames already in memory: replaying decoded pictures at no capture cost.

Stands in for a source whose frames cost the CPU almost nothing (a Pi camera's
ISP-scaled stream), for benchmarks and tests of the pipeline itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_app.results import Frame
from edge_app.sources.base import FrameSource, Pacer


class MemorySource(FrameSource):
    """Cycles through ``images`` (BGR) for ``count`` frames (None: forever).

    ``fps`` paces it like a camera; ``live`` makes a slow consumer drop frames instead
    of holding the source back; ``model_images`` pairs each picture with a model-sized
    one, as picamera2's lores stream does.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        *,
        count: int | None = None,
        fps: float | None = None,
        live: bool = False,
        model_images: Sequence[np.ndarray] | None = None,
        name: str = "memory",
    ):
        super().__init__()
        if not images:
            raise ValueError("MemorySource needs at least one image")
        if model_images is not None and len(model_images) != len(images):
            raise ValueError("model_images must pair one to one with images")
        self.images = list(images)
        self.model_images = list(model_images) if model_images is not None else None
        self.count = count
        self.fps = fps
        self.live = live
        self.lossless = not live
        self.name = name
        self._pacer = Pacer(fps) if fps else None

    @property
    def description(self) -> str:
        return self.name

    def _open(self) -> None:
        self._number = 0

    def _close(self) -> None:
        pass

    def read(self) -> Frame | None:
        if self.count is not None and self._number >= self.count:
            return None
        if self._pacer is not None:
            self._pacer.wait()
        i = self._number % len(self.images)
        model_image = self.model_images[i] if self.model_images is not None else None
        return self._frame(self.images[i], model_image)

"""The one interface every frame source implements."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from edge_app.results import Frame


class FrameSource(ABC):
    """A camera, video file, stream or in-memory sequence delivering BGR frames.

    ``open()`` may raise SourceError (CameraUnavailable when a camera is busy or absent);
    ``read()`` returns the next Frame, None at the end of a finite source, and raises
    SourceError when a live source fails. One thread reads; ``close()`` is idempotent.
    """

    #: True for cameras and network streams: frames keep coming whether or not anyone
    #: reads them, so a slow consumer must drop. False for files and memory: a consumer
    #: may make the source wait (``lossless``) and nothing is lost.
    live: bool = True
    #: True when the pipeline should hand every frame to inference (capture waits for
    #: inference to take each frame): files read with --no-pace.
    lossless: bool = False
    #: Nominal frames per second (camera setting or file rate); None when unknown.
    fps: float | None = None

    def __init__(self) -> None:
        self._number = 0
        self._opened = False

    @property
    @abstractmethod
    def description(self) -> str:
        """What this source is, for messages: ``/dev/video0 (V4L2)``, ``demo.mp4``."""

    @property
    def is_open(self) -> bool:
        return self._opened

    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None: ...

    def _frame(self, image: np.ndarray, model_image: np.ndarray | None = None) -> Frame:
        """Wrap a captured picture with the next frame number and the capture times."""
        frame = Frame(
            number=self._number,
            timestamp=time.time(),
            image=image,
            model_image=model_image,
            monotonic=time.monotonic(),
        )
        self._number += 1
        return frame

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class Pacer:
    """Holds a finite source to its frame rate, like a camera would deliver it.

    Frame n is due at start + n / fps. A reader that falls more than a second behind
    (a slow decoder, a pause) restarts the clock instead of bursting to catch up.
    """

    def __init__(self, fps: float):
        self.interval = 1.0 / fps
        self._start: float | None = None
        self._count = 0

    def wait(self) -> None:
        now = time.monotonic()
        if self._start is None or now - self._due() > 1.0:
            self._start, self._count = now, 0
        delay = self._due() - now
        if delay > 0:
            time.sleep(delay)
        self._count += 1

    def reset(self) -> None:
        self._start = None

    def _due(self) -> float:
        assert self._start is not None
        return self._start + self._count * self.interval

"""OpenCV sources: V4L2 cameras (USB webcams), video files, and network streams."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2

from edge_app.errors import CameraUnavailable, SourceError
from edge_app.results import Frame
from edge_app.sources.base import FrameSource, Pacer

log = logging.getLogger(__name__)

# OpenCV's and FFmpeg's own warnings ("[tcp @ 0x...] Connection refused", "can't open
# camera by index") would break the one-line error a user gets; the SourceError says
# it instead. Environment settings made by the user win.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read at first use
_cv_logging = getattr(getattr(cv2, "utils", None), "logging", None)  # absent in apt's 4.6
if "OPENCV_LOG_LEVEL" not in os.environ and _cv_logging is not None:
    _cv_logging.setLogLevel(_cv_logging.LOG_LEVEL_ERROR)

DEFAULT_FILE_FPS = 30.0  # when a file does not say (some containers report 0)
STREAM_TIMEOUT_MS = 10_000  # open and read timeouts for network streams


def _fourcc_text(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")


class _CaptureSource(FrameSource):
    """What the three OpenCV sources share: one ``cv2.VideoCapture``, released once."""

    def __init__(self) -> None:
        super().__init__()
        self._cap: cv2.VideoCapture | None = None

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _grab(self):
        """The next picture from the capture, or None when it gave none."""
        assert self._cap is not None, "open() first"
        ok, image = self._cap.read()
        return image if ok else None


class OpenCVCameraSource(_CaptureSource):
    """A V4L2 camera (``0`` or ``/dev/video0``), MJPG when the camera offers it.

    USB cameras usually deliver only 5-10 fps of raw YUYV at 640x480 and above over
    USB 2, but 30 fps of MJPG, so MJPG is asked for first.
    """

    live = True

    def __init__(
        self,
        device: int | str = 0,
        *,
        size: tuple[int, int] | None = (640, 480),
        fps: float | None = 30.0,
        mjpg: bool = True,
    ):
        super().__init__()
        self.device = device
        self.size = size
        self.fps = fps
        self.mjpg = mjpg
        self.fourcc = ""

    @property
    def description(self) -> str:
        name = f"/dev/video{self.device}" if isinstance(self.device, int) else str(self.device)
        return f"{name} (V4L2)"

    def _open(self) -> None:
        if isinstance(self.device, str) and not os.path.exists(self.device):
            raise CameraUnavailable(f"no camera at {self.device} (the device does not exist)")
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailable(
                f"cannot open camera {self.description}: missing, busy (another program "
                "is using it) or not a capture device"
            )
        # FOURCC first: the sizes and rates a camera offers depend on the format.
        if self.mjpg:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if self.size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        ok, image = cap.read()
        if not ok or image is None:
            cap.release()
            raise CameraUnavailable(
                f"camera {self.description} opened but delivers no frames (busy, or not a "
                "video capture node)"
            )
        self.fourcc = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        actual_fps = cap.get(cv2.CAP_PROP_FPS)
        if actual_fps > 0:
            self.fps = actual_fps
        log.info(
            "camera %s: %dx%d %s at %.0f fps",
            self.description,
            image.shape[1],
            image.shape[0],
            self.fourcc or "?",
            self.fps or 0,
        )
        self._cap = cap

    def read(self) -> Frame | None:
        image = self._grab()
        if image is None:
            raise SourceError(f"camera {self.description} stopped delivering frames")
        return self._frame(image)


class VideoFileSource(_CaptureSource):
    """A video file. ``pace`` plays it at its own frame rate, like a camera; without it
    every frame is delivered in order as fast as the consumer takes them."""

    live = False

    def __init__(self, path: str | os.PathLike, *, pace: bool = True, loop: bool = False):
        super().__init__()
        self.path = Path(path)
        self.pace = pace
        self.lossless = not pace
        self.loop = loop
        self.frame_count = 0
        self._pacer: Pacer | None = None

    @property
    def description(self) -> str:
        return str(self.path)

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video file {self.path}: not a video OpenCV can decode")
        return cap

    def _open(self) -> None:
        if not self.path.exists():
            raise SourceError(f"video file not found: {self.path}")
        if self.path.is_dir():
            raise SourceError(f"source is a folder, not a video file: {self.path}")
        if not os.access(self.path, os.R_OK):
            raise SourceError(f"cannot read video file {self.path}: permission denied")
        cap = self._capture()
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps <= 1000 else DEFAULT_FILE_FPS
        self.frame_count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._pacer = Pacer(self.fps) if self.pace else None
        self._cap = cap

    def read(self) -> Frame | None:
        image = self._grab()
        if image is None and self.loop and self._number > 0:
            # Reopening is the one rewind every container and backend supports.
            self._close()
            self._cap = self._capture()
            image = self._grab()
        if image is None:
            return None
        if self._pacer is not None:
            self._pacer.wait()
        return self._frame(image)


class StreamSource(_CaptureSource):
    """A network stream (``rtsp://``, ``http://``...) through OpenCV's FFmpeg backend."""

    live = True

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.frame_count = 0

    @property
    def description(self) -> str:
        return self.url

    def _open(self) -> None:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            STREAM_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            STREAM_TIMEOUT_MS,
        ]
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailable(
                f"cannot open stream {self.url}: unreachable, refused, or not a video stream"
            )
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps <= 1000 else None
        # A file served over HTTP has a length; a live stream reports none.
        self.frame_count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._cap = cap

    def read(self) -> Frame | None:
        image = self._grab()
        if image is None:
            if self.frame_count and self._number >= self.frame_count - 1:
                return None  # a finite file over HTTP has ended
            raise SourceError(f"stream {self.url} stopped delivering frames")
        return self._frame(image)

"""Frame sources behind one interface, chosen from a ``--source`` spec.

Specs: ``auto`` (a Pi camera, else the first V4L2 camera), ``picamera2`` or
``picamera2:N``, a camera number (``0``) or ``/dev/videoN``, a video file, or a
stream URL (``rtsp://``, ``http://``...).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from edge_app.errors import CameraUnavailable, SourceError
from edge_app.sources.base import FrameSource, Pacer
from edge_app.sources.memory import MemorySource

__all__ = [
    "FrameSource",
    "MemorySource",
    "Pacer",
    "SourcePlan",
    "make_source",
    "plan_source",
    "open_source",
    "v4l2_capture_devices",
]

log = logging.getLogger(__name__)

SPEC_HELP = (
    "auto, picamera2[:N], a camera number or /dev/videoN, a video file, "
    "or an rtsp:// or http:// URL"
)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_PICAMERA2 = re.compile(r"^(?:picamera2|picam|pi)(?::(\d+))?$")

# V4L2 VIDIOC_QUERYCAP: _IOR('V', 0, struct v4l2_capability), a 104-byte struct.
_VIDIOC_QUERYCAP = 0x80685600
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
_CAP_VIDEO_M2M = 0x00008000
_CAP_VIDEO_M2M_MPLANE = 0x00004000
_CAP_DEVICE_CAPS = 0x80000000
# Capture nodes that are not cameras OpenCV can read: the Pi's raw sensor receivers
# (libcamera's job, reached through picamera2) and ISP / codec outputs.
_NOT_CAMERAS = {"unicam", "rp1-cfe", "bcm2835-isp", "pispbe", "bcm2835-codec", "rpivid"}


def _query_capture(path: str) -> tuple[str, str] | None:
    """(driver, card) when ``path`` is a V4L2 video capture device, else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        log.debug("cannot open %s: %s", path, exc)
        return None
    try:
        buf = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    driver = bytes(buf[0:16]).split(b"\0")[0].decode(errors="replace")
    card = bytes(buf[16:48]).split(b"\0")[0].decode(errors="replace")
    capabilities, device_caps = struct.unpack_from("<II", buf, 84)
    caps = device_caps if capabilities & _CAP_DEVICE_CAPS else capabilities
    if not caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE):
        return None  # metadata nodes, outputs
    if caps & (_CAP_VIDEO_M2M | _CAP_VIDEO_M2M_MPLANE) or driver in _NOT_CAMERAS:
        return None
    return driver, card


def v4l2_capture_devices(dev_root: str | os.PathLike = "/dev") -> list[str]:
    """V4L2 camera nodes under ``dev_root`` in number order (/dev/video0 first)."""

    def number(path: Path) -> int:
        digits = path.name[len("video") :]
        return int(digits) if digits.isdigit() else 1 << 30

    found = []
    for path in sorted(Path(dev_root).glob("video*"), key=number):
        if _query_capture(str(path)) is not None:
            found.append(str(path))
    return found


class SourcePlan:
    """A source spec resolved to what will be made (a camera found, a file checked), not
    yet constructed: ``make(model_size)`` builds it once the model's input size is known,
    so a wrong path or a missing camera is reported before any model is loaded."""

    def __init__(self, build: Callable[[tuple[int, int] | None], FrameSource], what: str):
        self._build = build
        self.what = what

    def make(self, model_size: tuple[int, int] | None = None) -> FrameSource:
        """The (unopened) source; ``model_size`` (width, height) asks picamera2 for an
        ISP-scaled second stream for the model (other sources ignore it)."""
        return self._build(model_size)

    def __repr__(self) -> str:
        return f"<SourcePlan {self.what}>"


def plan_source(
    spec: str = "auto",
    *,
    size: tuple[int, int] = (640, 480),
    fps: float | None = 30.0,
    hflip: bool = False,
    vflip: bool = False,
    buffer_count: int = 4,
    pace: bool = True,
    loop: bool = False,
    picamera2_module: ModuleType | None = None,
    libcamera_module: ModuleType | None = None,
    dev_root: str | os.PathLike = "/dev",
) -> SourcePlan:
    """What a spec names; ``auto`` looks for cameras first.

    ``size`` is (width, height). ``fps`` applies to cameras, ``pace`` and ``loop`` to
    video files. Raises SourceError (CameraUnavailable for ``auto`` with no camera) with
    a message naming what was tried.
    """
    spec = (spec or "auto").strip()

    def picamera2_source(num: int) -> SourcePlan:
        def build(model_size):
            from edge_app.sources.picamera2_source import Picamera2Source

            return Picamera2Source(
                num,
                size=size,
                model_size=model_size,
                fps=fps,
                hflip=hflip,
                vflip=vflip,
                buffer_count=buffer_count,
                picamera2_module=picamera2_module,
                libcamera_module=libcamera_module,
            )

        return SourcePlan(build, f"Pi camera {num}")

    def v4l2_source(device: int | str) -> SourcePlan:
        from edge_app.sources.opencv_source import OpenCVCameraSource

        if hflip or vflip:
            log.warning("hflip and vflip apply to Pi cameras only; ignored for %s", device)
        return SourcePlan(lambda _: OpenCVCameraSource(device, size=size, fps=fps), str(device))

    if spec == "auto":
        return _auto_source(picamera2_source, v4l2_source, picamera2_module, dev_root)
    match = _PICAMERA2.match(spec)
    if match:
        return picamera2_source(int(match.group(1) or 0))
    if spec.isdigit():
        return v4l2_source(int(spec))
    if spec.startswith("/dev/video"):
        return v4l2_source(spec)
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    elif _URL.match(spec):
        from edge_app.sources.opencv_source import StreamSource

        return SourcePlan(lambda _: StreamSource(spec), spec)
    from edge_app.sources.opencv_source import VideoFileSource

    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"--source {spec}: no such file (a source is {SPEC_HELP})")
    return SourcePlan(lambda _: VideoFileSource(path, pace=pace, loop=loop), str(path))


def make_source(
    spec: str = "auto", *, model_size: tuple[int, int] | None = None, **options
) -> FrameSource:
    """The (unopened) source a spec names: ``plan_source(spec, **options).make(model_size)``."""
    return plan_source(spec, **options).make(model_size)


def _auto_source(picamera2_source, v4l2_source, picamera2_module, dev_root) -> SourcePlan:
    from edge_app.sources.picamera2_source import import_picamera2, pi_cameras

    tried = []
    if picamera2_module is None:
        try:
            picamera2_module, _ = import_picamera2()
        except SourceError:
            tried.append("picamera2 (not installed)")
    if picamera2_module is not None:
        cameras = pi_cameras(picamera2_module)
        if cameras:
            log.info("auto source: Pi camera 0 (%s)", cameras[0].get("Model", "?"))
            return picamera2_source(0)
        tried.append("picamera2 (no Pi camera found)")
    devices = v4l2_capture_devices(dev_root)
    if devices:
        log.info("auto source: %s", devices[0])
        return v4l2_source(devices[0])
    tried.append(f"V4L2 ({Path(dev_root) / 'video*'}: no capture device)")
    raise CameraUnavailable(
        f"no camera found (tried {', '.join(tried)}); connect a camera, or pass a video "
        "file or stream with --source FILE or --source rtsp://HOST/PATH"
    )


def open_source(spec: str = "auto", **kwargs) -> FrameSource:
    """``make_source(spec, **kwargs)``, opened: ready to ``read()``."""
    source = make_source(spec, **kwargs)
    source.open()
    return source

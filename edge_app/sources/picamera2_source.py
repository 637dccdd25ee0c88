"""Raspberry Pi cameras through picamera2: a display stream plus an ISP-scaled model stream.

The ISP scales the ``lores`` stream to the model's input size for free, so the CPU
never resizes a camera frame. On Pi 4 and older (VC4) ``lores`` must be YUV420; on
Pi 5 (PiSP) it can be RGB. picamera2's ``RGB888`` arrays are BGR in memory (libcamera
names formats by their little-endian word order), which is OpenCV's order, so the
RGB888 streams need no conversion at all.

picamera2 is injected (``picamera2_module=``, ``libcamera_module=``): the real modules
by default, a fake in tests.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import cv2
import numpy as np

from edge_app.errors import CameraUnavailable, SourceError
from edge_app.results import Frame
from edge_app.sources.base import FrameSource

log = logging.getLogger(__name__)

PICAMERA2_HINT = "install it with: sudo apt install python3-picamera2"


def import_picamera2() -> tuple[ModuleType, ModuleType]:
    """The real picamera2 and libcamera modules, or SourceError saying how to get them."""
    try:
        return importlib.import_module("picamera2"), importlib.import_module("libcamera")
    except ImportError as exc:
        raise SourceError(f"picamera2 is not installed ({exc}); {PICAMERA2_HINT}") from exc


def pi_cameras(picamera2_module: ModuleType) -> list[dict]:
    """picamera2's camera list without USB cameras (those go through V4L2 instead)."""
    try:
        cameras = picamera2_module.Picamera2.global_camera_info()
    except Exception as exc:  # libcamera not running, no permission to /dev/media*
        log.debug("picamera2 camera list failed: %s", exc)
        return []
    return [info for info in cameras if "/usb" not in str(info.get("Id", ""))]


def is_pisp(picamera2_module: ModuleType) -> bool:
    """Pi 5 (PiSP) can deliver RGB lores; VC4 (Pi 4 and older) only YUV."""
    platform = getattr(picamera2_module.Picamera2, "platform", None)
    return getattr(platform, "name", "VC4") == "PISP"


def yuv420_to_bgr(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """BGR from picamera2's YUV420 array of shape (height * 3 // 2, stride).

    The Y plane is ``height`` rows of ``stride`` bytes; U then V follow, each
    ``height / 2`` rows of ``stride / 2`` bytes, so a padded row stride is dropped per
    plane, not once for the whole array. picamera2's preview configurations use the
    sYCC colour space (BT.601, full range): OpenCV's YCrCb conversion is that matrix;
    its YUV420 (I420) conversions assume limited range and would stretch contrast.
    """
    stride = yuv.shape[1]
    half_w, half_h, half_stride = width // 2, height // 2, stride // 2
    chroma = yuv[height:].reshape(-1)
    plane = half_h * half_stride
    u = chroma[:plane].reshape(half_h, half_stride)[:, :half_w]
    v = chroma[plane : 2 * plane].reshape(half_h, half_stride)[:, :half_w]
    size = (width, height)
    ycrcb = cv2.merge(
        (
            yuv[:height, :width],
            cv2.resize(v, size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(u, size, interpolation=cv2.INTER_NEAREST),
        )
    )
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


class Picamera2Source(FrameSource):
    """A Pi camera: ``main`` (BGR, display size) and ``lores`` (model size) per frame."""

    live = True

    def __init__(
        self,
        camera: int = 0,
        *,
        size: tuple[int, int] = (640, 480),
        model_size: tuple[int, int] | None = (224, 224),
        fps: float | None = 30.0,
        hflip: bool = False,
        vflip: bool = False,
        buffer_count: int = 4,
        capture_timeout: float = 5.0,
        picamera2_module: ModuleType | None = None,
        libcamera_module: ModuleType | None = None,
    ):
        """``size`` and ``model_size`` are (width, height); ``model_size`` None gives
        no lores stream (the model input is then made from ``main``). A frame not
        delivered within ``capture_timeout`` seconds counts as a failed camera (an
        unplugged ribbon cable makes picamera2 wait forever otherwise)."""
        super().__init__()
        self.camera = camera
        self.size = size
        self.model_size = model_size
        self.fps = fps
        self.hflip = hflip
        self.vflip = vflip
        self.buffer_count = buffer_count
        self.capture_timeout = capture_timeout
        self._picamera2 = picamera2_module
        self._libcamera = libcamera_module
        self._cam = None
        self.lores_format: str | None = None
        self._lores: tuple[int, int] | None = None  # configured (width, height)

    @property
    def description(self) -> str:
        return f"Pi camera {self.camera} (picamera2)"

    def _modules(self) -> tuple[ModuleType, ModuleType]:
        if self._picamera2 is None or self._libcamera is None:
            picamera2, libcamera = import_picamera2()
            self._picamera2 = self._picamera2 or picamera2
            self._libcamera = self._libcamera or libcamera
        return self._picamera2, self._libcamera

    def _open(self) -> None:
        picamera2, libcamera = self._modules()
        cameras = pi_cameras(picamera2)
        if self.camera >= len(cameras):
            found = ", ".join(str(c.get("Model", "?")) for c in cameras) or "none"
            raise CameraUnavailable(
                f"no Pi camera number {self.camera} (Pi cameras found: {found}); "
                "check the ribbon cable and `rpicam-hello --list-cameras`"
            )
        try:
            cam = picamera2.Picamera2(self.camera)
        except (RuntimeError, IndexError, OSError) as exc:
            raise CameraUnavailable(
                f"cannot open {self.description}: {exc} (is another program using it?)"
            ) from exc
        try:
            self._configure(cam, picamera2, libcamera)
            cam.start()
        except Exception as exc:
            cam.close()
            raise SourceError(f"cannot start {self.description}: {exc}") from exc
        self._cam = cam

    def _configure(self, cam, picamera2: ModuleType, libcamera: ModuleType) -> None:
        lores = None
        if self.model_size is not None:
            self.lores_format = "RGB888" if is_pisp(picamera2) else "YUV420"
            lores = {"size": tuple(self.model_size), "format": self.lores_format}
        controls = {"FrameRate": float(self.fps)} if self.fps else {}
        config = cam.create_preview_configuration(
            main={"size": tuple(self.size), "format": "RGB888"},
            lores=lores,
            buffer_count=self.buffer_count,
            controls=controls,
            transform=libcamera.Transform(hflip=int(self.hflip), vflip=int(self.vflip)),
        )
        cam.configure(config)
        if lores is not None:
            stream = cam.stream_configuration("lores")
            self._lores = tuple(stream["size"])
            if self._lores != tuple(self.model_size):
                log.info("camera adjusted lores %s to %s", self.model_size, self._lores)
            log.info(
                "%s: main %s, lores %s %s stride %d",
                self.description,
                self.size,
                self._lores,
                stream["format"],
                stream["stride"],
            )

    def _close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
        finally:
            cam.close()

    def read(self) -> Frame | None:
        assert self._cam is not None, "open() first"
        try:
            request = self._cam.capture_request(wait=self.capture_timeout)
        except Exception as exc:  # TimeoutError, or RuntimeError from libcamera
            raise SourceError(f"{self.description} stopped delivering frames: {exc}") from exc
        try:
            # make_array copies out of the camera buffer, so it can go back at once.
            image = request.make_array("main")
            lores = request.make_array("lores") if self._lores is not None else None
        finally:
            request.release()
        return self._frame(image, self._model_bgr(lores))

    def _model_bgr(self, lores: np.ndarray | None) -> np.ndarray | None:
        if lores is None:
            return None
        if self.lores_format == "YUV420":
            width, height = self._lores
            return yuv420_to_bgr(lores, width, height)
        return lores  # RGB888: already BGR in memory

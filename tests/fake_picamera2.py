"""The project's one fake: picamera2 (and the bit of libcamera it needs) for machines
without a Pi camera.

It follows picamera2's real API and behaviour as read from its source
(raspberrypi/picamera2: picamera2.py, request.py, platform.py, job.py):

- ``Picamera2.global_camera_info()`` lists cameras; ``Picamera2(camera_num)`` opens one
  (IndexError for a missing number, RuntimeError "Camera __init__ sequence did not
  complete." when it cannot be acquired).
- ``create_preview_configuration(main=, lores=, buffer_count=, controls=, transform=)``
  fills defaults (main XBGR8888 640x480, lores YUV420); ``configure`` checks the
  config like the real one (lores no bigger than main; YUV-only lores on VC4) and
  fills each stream's ``stride`` and ``framesize``; ``stream_configuration(name)``.
- ``capture_request(wait=)`` returns a request with ``make_array(name)`` and
  ``release()``; a ``wait`` in seconds raises TimeoutError when no frame comes (the
  real one's concurrent.futures timeout). ``capture_array(name)``; ``stop``; ``close``.
- Arrays are laid out as in request.py ``Helpers.make_array``: RGB888 is B, G, R in
  memory with row padding removed; YUV420 is the raw (height * 3 // 2, stride) array
  with the padding left in: Y rows of ``stride`` bytes, then U and V rows of
  ``stride / 2``. YUV uses the sYCC colour space (BT.601 matrix, full range), the
  preview configuration's default.
- ``Picamera2.platform`` is VC4 (Pi 4: strides aligned to 32 bytes, Y to 64 for
  YUV420) or PISP (Pi 5: 64 bytes).

The frames come from a real photo: the "ISP" resizes it to each stream's size and
applies the transform's flips. ``camera.truth(name)`` gives the exact BGR picture a
stream was made from, and ``camera.last_yuv`` the Y, U, V planes of the last YUV420
frame, so tests can check what reaches the model.
"""

from __future__ import annotations

import threading
import time
from enum import Enum
from types import ModuleType

import cv2
import numpy as np

PI_CAMERA_INFO = {
    "Model": "imx708",
    "Location": 2,
    "Rotation": 180,
    "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
    "Num": 0,
}
PADDING_BYTE = 0xA5  # stride padding is never picture data


class Platform(Enum):
    VC4 = 0
    PISP = 1


class Transform:
    """libcamera.Transform(hflip=, vflip=, transpose=)."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0):
        self.hflip, self.vflip, self.transpose = int(hflip), int(vflip), int(transpose)

    def __repr__(self) -> str:
        return f"<libcamera.Transform hflip={self.hflip} vflip={self.vflip}>"


def bgr_to_ycbcr_full(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-range BT.601 (JPEG/sYCC) Y, Cb, Cr as float64 planes."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return y, cb, cr


def ycbcr_full_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """The inverse (picamera2's YUV2RGB_JPEG matrix), rounded to uint8 RGB."""
    y, cb, cr = (p.astype(np.float64) for p in (y, cb, cr))
    r = y + 1.402 * (cr - 128.0)
    g = y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0)
    b = y + 1.772 * (cb - 128.0)
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _u8(plane: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(plane), 0, 255).astype(np.uint8)


class FakeCameraWorld:
    """The hardware behind the fake: which cameras exist, what they see, and faults."""

    def __init__(self, scene_bgr: np.ndarray, platform: Platform, cameras: list[dict]):
        self.scene = scene_bgr
        self.platform = platform
        self.cameras = cameras
        self.plugged = True
        self.busy = False
        self.opened = 0
        self.closed = 0
        self.frames = 0
        self.open_cameras: list[Picamera2Base] = []
        self.lock = threading.Lock()

    def unplug(self) -> None:
        """The ribbon cable comes out: no camera listed, frames stop."""
        self.plugged = False

    def plug(self) -> None:
        self.plugged = True


class CompletedRequest:
    def __init__(self, camera: Picamera2Base, buffers: dict[str, np.ndarray]):
        self._camera = camera
        self._buffers = buffers
        self.config = {name: dict(camera.camera_config[name]) for name in buffers}
        self.released = False

    def make_buffer(self, name: str) -> np.ndarray:
        if self.released:
            raise RuntimeError("request already released")
        if name not in self._buffers:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self._buffers[name].copy()

    def make_array(self, name: str) -> np.ndarray:
        """As request.py Helpers.make_array."""
        array = self.make_buffer(name)
        config = self.config[name]
        fmt, (w, h), stride = config["format"], config["size"], config["stride"]
        if fmt in ("BGR888", "RGB888"):
            if stride != w * 3:
                array = array.reshape((h, stride))
                array = np.asarray(array[:, : w * 3], order="C")
            return array.reshape((h, w, 3))
        if fmt in ("XBGR8888", "XRGB8888"):
            if stride != w * 4:
                array = array.reshape((h, stride))
                array = np.asarray(array[:, : w * 4], order="C")
            return array.reshape((h, w, 4))
        if fmt in ("YUV420", "YVU420"):
            return array.reshape((h * 3 // 2, stride))
        raise RuntimeError("Format " + fmt + " not supported")

    def release(self) -> None:
        if self.released:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        self.released = True
        self._camera.requests_out -= 1


class Picamera2Base:
    """picamera2.Picamera2 as far as edge-app uses it. Subclassed per fake module so
    each test has its own world and platform."""

    platform = Platform.VC4
    world: FakeCameraWorld

    @classmethod
    def global_camera_info(cls) -> list:
        if not cls.world.plugged:
            return []
        return [dict(info) for info in cls.world.cameras]

    def __init__(self, camera_num: int = 0):
        num = self.global_camera_info()[camera_num]["Num"]  # IndexError like the real one
        if self.world.busy:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_idx = num
        self.is_open = True
        self.started = False
        self.camera_config: dict | None = None
        self.requests_out = 0
        self._next_due: float | None = None
        self.world.opened += 1
        self.world.open_cameras.append(self)

    # -- configuration ---------------------------------------------------------------
    def create_preview_configuration(
        self,
        main={},  # noqa: B006 - the real signature's defaults
        lores=None,
        raw={},  # noqa: B006
        transform=None,
        colour_space=None,
        buffer_count=4,
        controls={},  # noqa: B006
        display="main",
        encode="main",
        queue=True,
        sensor={},  # noqa: B006
        use_case="preview",
    ) -> dict:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main = self._stream({"format": "XBGR8888", "size": (640, 480), "preserve_ar": True}, main)
        if lores is not None:
            lores = self._stream(
                {"format": "YUV420", "size": main["size"], "preserve_ar": False}, lores
            )
        return {
            "use_case": use_case,
            "transform": transform if transform is not None else Transform(),
            "colour_space": colour_space or "sYCC",
            "buffer_count": buffer_count,
            "queue": queue,
            "main": main,
            "lores": lores,
            "raw": None,
            "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (100, 83333)}
            | dict(controls),
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    @staticmethod
    def _stream(defaults: dict, updates: dict) -> dict:
        for key in updates:
            if key not in ("format", "size", "stride", "preserve_ar"):
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are ...")
        stream = defaults | dict(updates)
        w, h = stream["size"]
        stream["size"] = (w - w % 2, h - h % 2)  # align_stream(optimal=False)
        return stream

    def configure(self, camera_config: dict) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        for name in ("main", "lores"):
            stream = config.get(name)
            if stream is None:
                continue
            if not isinstance(stream["size"], tuple) or len(stream["size"]) != 2:
                raise RuntimeError(f"size in {name} stream should be (width, height)")
            if stream["size"][0] % 2 or stream["size"][1] % 2:
                raise RuntimeError("width and height should be even")
            if stream["format"] not in ("RGB888", "BGR888", "XBGR8888", "XRGB8888", "YUV420"):
                raise RuntimeError(f"Bad format {stream['format']} in stream {name}")
        lores = config.get("lores")
        if lores is not None:
            (mw, mh), (lw, lh) = config["main"]["size"], lores["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == Platform.VC4 and lores["format"] != "YUV420":
                raise RuntimeError("lores stream must be YUV")
        for name in ("main", "lores"):
            if config.get(name) is not None:
                self._fill_stride(config[name])
        self.camera_config = config

    def _fill_stride(self, stream: dict) -> None:
        w, h = stream["size"]
        align = 32 if self.platform == Platform.VC4 else 64
        fmt = stream["format"]
        if fmt == "YUV420":
            stream["stride"] = _align(w, align * 2)  # the chroma planes get half of it
            stream["framesize"] = stream["stride"] * h * 3 // 2
        else:
            bpp = 3 if fmt in ("RGB888", "BGR888") else 4
            stream["stride"] = _align(w * bpp, align)
            stream["framesize"] = stream["stride"] * h

    def stream_configuration(self, name: str = "main") -> dict:
        return self.camera_config[name]

    # -- running ---------------------------------------------------------------------
    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self._next_due = time.monotonic()

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.world.closed += 1
        self.world.open_cameras.remove(self)

    def _frame_interval(self) -> float:
        rate = self.camera_config["controls"].get("FrameRate")
        return 1.0 / rate if rate else 1.0 / 30.0

    def capture_request(self, wait=None, signal_function=None, flush=None) -> CompletedRequest:
        if not self.started:
            raise RuntimeError("Camera not started")
        if not self.world.plugged:
            # No frame will ever come: the real job's future times out.
            time.sleep(wait if isinstance(wait, (int, float)) and wait is not True else 0.05)
            raise TimeoutError()
        if self.requests_out >= self.camera_config["buffer_count"]:
            raise RuntimeError("all buffers held by the application: release() requests")
        delay = self._next_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next_due = max(self._next_due + self._frame_interval(), time.monotonic() - 1.0)
        buffers = {
            name: self._buffer(name) for name in ("main", "lores") if self.camera_config.get(name)
        }
        self.requests_out += 1
        with self.world.lock:
            self.world.frames += 1
        return CompletedRequest(self, buffers)

    def capture_array(self, name: str = "main", wait=None, signal_function=None) -> np.ndarray:
        request = self.capture_request(wait=wait)
        try:
            return request.make_array(name)
        finally:
            request.release()

    # -- the "ISP" -------------------------------------------------------------------
    def truth(self, name: str) -> np.ndarray:
        """The BGR picture the named stream is made from (scene resized and flipped)."""
        stream = self.camera_config[name]
        picture = cv2.resize(self.world.scene, stream["size"], interpolation=cv2.INTER_AREA)
        transform = self.camera_config["transform"]
        if transform.hflip:
            picture = picture[:, ::-1]
        if transform.vflip:
            picture = picture[::-1]
        return np.ascontiguousarray(picture)

    def _buffer(self, name: str) -> np.ndarray:
        stream = self.camera_config[name]
        (w, h), stride, fmt = stream["size"], stream["stride"], stream["format"]
        bgr = self.truth(name)
        if fmt == "YUV420":
            return self._yuv420_buffer(bgr, w, h, stride)
        if fmt == "RGB888":  # B, G, R in memory
            pixels = bgr
        elif fmt == "BGR888":
            pixels = bgr[..., ::-1]
        elif fmt == "XBGR8888":  # R, G, B, X in memory
            pixels = np.dstack([bgr[..., ::-1], np.full((h, w), 255, np.uint8)])
        else:  # XRGB8888: B, G, R, X
            pixels = np.dstack([bgr, np.full((h, w), 255, np.uint8)])
        rows = np.full((h, stride), PADDING_BYTE, np.uint8)
        rows[:, : pixels.shape[1] * pixels.shape[2]] = pixels.reshape(h, -1)
        return rows.reshape(-1)

    def _yuv420_buffer(self, bgr: np.ndarray, w: int, h: int, stride: int) -> np.ndarray:
        y, cb, cr = bgr_to_ycbcr_full(bgr)
        # 2x2 chroma averages, as an ISP's downscaler makes them
        cb = cb.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        cr = cr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        y8, u8, v8 = _u8(y), _u8(cb), _u8(cr)
        self.last_yuv = (y8, u8, v8)
        half = stride // 2
        y_plane = np.full((h, stride), PADDING_BYTE, np.uint8)
        y_plane[:, :w] = y8
        u_plane = np.full((h // 2, half), PADDING_BYTE, np.uint8)
        u_plane[:, : w // 2] = u8
        v_plane = np.full((h // 2, half), PADDING_BYTE, np.uint8)
        v_plane[:, : w // 2] = v8
        return np.concatenate([y_plane.reshape(-1), u_plane.reshape(-1), v_plane.reshape(-1)])


def make_fake_picamera2(
    scene_bgr: np.ndarray,
    *,
    pi: int = 4,
    cameras: list[dict] | None = None,
) -> tuple[ModuleType, ModuleType, FakeCameraWorld]:
    """(picamera2 module, libcamera module, world) for a Pi 4 (VC4) or Pi 5 (PiSP)."""
    platform = Platform.PISP if pi >= 5 else Platform.VC4
    world = FakeCameraWorld(
        scene_bgr, platform, cameras if cameras is not None else [PI_CAMERA_INFO]
    )
    camera_class = type("Picamera2", (Picamera2Base,), {"platform": platform, "world": world})
    picamera2 = ModuleType("picamera2")
    picamera2.Picamera2 = camera_class
    libcamera = ModuleType("libcamera")
    libcamera.Transform = Transform
    return picamera2, libcamera, world

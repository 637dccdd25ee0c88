"""Clip parts: the codec the platform's OpenCV can write, the pre-roll ring and the writer.

``probe_codec`` tries once per process H.264 in MP4 (browsers play it; a Pi's OpenCV may
have it, pip wheels do not), else Motion JPEG in AVI (OpenCV's own writer, always there,
about 6 ms a 640x480 frame; browsers do not play AVI, so the web view shows such a clip
as the JPEG stream its frames already are, see ``iter_clip_jpegs``). VP8 in WebM also
plays in browsers but costs some 100 ms of CPU a frame through OpenCV (no way to ask
libvpx for its real-time mode there), so only ``codec = "vp8"`` picks it. The probe
writes and reads back a tiny clip: a fourcc OpenCV accepts is not always one it encodes.

``FrameRing`` keeps the last ``seconds`` of frames, at most ``fps`` a second, bounded by
frame count and bytes: raw (downscaled) pictures when the budget holds them, else JPEGs,
so a Pi Zero's pre-roll stays within a few megabytes.

``ClipWriter`` lays frames on a fixed time grid of ``fps`` from ``start``: a grid point
shows the newest frame captured at or before it, so a still scene (a motion gate skipping
frames) or a slow inference rate gives a clip of true length. It writes to a temporary
name; ``finish`` returns that file for the store to rename into place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp."  # in every temporary media name: swept on start


@dataclass(frozen=True)
class Codec:
    name: str  # h264, vp8 or mjpeg
    fourcc: str
    ext: str  # the clip file's extension
    mime: str
    playable: bool  # plays in a browser's <video>


CODECS = {
    "h264": Codec("h264", "avc1", "mp4", "video/mp4", True),
    "vp8": Codec("vp8", "VP80", "webm", "video/webm", True),
    "mjpeg": Codec("mjpeg", "MJPG", "avi", "video/x-msvideo", False),
}
_probed: dict[str, bool] = {}
_probe_lock = threading.Lock()


def _works(codec: Codec) -> bool:
    if codec.name == "mjpeg":
        return True  # written here (AviMjpegWriter)
    with _probe_lock:
        if codec.name not in _probed:
            _probed[codec.name] = _try_codec(codec)
        return _probed[codec.name]


@contextlib.contextmanager
def _native_stderr_silenced():
    """FFmpeg and OpenCV print their own lines (``[h264_v4l2m2m @ 0x..] can't configure
    encoder``) straight to file descriptor 2 when a codec is missing; a probe that expects
    some codecs to be missing should not fill the journal with them. The probe takes
    milliseconds at start-up, so nothing else is lost meanwhile."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _try_codec(codec: Codec) -> bool:
    with _native_stderr_silenced(), tempfile.TemporaryDirectory(prefix="edge-app-codec-") as folder:
        path = os.path.join(folder, f"probe.{codec.ext}")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec.fourcc), 10.0, (64, 48))
        try:
            if not writer.isOpened():
                return False
            for value in (0, 128, 255):
                writer.write(np.full((48, 64, 3), value, np.uint8))
        finally:
            writer.release()
        cap = cv2.VideoCapture(path)
        try:
            frames = 0
            while cap.read()[0]:
                frames += 1
        finally:
            cap.release()
        return frames == 3


def probe_codec(preference: str = "auto") -> Codec:
    """The codec to write clips with: ``preference`` if it works, else the best that does."""
    order = ["h264", "mjpeg"]
    if preference != "auto":
        order = [preference, *(name for name in order if name != preference)]
    for name in order:
        if _works(CODECS[name]):
            if preference not in ("auto", name):
                log.warning("events: codec %s is not available here; using %s", preference, name)
            return CODECS[name]
    return CODECS["mjpeg"]  # OpenCV always has its own Motion JPEG writer


def clip_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(w, h) no wider than ``max_width``, aspect kept, both even (encoders want that)."""
    if width > max_width:
        height = round(height * max_width / width)
        width = max_width
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class JpegCache:
    """Each picture encoded once: the pre-roll ring and every clip being written at the
    time share the bytes (looked up by the array's identity, held by weak reference)."""

    def __init__(self, quality: int = 80, size: int = 64):
        self.quality = quality
        self.size = size
        self._items: dict[int, tuple[weakref.ref, bytes]] = {}
        self.encoded = 0

    def get(self, image: np.ndarray) -> bytes | None:
        item = self._items.get(id(image))
        if item is not None and item[0]() is image:
            return item[1]
        return None

    def put(self, image: np.ndarray, data: bytes) -> None:
        if len(self._items) >= self.size:
            for key in list(self._items)[: self.size // 4]:  # the oldest quarter
                del self._items[key]
        self._items[id(image)] = (weakref.ref(image), data)

    def encode(self, image: np.ndarray) -> bytes:
        data = self.get(image)
        if data is None:
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise OSError("JPEG encoding failed")
            data = buffer.tobytes()
            self.encoded += 1
            self.put(image, data)
        return data


class FrameRing:
    """The last ``seconds`` of frames, at most ``fps`` a second, within ``max_bytes``."""

    def __init__(
        self,
        seconds: float,
        fps: float,
        size: tuple[int, int],
        max_bytes: int,
        quality: int = 85,
        cache: JpegCache | None = None,
    ):
        self.cache = cache or JpegCache(quality)
        self.seconds = seconds
        self.interval = 1.0 / fps
        self.size = size
        self.max_bytes = max_bytes
        self.quality = quality
        self.capacity = max(1, math.ceil(seconds * fps) + 1)
        raw_bytes = size[0] * size[1] * 3
        self.compressed = self.capacity * raw_bytes > max_bytes  # JPEGs only when needed
        self._items: deque[tuple[float, object, int]] = deque()
        self.bytes = 0
        self._last_t = -math.inf

    def add(self, t: float, image: np.ndarray) -> bool:
        """Keep ``image`` (already at ``size``) seen at ``t``; False when it came too soon."""
        if t - self._last_t < self.interval * 0.9:
            return False
        self._last_t = t
        if self.compressed:
            try:
                payload = self.cache.encode(image)  # a clip being written reuses it
            except OSError:
                return False
            size = len(payload)
        else:
            payload, size = image.copy(), image.nbytes  # a source may reuse its buffer
        self._items.append((t, payload, size))
        self.bytes += size
        # One frame at or before the window's start is kept: it is what the picture showed
        # then (a motion gate may have skipped everything since).
        while len(self._items) > 1 and (
            len(self._items) > self.capacity
            or self.bytes > self.max_bytes
            or self._items[1][0] <= t - self.seconds
        ):
            self.bytes -= self._items.popleft()[2]
        return True

    def since(self, t0: float) -> list[tuple[float, np.ndarray]]:
        """The kept frames from ``t0`` on, oldest first, as pictures, led by the newest one
        before ``t0`` (the picture at ``t0``)."""
        items = list(self._items)
        first = 0
        for i, (t, _, _) in enumerate(items):
            if t <= t0:
                first = i
        out = []
        for t, payload, _ in items[first:]:
            if self.compressed:
                image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
                if image is None:
                    continue
                self.cache.put(image, payload)  # written to a clip as these same bytes
            else:
                image = payload
            out.append((t, image))
        return out

    def __len__(self) -> int:
        return len(self._items)


class AviMjpegWriter:
    """Motion JPEG in AVI, written here: libjpeg-turbo's JPEGs (``cv2.imencode``, about
    1.5 ms a 640x480 frame) instead of OpenCV's own AVI encoder (about 5 ms), and a frame
    repeated on the time grid is the same bytes again, not a new encoding. The layout is
    plain AVI 1.0 (``hdrl``, ``movi`` with ``00dc`` chunks, ``idx1``); the sizes are
    filled in by ``release``, so only a finished file is complete, as with OpenCV's."""

    HEADER = 224  # RIFF + hdrl (avih, strl: strh, strf) + the movi LIST header

    def __init__(
        self, path: Path, fps: float, size: tuple[int, int], cache: JpegCache | None = None
    ):
        self.fps = fps
        self.size = size
        self.cache = cache or JpegCache()
        self._file = open(path, "wb")  # noqa: SIM115 - closed by release()
        self._file.write(bytes(self.HEADER))
        self._index: list[tuple[int, int]] = []
        self._last_image: np.ndarray | None = None
        self._last_jpeg = b""
        self._biggest = 0

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoWriter's name
        return not self._file.closed

    def write(self, image: np.ndarray) -> None:
        if image is not self._last_image:
            self._last_image, self._last_jpeg = image, self.cache.encode(image)
        data = self._last_jpeg
        offset = self._file.tell() - (self.HEADER - 4)  # from the 'movi' fourcc
        self._file.write(b"00dc" + struct.pack("<I", len(data)) + data)
        if len(data) & 1:
            self._file.write(b"\0")
        self._index.append((offset, len(data)))
        self._biggest = max(self._biggest, len(data))

    def release(self) -> None:
        if self._file.closed:
            return
        f = self._file
        movi_end = f.tell()
        f.write(b"idx1" + struct.pack("<I", 16 * len(self._index)))
        f.write(b"".join(struct.pack("<4sIII", b"00dc", 0x10, o, n) for o, n in self._index))
        riff_end = f.tell()
        width, height = self.size
        frames = len(self._index)
        rate = round(self.fps * 1000)
        avih = struct.pack(
            "<IIIIIIIIII16x",
            round(1e6 / self.fps), self._biggest * int(self.fps + 1), 0, 0x10, frames, 0, 1,
            self._biggest, width, height,
        )  # fmt: skip
        strh = struct.pack(
            "<4s4sIHHIIIIIIIIhhhh",
            b"vids", b"MJPG", 0, 0, 0, 0, 1000, rate, 0, frames, self._biggest, 0xFFFFFFFF, 0,
            0, 0, width, height,
        )  # fmt: skip
        strf = struct.pack(
            "<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0
        )
        strl = b"strl" + b"strh" + struct.pack("<I", 56) + strh
        strl += b"strf" + struct.pack("<I", 40) + strf
        hdrl = b"hdrl" + b"avih" + struct.pack("<I", 56) + avih
        hdrl += b"LIST" + struct.pack("<I", len(strl)) + strl
        header = b"RIFF" + struct.pack("<I", riff_end - 8) + b"AVI "
        header += b"LIST" + struct.pack("<I", len(hdrl)) + hdrl
        header += b"LIST" + struct.pack("<I", movi_end - self.HEADER + 4) + b"movi"
        assert len(header) == self.HEADER, len(header)
        f.seek(0)
        f.write(header)
        f.close()


class ClipWriter:
    """One clip under a temporary name in ``folder``; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        codec: Codec,
        fps: float,
        size: tuple[int, int],
        start: float,
        max_s: float,
        cache: JpegCache | None = None,
    ):
        self.codec = codec
        self.fps = fps
        self.size = size
        self.start = start
        self.max_frames = max(1, int(max_s * fps))
        self.path = folder / f"clip{TEMP_MARK}{codec.ext}"
        self.frames = 0
        self.last_t = -math.inf
        self._next_t = start
        self._previous: np.ndarray | None = None
        if codec.name == "mjpeg":
            self._writer = AviMjpegWriter(self.path, fps, size, cache)
        else:
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*codec.fourcc), fps, size
            )
        if not self._writer.isOpened():
            self._writer.release()
            raise OSError(f"cannot write a {codec.name} clip at {self.path}")

    def add(self, t: float, image: np.ndarray) -> None:
        """A frame captured at ``t`` (frames at or before the last one are ignored)."""
        if t <= self.last_t:
            return
        self.last_t = t
        image = fit(image, self.size)
        if t <= self.start:
            self._previous = image  # the picture at the clip's start
            return
        fill = self._previous if self._previous is not None else image
        while self._next_t < t and self.frames < self.max_frames:
            self._write(fill)
        self._previous = image

    def _write(self, image: np.ndarray) -> None:
        self._writer.write(image)
        self.frames += 1
        self._next_t = self.start + self.frames / self.fps

    def finish(self, end: float) -> Path:
        """Fill the grid up to ``end`` with the newest frame, close the file, return it."""
        if self._previous is not None:
            while self._next_t <= end and self.frames < self.max_frames:
                self._write(self._previous)
        self._writer.release()
        return self.path

    def abort(self) -> None:
        self._writer.release()
        self.path.unlink(missing_ok=True)


def _avi_jpegs(path: Path) -> Iterator[bytes]:
    """The JPEG frames of a Motion JPEG AVI as stored (RIFF ``movi`` chunks ``##dc``):
    no decoding, no encoding."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError("not an AVI file")

    def walk(start: int, end: int) -> Iterator[bytes]:
        at = start
        while at + 8 <= end:
            kind = data[at : at + 4]
            size = int.from_bytes(data[at + 4 : at + 8], "little")
            body = at + 8
            if kind in (b"RIFF", b"LIST"):
                yield from walk(body + 4, min(end, body + size))
            elif kind[2:] == b"dc" and data[body : body + 2] == b"\xff\xd8":
                yield data[body : body + size]
            at = body + size + (size & 1)

    yield from walk(12, len(data))


def iter_clip_jpegs(path: Path, quality: int = 80) -> Iterator[bytes]:
    """The frames of a clip as JPEGs (for browsers that cannot play the file itself):
    a Motion JPEG AVI's own frames, else decoded and encoded again."""
    if path.suffix == ".avi":
        try:
            frames = list(_avi_jpegs(path))
        except (OSError, ValueError):
            frames = []
        if frames:
            yield from frames
            return
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                yield buffer.tobytes()
    finally:
        cap.release()


def clip_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return fps if 0 < fps <= 240 else 10.0

"""Decoding still images for the model: safely, fast, and with one-line errors.

Pillow reads only the header (format, size, EXIF orientation) so absurd sizes are
refused before any pixel is decoded; OpenCV then decodes, using libjpeg's DCT scaling
(1/2, 1/4, 1/8) whenever the reduced image still covers the model's input after the
crop, which makes large JPEGs several times cheaper. Every failure is an InputError.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_app.errors import InputError
from edge_app.inference.preprocess import crop_covers

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: above any phone or Pi HQ camera photo
MAX_FILE_BYTES = 200 * 1024 * 1024
JPEG_SOI = b"\xff\xd8"  # every JPEG starts with the start-of-image marker
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"

_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
# EXIF orientation -> operations that bring the picture upright
_ORIENT = {
    2: (None, 1),  # mirror horizontally
    3: (cv2.ROTATE_180, None),
    4: (None, 0),  # mirror vertically
    5: (cv2.ROTATE_90_COUNTERCLOCKWISE, 1),  # transpose
    6: (cv2.ROTATE_90_CLOCKWISE, None),
    7: (cv2.ROTATE_90_CLOCKWISE, 1),  # transverse
    8: (cv2.ROTATE_90_COUNTERCLOCKWISE, None),
}


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # BGR uint8, upright
    width: int  # full-resolution size, upright
    height: int
    format: str
    reduction: int  # 1 = full decode, else the DCT scale denominator


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or an InputError saying plainly why not."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError("symlink loop") from exc
        if exc.errno == errno.ENOENT:
            if os.path.islink(path):
                raise InputError("broken symlink (target does not exist)") from exc
            raise InputError("file not found") from exc
        if exc.errno == errno.EACCES:
            raise InputError("permission denied") from exc
        raise InputError(f"cannot open: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError("is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError("not a regular file (device, pipe or socket)")
    if info.st_size == 0:
        raise InputError("empty file (0 bytes)")
    if info.st_size > MAX_FILE_BYTES:
        raise InputError(f"file too large ({info.st_size / 1e6:.0f} MB)")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except PermissionError as exc:
        raise InputError("permission denied") from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from exc


def probe(data: bytes) -> tuple[str, int, int, int]:
    """(format, width, height, EXIF orientation) from the header alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # we apply our own limit with a clearer message
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or "unknown"
                width, height = img.size
                try:
                    # getexif() costs ~0.3 ms; most photos without an EXIF block skip it
                    has_exif = "exif" in img.info or fmt not in ("JPEG", "PNG", "WEBP")
                    orientation = int(img.getexif().get(0x0112, 1) or 1) if has_exif else 1
                except Exception:  # noqa: BLE001 - a bad EXIF block must not lose the photo
                    orientation = 1
        except UnidentifiedImageError as exc:
            raise InputError("not an image (unrecognised or unsupported format)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"corrupt image header: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    return fmt, width, height, orientation


def _jpeg_truncated(data: bytes) -> bool:
    # A complete JPEG ends with the EOI marker; allow trailing padding/garbage after it.
    return b"\xff\xd9" not in data[-4096:]


def choose_reduction(width: int, height: int, size: tuple[int, int] | None, crop: str) -> int:
    """Largest DCT scale (8, 4, 2) whose image still covers the model input after crop."""
    if size is None:
        return 1
    for factor in (8, 4, 2):
        # libjpeg rounds scaled dimensions up; floor here to stay on the safe side.
        if crop_covers(height // factor, width // factor, crop, size):
            return factor
    return 1


def decode_image(
    path: Path | str,
    *,
    model_size: tuple[int, int] | None = None,
    crop: str = "central",
    reduced: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """Decode ``path`` to an upright BGR uint8 image.

    With ``model_size`` and ``reduced``, JPEGs are decoded at the smallest DCT scale that
    still covers the model's input after ``crop``.
    """
    data = read_bytes(Path(path))
    if data[:2] == JPEG_SOI and _jpeg_truncated(data):
        # Before the header probe: a file cut inside its header (EXIF) would otherwise
        # surface as Pillow's "Truncated File Read".
        raise InputError(TRUNCATED_JPEG)
    fmt, width, height, orientation = probe(data)
    if width * height > max_pixels:
        raise InputError(
            f"image too large: {width}x{height} ({width * height / 1e6:.0f} MP; "
            f"limit {max_pixels / 1e6:.0f} MP)"
        )
    if fmt == "JPEG" and _jpeg_truncated(data):
        raise InputError(TRUNCATED_JPEG)
    factor = choose_reduction(width, height, model_size, crop) if fmt == "JPEG" and reduced else 1
    flags = _REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None and fmt in ("PNG", "TIFF", "WEBP", "BMP", "JPEG", "MPO", "GIF"):
        image = _decode_with_pillow(data)
    if image is None or image.size == 0:
        raise InputError(f"cannot decode {fmt} image: corrupt or truncated data")
    image = _apply_orientation(image, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Decoded(image, width, height, fmt, factor)


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Fallback for variants OpenCV's codecs refuse (e.g. some TIFF compressions)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - any decoder failure is reported by the caller
        return None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    rotate, flip = _ORIENT.get(orientation, (None, None))
    if flip is not None:
        image = cv2.flip(image, flip)
    if rotate is not None:
        image = cv2.rotate(image, rotate)
    return image

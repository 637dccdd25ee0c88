"""The one preprocessing path for every mode (stills, video, camera).

BGR frame -> crop (central 87.5 %, square, or none) -> resize with OpenCV -> RGB -> the
model's input dtype, written straight into the interpreter's input buffer: no float
round trip for quantized models and no intermediate arrays beyond the resize itself.

Big frames are first area-averaged by a power of two (as libjpeg's 1/2, 1/4, 1/8 DCT
scaling does, on the same block grid), then resized bilinearly for the rest: a photo
decoded reduced and decoded in full reach the model as nearly the same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_app.errors import ConfigError
from edge_app.settings import CROP_CHOICES

__all__ = ["CROP_CHOICES", "Preprocessor", "crop_box", "crop_covers"]
CENTRAL_FRACTION = 0.875  # the standard ImageNet evaluation crop


def crop_box(
    height: int, width: int, policy: str, target_aspect: float = 1.0
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the region the model sees.

    ``target_aspect`` is the model's width/height; the crop keeps it so nothing is
    stretched. ``central`` is 87.5 % of the largest centred box of that aspect.
    """
    if policy == "none":
        return 0, 0, height, width
    if policy not in CROP_CHOICES:
        raise ConfigError(f"unknown crop {policy!r}; choose one of {', '.join(CROP_CHOICES)}")
    if width / height > target_aspect:
        box_h, box_w = height, height * target_aspect
    else:
        box_h, box_w = width / target_aspect, width
    if policy == "central":
        box_h, box_w = box_h * CENTRAL_FRACTION, box_w * CENTRAL_FRACTION
    crop_h = max(1, int(round(box_h)))
    crop_w = max(1, int(round(box_w)))
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return top, left, crop_h, crop_w


def crop_covers(height: int, width: int, policy: str, size: tuple[int, int]) -> bool:
    """True when the crop of an image this big still has at least the model's pixels."""
    model_h, model_w = size
    _, _, crop_h, crop_w = crop_box(height, width, policy, model_w / model_h)
    return crop_h >= model_h and crop_w >= model_w


class Preprocessor:
    """Writes a BGR frame into a model input buffer of shape (H, W, 3)."""

    def __init__(
        self,
        size: tuple[int, int],
        dtype,
        crop: str = "central",
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
    ):
        if crop not in CROP_CHOICES:
            raise ConfigError(f"unknown crop {crop!r}; choose one of {', '.join(CROP_CHOICES)}")
        self.height, self.width = size
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.uint8, np.int8, np.float32):
            raise ConfigError(f"unsupported model input type {self.dtype.name}")
        self.crop = crop
        self._mean = np.asarray(mean, np.float32)
        self._inv_std = (1.0 / np.asarray(std, np.float32)).astype(np.float32)
        self._buffers: dict[str, np.ndarray] = {}
        self._rgb_scratch = (
            np.empty((self.height, self.width, 3), np.uint8) if self.dtype == np.float32 else None
        )

    def _region(self, frame: np.ndarray, crop: str | None) -> tuple[np.ndarray, int]:
        """(cropped view, area factor): the factor is the power of two (1, 2, 4, 8...)
        the region is first averaged down by, as libjpeg's DCT scaling would."""
        h, w = frame.shape[:2]
        policy = crop or self.crop
        aspect = self.width / self.height
        top, left, ch, cw = crop_box(h, w, policy, aspect)
        factor = min(ch // self.height, cw // self.width)
        if factor < 2:
            return frame[top : top + ch, left : left + cw], 1
        factor = 1 << (factor.bit_length() - 1)
        # The box as it falls on the 1/factor picture (libjpeg rounds sizes up), in
        # whole blocks: a photo decoded reduced and the same photo decoded in full
        # then reach the model as the same pixels, so both give the same answer.
        rtop, rleft, rch, rcw = crop_box(-(-h // factor), -(-w // factor), policy, aspect)
        top, left = rtop * factor, rleft * factor
        ch = min(rch, (h - top) // factor) * factor
        cw = min(rcw, (w - left) // factor) * factor
        return frame[top : top + ch, left : left + cw], factor

    def __call__(self, frame: np.ndarray, out: np.ndarray, crop: str | None = None) -> None:
        """Fill ``out`` (H, W, 3) of the model's dtype from the BGR ``frame``."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a BGR uint8 frame (H, W, 3), got {frame.shape} {frame.dtype}"
            )
        region, factor = self._region(frame, crop)
        rh, rw = region.shape[:2]
        shrinking = rh >= self.height and rw >= self.width
        # INTER_LINEAR_EXACT: bit-identical on x86 and ARM (plain INTER_LINEAR rounds differently)
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR_EXACT
        if self.dtype == np.float32:
            rgb = self._rgb_scratch
            self._resize_rgb(region, rgb, interpolation, factor)
            # (pixel - mean) / std straight into the float input buffer
            np.subtract(rgb, self._mean, out=out, casting="unsafe")
            np.multiply(out, self._inv_std, out=out)
            return
        # uint8 and int8: same bytes; int8 is pixel - 128, i.e. the top bit flipped.
        target = out if self.dtype == np.uint8 else out.view(np.uint8)
        self._resize_rgb(region, target, interpolation, factor)
        if self.dtype == np.int8:
            np.bitwise_xor(target, 0x80, out=target)

    def _resize_rgb(
        self, region: np.ndarray, dst: np.ndarray, interpolation: int, factor: int
    ) -> None:
        height, width = self.height, self.width
        rh, rw = region.shape[:2]
        if (rh, rw) == (height, width):
            cv2.cvtColor(region, cv2.COLOR_BGR2RGB, dst=dst)
            return
        if interpolation == cv2.INTER_AREA and factor >= 2:
            # Area averaging by a whole factor takes OpenCV's fast path (a general
            # area resize costs ~10x more).
            small = (rw // factor, rh // factor)
            if small == (width, height):
                cv2.resize(region, small, dst=dst, interpolation=cv2.INTER_AREA)
                # Channels are swapped in place on the model-sized image.
                cv2.cvtColor(dst, cv2.COLOR_BGR2RGB, dst=dst)
                return
            region = cv2.resize(region, small, interpolation=cv2.INTER_AREA)
        # The last step (under 2x) is bilinear, as in the reference preprocessing, and
        # made on four channels: OpenCV's bit-exact resize is vectorised for four
        # channels, not three (3x faster, same bytes); BGR->RGBA swaps the channels.
        rgba = cv2.cvtColor(region, cv2.COLOR_BGR2RGBA, dst=self._scratch("in", region))
        resized = cv2.resize(
            rgba, (width, height), dst=self._scratch("out"), interpolation=cv2.INTER_LINEAR_EXACT
        )
        cv2.cvtColor(resized, cv2.COLOR_RGBA2RGB, dst=dst)

    def _scratch(self, name: str, like: np.ndarray | None = None) -> np.ndarray:
        """A reused four-channel buffer (frames of a stream share one size)."""
        shape = (*like.shape[:2], 4) if like is not None else (self.height, self.width, 4)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = self._buffers[name] = np.empty(shape, np.uint8)
        return buffer

    def to_model_array(self, frame: np.ndarray, crop: str | None = None) -> np.ndarray:
        """A fresh (H, W, 3) array of the model's dtype, for tests and tools."""
        out = np.empty((self.height, self.width, 3), self.dtype)
        self(frame, out, crop)
        return out

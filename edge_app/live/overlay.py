"""The live overlay: top-k labels with scores and bars, rates and the model name.

Drawn in place on the display frame (never the model input) in two darkened,
see-through panels kept to the corners: the predictions top left (only as tall as the
lines shown), rates and model name bottom left; the centre, where the subject is, stays
clear. A thin outline shows the region the model sees (its crop; ``show_crop``, the
``c`` key in the window). Sizes scale with the frame so the text reads the same from
640x480 to 1920x1080; the layout is computed once per frame size and cached, so a frame
costs a few ``cv2.putText`` calls on small regions (well under a millisecond at 640x480).

Predictions follow the human rule of :func:`edge_app.results.human_top`: no
``background``, nothing under 1 %, and "uncertain" when nothing is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.inference.preprocess import crop_box
from edge_app.results import UNCERTAIN, LiveResult, human_top

FONT = cv2.FONT_HERSHEY_SIMPLEX
BASE_HEIGHT = 480  # the frame height the base sizes below are for
BASE_SCALE = 0.55  # cv2 font scale at 480 rows: capital letters about 12 px tall
TOP_COLOUR = (80, 255, 80)  # BGR: the leading label stands out
TEXT_COLOUR = (255, 255, 255)
INFO_COLOUR = (200, 220, 255)
BAR_COLOUR = (60, 180, 255)
BAR_TRACK = (90, 90, 90)
CROP_COLOUR = (200, 200, 200)  # the model's region: visible, not loud
LABEL_CHARS = 16  # the panel is sized for labels this long; longer ones are cut
RATES_SAMPLE = "99.9 FPS  invoke 99.9 ms  cam 30 FPS"  # the info panel's width


def short_label(label: str) -> str:
    """The first synonym of an ImageNet label line ("tabby, tabby cat" -> "tabby")."""
    return label.split(",", 1)[0].strip()


@dataclass(frozen=True)
class Layout:
    """Where everything goes for one frame size; see ``Overlay.layout``."""

    scale: float
    thickness: int
    strokes: int  # 1 px strokes drawn side by side per character line
    box: tuple[int, int, int, int]  # x0, y0, x1, y1: the predictions panel, all k lines
    info_box: tuple[int, int, int, int]  # the rates and model panel, bottom left
    line_height: int
    text_x: int  # labels start here (after the bar)
    bar_x: int
    bar_width: int
    bar_height: int
    baselines: tuple[int, ...]  # one per line: k predictions, then the info lines
    pad: int
    text_width: int  # pixels available for a label
    info_width: int  # pixels available for an info line
    crop: tuple[int, int, int, int] | None  # x0, y0, x1, y1 the model sees; None: all
    crop_thickness: int

    def panel(self, lines: int) -> tuple[int, int, int, int]:
        """The predictions panel when it holds ``lines`` lines."""
        x0, y0, x1, y1 = self.box
        bottom = self.baselines[max(1, lines) - 1] + self.pad
        return x0, y0, x1, min(y1, bottom)


class Overlay:
    """Draws results on display frames; one instance per display (it caches layouts)."""

    INFO_LINES = 2  # rates; model name

    def __init__(
        self,
        model_name: str = "",
        top_k: int = 5,
        *,
        crop: str = "central",
        model_size: tuple[int, int] = (224, 224),
        show_crop: bool = True,
    ):
        """``crop`` and ``model_size`` (height, width) place the crop outline."""
        self.model_name = model_name
        self.top_k = max(1, top_k)
        self.crop = crop
        self.model_size = model_size
        self.show_crop = show_crop
        self._layouts: dict[tuple[int, int], Layout] = {}
        self._fitted: dict[tuple[str, float, int, int], str] = {}

    def layout(self, height: int, width: int) -> Layout:
        key = (height, width)
        cached = self._layouts.get(key)
        if cached is None:
            cached = self._layouts[key] = self._make_layout(height, width)
        return cached

    def _make_layout(self, height: int, width: int) -> Layout:
        unit = max(min(height / BASE_HEIGHT, width / 640), 0.5)
        scale = BASE_SCALE * unit
        # Strokes thicker than 1 px cost cv2.putText ten times more with anti-aliasing, so
        # big frames get bold text from 1 px strokes drawn side by side instead.
        thickness = 1
        strokes = max(1, round(unit))
        (_, cap_h), _ = cv2.getTextSize("M", FONT, scale, thickness)
        line_height = int(round(cap_h * 1.8))
        pad = int(round(8 * unit))
        margin = int(round(10 * unit))
        bar_width = int(round(40 * unit))
        bar_height = max(3, int(round(cap_h * 0.8)))
        (sample_w, _), _ = cv2.getTextSize("100% " + "n" * LABEL_CHARS, FONT, scale, thickness)
        sample_w += strokes - 1
        x0, y0 = margin, margin
        x1 = min(width - margin, x0 + pad + bar_width + pad + sample_w + pad)
        y1 = min(height - margin, y0 + pad + self.top_k * line_height + pad // 2)
        first = y0 + pad + cap_h + (line_height - cap_h) // 2
        baselines = [first + i * line_height for i in range(self.top_k)]
        # The info panel sits in the bottom-left corner, as wide as its rates line.
        (info_w, _), _ = cv2.getTextSize(RATES_SAMPLE, FONT, scale, thickness)
        ix1 = min(width - margin, max(x1, x0 + pad + info_w + strokes - 1 + pad))
        iy1 = height - margin
        iy0 = max(y1, iy1 - (pad + self.INFO_LINES * line_height + pad // 2))
        info_first = iy0 + pad + cap_h + (line_height - cap_h) // 2
        baselines += [info_first + j * line_height for j in range(self.INFO_LINES)]
        bar_x = x0 + pad
        text_x = bar_x + bar_width + pad
        crop = None
        if self.crop != "none":
            model_h, model_w = self.model_size
            top, left, crop_h, crop_w = crop_box(height, width, self.crop, model_w / model_h)
            crop = (left, top, left + crop_w - 1, top + crop_h - 1)
        return Layout(
            scale=scale,
            thickness=thickness,
            strokes=strokes,
            box=(x0, y0, x1, y1),
            info_box=(x0, iy0, ix1, iy1),
            line_height=line_height,
            text_x=text_x,
            bar_x=bar_x,
            bar_width=bar_width,
            bar_height=bar_height,
            baselines=tuple(baselines),
            pad=pad,
            text_width=max(0, x1 - pad - text_x),
            info_width=max(0, ix1 - pad - bar_x),
            crop=crop,
            crop_thickness=max(1, int(unit)),
        )

    def prediction_text(self, score: float, label: str) -> str:
        return f"{score * 100:3.0f}% {short_label(label)}"

    def shown_predictions(self, result: LiveResult | None) -> list:
        """The predictions drawn for ``result``: the human rule, at most top_k of them."""
        return human_top(result.top)[: self.top_k] if result is not None else []

    def prediction_lines(self, result: LiveResult | None) -> list[str]:
        """The texts of the prediction lines, as drawn (before fitting to the panel)."""
        top = self.shown_predictions(result)
        if result is not None and not top:
            return [UNCERTAIN]
        return [self.prediction_text(p.score, p.label) for p in top]

    def info_lines(self, result: LiveResult | None, paused: bool = False) -> list[str]:
        if result is None:
            rates = "waiting for the first result"
        else:
            rates = (
                f"{result.fps:.1f} FPS  invoke {result.inference_ms:.1f} ms  "
                f"cam {result.camera_fps:.0f} FPS"
            )
        name = self.model_name + ("  [paused]" if paused else "")
        return [rates, name]

    def _fit(self, text: str, layout: Layout, width: int) -> str:
        """``text`` cut (ending in ~) to ``width`` pixels (cached per text and size)."""
        key = (text, layout.scale, layout.thickness, width)
        fitted = self._fitted.get(key)
        if fitted is None:
            fitted = text
            while fitted and (
                cv2.getTextSize(fitted, FONT, layout.scale, layout.thickness)[0][0]
                + layout.strokes
                - 1
                > width
            ):
                fitted = fitted[:-2] + "~" if len(fitted) > 2 else ""
            if len(self._fitted) > 4096:
                self._fitted.clear()
            self._fitted[key] = fitted
        return fitted

    def draw(
        self, image: np.ndarray, result: LiveResult | None, paused: bool = False
    ) -> np.ndarray:
        """Draw on ``image`` (BGR, in place) and return it."""
        layout = self.layout(image.shape[0], image.shape[1])
        if self.show_crop and layout.crop is not None:
            cx0, cy0, cx1, cy1 = layout.crop
            # Drawn first, so the panels go over it.
            cv2.rectangle(image, (cx0, cy0), (cx1, cy1), CROP_COLOUR, layout.crop_thickness)
        top = self.shown_predictions(result)
        lines = len(top) if top else 1  # "uncertain" (or nothing yet) takes one line
        for x0, y0, x1, y1 in (layout.panel(lines), layout.info_box):
            box = image[y0:y1, x0:x1]
            np.right_shift(box, 2, out=box)  # a quarter of the picture shows through
        put = self._put
        if result is not None and not top:
            put(image, UNCERTAIN, layout.text_x, layout.baselines[0], TEXT_COLOUR, layout)
        for i, prediction in enumerate(top):
            baseline = layout.baselines[i]
            bar_top = baseline - layout.bar_height
            cv2.rectangle(
                image,
                (layout.bar_x, bar_top),
                (layout.bar_x + layout.bar_width, baseline),
                BAR_TRACK,
                -1,
            )
            filled = int(round(layout.bar_width * min(max(prediction.score, 0.0), 1.0)))
            if filled > 0:
                cv2.rectangle(
                    image,
                    (layout.bar_x, bar_top),
                    (layout.bar_x + filled, baseline),
                    BAR_COLOUR,
                    -1,
                )
            text = self.prediction_text(prediction.score, prediction.label)
            text = self._fit(text, layout, layout.text_width)
            colour = TOP_COLOUR if i == 0 else TEXT_COLOUR
            put(image, text, layout.text_x, baseline, colour, layout)
        for j, text in enumerate(self.info_lines(result, paused)):
            baseline = layout.baselines[self.top_k + j]
            text = self._fit(text, layout, layout.info_width)
            put(image, text, layout.bar_x, baseline, INFO_COLOUR, layout)
        return image

    @staticmethod
    def _put(image: np.ndarray, text: str, x: int, y: int, colour, layout: Layout) -> None:
        for dx in range(layout.strokes):
            cv2.putText(
                image, text, (x + dx, y), FONT, layout.scale, colour, layout.thickness, cv2.LINE_AA
            )

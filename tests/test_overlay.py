"""The overlay: legible from 640x480 to 1920x1080, drawn only in its box, and showing
the result it is given."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge_app.live.display import save_snapshot
from edge_app.live.overlay import Overlay, short_label
from edge_app.results import LiveResult, Prediction

SIZES = [(480, 640), (720, 1280), (1080, 1920)]


@pytest.fixture(scope="module")
def parrot_result(int8_model, test_images) -> LiveResult:
    from edge_app.inference.classifier import Classifier

    classifier = Classifier(int8_model, threads=1)
    classification = classifier.classify(cv2.imread(str(test_images / "parrot.jpg")))
    return LiveResult(
        frame=12, time=1764300000.0, top=classification.top,
        inference_ms=classification.inference_ms, latency_ms=14.2, fps=61.0, camera_fps=30.0,
    )  # fmt: skip


def ink_rows(mask: np.ndarray) -> int:
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def text_ink(overlay: Overlay, text: str, height: int, width: int) -> np.ndarray:
    """The pixels ``text`` covers when the overlay draws it as its first line."""
    layout = overlay.layout(height, width)
    canvas = np.zeros((height, width, 3), np.uint8)
    overlay._put(canvas, text, layout.text_x, layout.baselines[0], (255, 255, 255), layout)
    return canvas.max(axis=2) > 127


@pytest.mark.parametrize("height,width", SIZES)
def test_text_is_big_enough_and_everything_fits_in_the_frame(height, width, parrot_result):
    overlay = Overlay("mobilenet_v1_1.0_224_int8", top_k=5)
    layout = overlay.layout(height, width)
    capital = ink_rows(text_ink(overlay, "M", height, width))
    # About 2.5 % of the frame height: 12 px at 480 rows, 27 px at 1080.
    assert capital >= 0.024 * height
    panels = (layout.box, layout.info_box)
    for x0, y0, x1, y1 in panels:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in panels)
    assert area < 0.2 * width * height  # even with all five lines: most of the picture
    x0, y0, x1, y1 = layout.box
    assert all(y0 < b - capital and b < y1 for b in layout.baselines[:5])
    ix0, iy0, ix1, iy1 = layout.info_box
    assert all(iy0 < b - capital and b < iy1 for b in layout.baselines[5:])
    assert len(layout.baselines) == 5 + 2  # top-5 plus rates and model name
    assert np.diff(layout.baselines[:5]).min() >= 1.5 * capital  # lines do not touch
    assert np.diff(layout.baselines[5:]).min() >= 1.5 * capital
    # The centre of the frame, where the subject is, stays clear of both panels.
    cx0, cy0, cy1 = width // 3, height // 3, 2 * height // 3
    for _, py0, px1, py1 in panels:  # both panels start at the left edge
        assert px1 <= cx0 or py1 <= cy0 or py0 >= cy1


def test_text_scales_with_the_frame():
    overlay = Overlay("m")
    small = ink_rows(text_ink(overlay, "M", 480, 640))
    large = ink_rows(text_ink(overlay, "M", 1080, 1920))
    assert large / small == pytest.approx(1080 / 480, rel=0.2)


@pytest.mark.parametrize("height,width", SIZES)
def test_drawn_text_contrasts_with_its_box_even_on_white(height, width, parrot_result):
    overlay = Overlay("mobilenet_v1_1.0_224_int8")
    image = np.full((height, width, 3), 255, np.uint8)  # the worst background
    overlay.draw(image, parrot_result)
    layout = overlay.layout(height, width)
    for x0, y0, x1, y1 in (layout.panel(1), layout.info_box):  # macaw: one line shown
        box = image[y0:y1, x0:x1].max(axis=2)
        text = box[box > 127]
        assert np.median(box) <= 64  # the box is dark even over white
        assert np.median(text) >= 200  # and the text is bright on it


@pytest.mark.parametrize("height,width", SIZES)
def test_the_top_label_line_shows_the_result(height, width, parrot_result):
    overlay = Overlay("mobilenet_v1_1.0_224_int8")
    image = np.zeros((height, width, 3), np.uint8)
    overlay.draw(image, parrot_result)
    layout = overlay.layout(height, width)
    line = slice(layout.baselines[0] - layout.line_height // 2 - 4, layout.baselines[0] + 6)
    cols = slice(layout.text_x, layout.box[2])
    seen = image[line, cols].max(axis=2) > 127

    def match(text: str) -> float:
        expected = text_ink(overlay, text, height, width)[line, cols]
        return (seen & expected).sum() / (seen | expected).sum()

    top = parrot_result.top[0]
    assert short_label(top.label) == "macaw"
    shown = overlay.prediction_text(top.score, top.label)
    assert shown.endswith("% macaw")
    assert match(shown) > 0.97
    for other in ("hotdog", "daisy", "dragonfly"):
        assert match(overlay.prediction_text(top.score, other)) < 0.7


def test_only_the_panels_change(parrot_result, test_images):
    overlay = Overlay("mobilenet_v1_1.0_224_int8", show_crop=False)
    original = cv2.resize(cv2.imread(str(test_images / "parrot.jpg")), (640, 480))
    image = original.copy()
    assert overlay.draw(image, parrot_result) is image  # in place
    layout = overlay.layout(480, 640)
    outside = np.ones((480, 640), bool)
    for x0, y0, x1, y1 in (layout.panel(1), layout.info_box):
        outside[y0:y1, x0:x1] = False
        assert not np.array_equal(image[y0:y1, x0:x1], original[y0:y1, x0:x1])
    np.testing.assert_array_equal(image[outside], original[outside])


@pytest.mark.parametrize("height,width", SIZES)
def test_the_crop_outline_is_the_region_the_model_sees(height, width, parrot_result):
    from edge_app.inference.preprocess import crop_box

    image = np.zeros((height, width, 3), np.uint8)
    Overlay("m", crop="central", model_size=(224, 224)).draw(image, parrot_result)
    top, left, crop_h, crop_w = crop_box(height, width, "central", 1.0)
    assert crop_h == crop_w == round(0.875 * height)  # 87.5 % of the shorter side
    # The outline's right edge: a thin vertical line down the crop's right side.
    column = image[top + crop_h // 2 - 20 : top + crop_h // 2 + 20, left + crop_w - 1]
    assert (column.max(axis=1) > 150).all()
    layout = Overlay("m").layout(height, width)
    centre = image[layout.box[3] : layout.info_box[1], left + 2 : left + crop_w - 2]
    assert centre.max() == 0  # only an outline: the subject between the panels is untouched
    hidden = np.zeros((height, width, 3), np.uint8)
    Overlay("m", show_crop=False).draw(hidden, parrot_result)
    assert hidden[top + crop_h // 2, left + crop_w - 1].max() == 0  # toggled off
    none = np.zeros((height, width, 3), np.uint8)
    Overlay("m", crop="none").draw(none, parrot_result)
    assert none[height // 2, width - 1].max() == 0  # the whole frame: nothing to outline


def test_long_labels_are_cut_to_fit_and_rates_are_shown():
    overlay = Overlay("a_model_with_a_long_name_v1_1.0_224_quant_edgetpu_extra", show_crop=False)
    long = Prediction(1, "a label far too long for any box on any screen, second synonym", 0.5)
    result = LiveResult(3, 0.0, [long], 9.84, 12.0, 58.3, 29.97)
    image = np.zeros((480, 640, 3), np.uint8)
    overlay.draw(image, result)
    layout = overlay.layout(480, 640)
    fitted = overlay._fit(overlay.prediction_text(0.5, long.label), layout, layout.text_width)
    assert fitted.endswith("~") and fitted.startswith(" 50% a label far")
    assert (
        cv2.getTextSize(fitted, cv2.FONT_HERSHEY_SIMPLEX, layout.scale, 1)[0][0]
        <= layout.text_width
    )
    assert overlay.info_lines(result)[0] == "58.3 FPS  invoke 9.8 ms  cam 30 FPS"  # units
    assert overlay.info_lines(None)[0] == "waiting for the first result"
    assert overlay.info_lines(result, paused=True)[1].endswith("[paused]")
    ink_right = np.flatnonzero((image[: layout.box[3]].max(axis=2) > 0).any(axis=0)).max()
    assert ink_right < layout.box[2]  # nothing spills out of the box
    info = image[layout.box[3] :]
    assert np.flatnonzero((info.max(axis=2) > 0).any(axis=0)).max() < layout.info_box[2]


def test_layout_is_computed_once_per_frame_size():
    overlay = Overlay("m")
    assert overlay.layout(480, 640) is overlay.layout(480, 640)
    assert overlay.layout(480, 640) is not overlay.layout(1080, 1920)


def test_snapshot_writes_the_annotated_png_and_its_json(tmp_path, parrot_result):
    overlay = Overlay("mobilenet_v1_1.0_224_int8")
    image = overlay.draw(np.full((480, 640, 3), 90, np.uint8), parrot_result)
    png = save_snapshot(tmp_path / "snaps", image, parrot_result, {"source": "demo.mp4"})
    assert png.name.endswith("-f12.png")
    np.testing.assert_array_equal(cv2.imread(str(png)), image)
    record = json.loads(png.with_suffix(".json").read_text())
    assert record["image"] == png.name and record["source"] == "demo.mp4"
    assert record["result"] == json.loads(json.dumps(parrot_result.to_json()))
    again = save_snapshot(tmp_path / "snaps", image, parrot_result)
    assert again != png and again.exists()  # never overwrites


def test_a_snapshot_into_an_unwritable_folder_is_one_logged_line(tmp_path, parrot_result, caplog):
    """Pressing `s` with --snapshot-dir under a file: one error line, the run goes on."""
    from edge_app.errors import OutputError
    from edge_app.live.display import LiveDisplay

    blocker = tmp_path / "file"
    blocker.write_text("")
    image = np.full((480, 640, 3), 90, np.uint8)
    with pytest.raises(OutputError, match=f"cannot save a snapshot in {blocker / 'snaps'}"):
        save_snapshot(blocker / "snaps", image, parrot_result)

    class NoPipeline:  # the display reads only latest() when it is made
        def latest(self):
            return None

    display = LiveDisplay(NoPipeline(), Overlay(), window=None, snapshot_dir=blocker / "snaps")
    display._last_image, display._last_result = image, parrot_result
    caplog.set_level("INFO")
    assert display.snapshot() is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Not a directory" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
    assert list(tmp_path.iterdir()) == [blocker]


def test_no_background_and_no_score_under_one_percent_is_drawn():
    """The human rule: 1001-class models' `background` and 0 % classes are noise."""
    overlay = Overlay("m", show_crop=False)
    noisy = [
        Prediction(0, "background", 0.40),
        Prediction(286, "Egyptian cat", 0.35),
        Prediction(282, "tiger cat", 0.2),
        Prediction(1, "tench, Tinca tinca", 0.004),
        Prediction(2, "goldfish, Carassius auratus", 0.0),
    ]
    result = LiveResult(1, 0.0, noisy, 7.0, 20.0, 30.0, 30.0)
    assert overlay.prediction_lines(result) == [" 35% Egyptian cat", " 20% tiger cat"]
    image = np.zeros((480, 640, 3), np.uint8)
    overlay.draw(image, result)
    layout = overlay.layout(480, 640)
    # Lines three to five are not drawn at all: the panel ends after two lines.
    below = image[layout.panel(2)[3] : layout.box[3], : layout.box[2]]
    assert below.max() == 0
    nothing = LiveResult(2, 0.0, [noisy[0], noisy[3], noisy[4]], 7.0, 20.0, 30.0, 30.0)
    assert overlay.prediction_lines(nothing) == ["uncertain"]

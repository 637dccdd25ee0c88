"""Teaching from the `run` window (real Xvfb, real keys) and the teach folder itself."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from test_display_xvfb import EdgeAppRun, Keyboard, find_window, read_screen, xserver  # noqa: F401

from edge_app.errors import ConfigError
from edge_app.learn.teach import KeyTeacher, TeachFolder


def test_keys_add_the_shown_frame_to_the_class_folders(xserver, int8_model, demo_video, tmp_path):  # noqa: F811
    display, screen_file = xserver
    keyboard = Keyboard(display)
    teach = tmp_path / "teach"
    run = EdgeAppRun(display, "--source", str(demo_video), "--loop", "--teach-dir", str(teach),
                     "--teach-classes", "parrot,hotdog", model=int8_model)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (corner := find_window(read_screen(screen_file))) is None:
            assert run.running(), run.errors
            assert time.monotonic() < deadline, "the window never showed the overlay"
            time.sleep(0.1)
        x, y = corner
        for key in ("1", "1", "2"):
            keyboard.press(key, x + 320, y + 240)
            time.sleep(0.3)
        while len(list(teach.glob("*/*.jpg"))) < 3:
            assert time.monotonic() < deadline, "keys 1 and 2 saved no frames"
            time.sleep(0.1)
        # the teach band (darkened, with the status text) is on screen, top right
        picture = read_screen(screen_file)[y : y + 480, x : x + 640]
        keyboard.press("q", x + 320, y + 240)
        code = run.finish()
    finally:
        keyboard.close()
        run.finish(0)
    assert code == 0, run.errors
    parrots, hotdogs = (
        list((teach / "parrot").glob("*.jpg")),
        list((teach / "hotdog").glob("*.jpg")),
    )
    assert len(parrots) == 2 and len(hotdogs) == 1
    saved = cv2.imread(str(parrots[0]))
    assert saved.shape == (480, 640, 3)  # the source frame, full size
    band = picture[:20, -200:].astype(np.float32)
    assert (band > 200).any()  # white status text on the band


def test_teach_folder_counts_names_and_refusals(tmp_path):
    (tmp_path / "cat").mkdir()
    cv2.imwrite(str(tmp_path / "cat" / "old.jpg"), np.zeros((8, 8, 3), np.uint8))
    folder = TeachFolder(tmp_path)
    assert folder.counts() == {"cat": 1}
    teacher = KeyTeacher(folder)
    frame = np.full((48, 64, 3), 128, np.uint8)
    assert teacher.handle_key(ord("2"), frame) is None  # no class 2
    path = teacher.handle_key(ord("1"), frame)
    assert path.parent == tmp_path / "cat" and folder.counts() == {"cat": 2}
    assert "1:cat (2)" in teacher.status_text() and "+1 cat" in teacher.status_text()
    with pytest.raises(ConfigError, match="bad class name"):
        folder.add_class("../up")
    with pytest.raises(ConfigError, match="needs classes"):
        KeyTeacher(TeachFolder(tmp_path / "empty"))

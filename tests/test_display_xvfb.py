"""`edge-app run` with a real window on a real X server (Xvfb).

Xvfb writes its screen to an XWD file (``-fbdir``), read here with numpy. The overlay is
found by comparing the screen with the overlay's own text rendering, and checked
against the JSON records the same run printed: the label on screen is the label of a
result of that run, and during the parrot segment it is "macaw". Keys are sent through
the XTEST extension (libXtst, via ctypes).

A desktop always runs a window manager; bare Xvfb does not, and then Qt 5 (OpenCV's
window backend in the opencv-python wheel) misses the MapNotify of about one window in
five and never paints it. So the X server here gets a minimal window manager too (it
maps and configures windows on request, as any window manager does).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.live.display import has_gui
from edge_app.live.overlay import Layout, Overlay

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "mobilenet_v1_1.0_224_int8"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt-get install xvfb)"
    ),
    pytest.mark.skipif(
        not has_gui(), reason="OpenCV without a GUI backend (opencv-python-headless)"
    ),
]


# -- a minimal window manager ------------------------------------------------------------
class _MapRequest(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p), ("parent", ctypes.c_ulong), ("window", ctypes.c_ulong),
    ]  # fmt: skip


class _ConfigureRequest(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p), ("parent", ctypes.c_ulong), ("window", ctypes.c_ulong),
        ("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int),
        ("height", ctypes.c_int), ("border_width", ctypes.c_int), ("above", ctypes.c_ulong),
        ("detail", ctypes.c_int), ("value_mask", ctypes.c_ulong),
    ]  # fmt: skip


class _WindowChanges(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int),
        ("height", ctypes.c_int), ("border_width", ctypes.c_int), ("sibling", ctypes.c_ulong),
        ("stack_mode", ctypes.c_int),
    ]  # fmt: skip


class _XEvent(ctypes.Union):
    _fields_ = [
        ("type", ctypes.c_int), ("map", _MapRequest), ("configure", _ConfigureRequest),
        ("pad", ctypes.c_long * 24),
    ]  # fmt: skip


class MiniWindowManager:
    """Redirects top-level windows' map and configure requests and grants them."""

    MAP_REQUEST, CONFIGURE_REQUEST = 20, 23
    SUBSTRUCTURE_NOTIFY, SUBSTRUCTURE_REDIRECT = 1 << 19, 1 << 20

    def __init__(self, display: str):
        x11 = self.x11 = ctypes.CDLL("libX11.so.6")
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XDefaultRootWindow.restype = ctypes.c_ulong
        x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        x11.XSelectInput.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_long]
        x11.XPending.argtypes = [ctypes.c_void_p]
        x11.XNextEvent.argtypes = [ctypes.c_void_p, ctypes.POINTER(_XEvent)]
        x11.XMapWindow.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        x11.XConfigureWindow.argtypes = [
            ctypes.c_void_p, ctypes.c_ulong, ctypes.c_uint, ctypes.POINTER(_WindowChanges),
        ]  # fmt: skip
        x11.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self.display = x11.XOpenDisplay(display.encode())
        if not self.display:
            raise RuntimeError(f"cannot connect to X display {display}")
        root = x11.XDefaultRootWindow(self.display)
        x11.XSelectInput(self.display, root, self.SUBSTRUCTURE_REDIRECT | self.SUBSTRUCTURE_NOTIFY)
        x11.XSync(self.display, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mini-wm", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        x11, event = self.x11, _XEvent()
        while not self._stop.is_set():
            if not x11.XPending(self.display):
                time.sleep(0.005)
                continue
            x11.XNextEvent(self.display, ctypes.byref(event))
            if event.type == self.MAP_REQUEST:
                x11.XMapWindow(self.display, event.map.window)
            elif event.type == self.CONFIGURE_REQUEST:
                r = event.configure
                changes = _WindowChanges(
                    r.x, r.y, r.width, r.height, r.border_width, r.above, r.detail
                )
                x11.XConfigureWindow(self.display, r.window, r.value_mask & 0x7F, changes)
            x11.XSync(self.display, 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.x11.XCloseDisplay(self.display)


# -- the X server ------------------------------------------------------------------------
def _free_display() -> int:
    for n in range(90, 400):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture(scope="module")
def xserver(tmp_path_factory):
    """(DISPLAY, screen file) of a fresh 1280x1024 Xvfb."""
    fbdir = tmp_path_factory.mktemp("xvfb")
    number = _free_display()
    proc = subprocess.Popen(
        # -noreset: the server would otherwise reset (and remake its screen) each time
        # its last client leaves, between and even within runs.
        ["Xvfb", f":{number}", "-screen", "0", "1280x1024x24", "-fbdir", str(fbdir),
         "-nolisten", "tcp", "-noreset"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    screen = fbdir / "Xvfb_screen0"
    deadline = time.monotonic() + 20
    while not (screen.exists() and Path(f"/tmp/.X11-unix/X{number}").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"Xvfb :{number} did not start")
        time.sleep(0.05)
    try:
        window_manager = MiniWindowManager(f":{number}")
    except OSError as exc:
        proc.terminate()
        pytest.skip(f"libX11 not available ({exc}; apt-get install libx11-6)")
    yield f":{number}", screen
    window_manager.close()
    proc.terminate()
    proc.wait(10)


def read_screen(path: Path) -> np.ndarray:
    """The screen as BGR from Xvfb's XWD file (32-bit TrueColor, LSB first)."""
    data = path.read_bytes()
    header = np.frombuffer(data, ">u4", count=25)
    header_size, width, height = int(header[0]), int(header[4]), int(header[5])
    bits_per_pixel, bytes_per_line, ncolors = int(header[11]), int(header[12]), int(header[19])
    assert bits_per_pixel == 32 and int(header[7]) == 0, "expected 32 bpp, LSB first"
    offset = header_size + 12 * ncolors
    rows = np.frombuffer(data, np.uint8, count=bytes_per_line * height, offset=offset)
    return rows.reshape(height, bytes_per_line)[:, : width * 4].reshape(height, width, 4)[..., :3]


class Keyboard:
    """Key presses through XTEST, sent to the window under the pointer."""

    def __init__(self, display: str):
        try:
            self.x11 = ctypes.CDLL("libX11.so.6")
            self.xtst = ctypes.CDLL("libXtst.so.6")
        except OSError as exc:
            pytest.skip(f"libXtst not available for sending keys ({exc}; apt-get install libxtst6)")
        x11, xtst = self.x11, self.xtst
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XStringToKeysym.restype = ctypes.c_ulong
        x11.XStringToKeysym.argtypes = [ctypes.c_char_p]
        x11.XKeysymToKeycode.restype = ctypes.c_ubyte
        x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        x11.XFlush.argtypes = [ctypes.c_void_p]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        xtst.XTestFakeMotionEvent.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_ulong,
        ]  # fmt: skip
        xtst.XTestFakeKeyEvent.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_ulong,
        ]
        self.display = x11.XOpenDisplay(display.encode())
        assert self.display, f"cannot open X display {display}"

    def press(self, key: str, x: int, y: int) -> None:
        self.xtst.XTestFakeMotionEvent(self.display, -1, x, y, 0)
        code = self.x11.XKeysymToKeycode(self.display, self.x11.XStringToKeysym(key.encode()))
        self.xtst.XTestFakeKeyEvent(self.display, code, 1, 0)
        self.xtst.XTestFakeKeyEvent(self.display, code, 0, 0)
        self.x11.XFlush(self.display)

    def close(self) -> None:
        self.x11.XCloseDisplay(self.display)


# -- finding the overlay on the screen ---------------------------------------------------
OVERLAY = Overlay(MODEL_NAME, top_k=5)
LAYOUT: Layout = OVERLAY.layout(480, 640)


def ink(image: np.ndarray) -> np.ndarray:
    """Text pixels: the overlay's text is bright on a box darkened below 64."""
    return (image.max(axis=2) > 160).astype(np.float32)


def line_band(line: int, x_start: int) -> tuple[slice, slice]:
    baseline = LAYOUT.baselines[line]
    top = baseline - int(LAYOUT.line_height * 0.75)
    bottom = baseline + int(LAYOUT.line_height * 0.25)
    return slice(top, bottom), slice(x_start, LAYOUT.box[2])


def rendered_line(text: str, line: int, x: int, x_start: int) -> np.ndarray:
    """The ink of ``text`` drawn exactly as the overlay draws it, in the line's band."""
    canvas = np.zeros((480, 640, 3), np.uint8)
    OVERLAY._put(canvas, text, x, LAYOUT.baselines[line], (255, 255, 255), LAYOUT)
    rows, cols = line_band(line, x_start)
    return ink(canvas[rows, cols])


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ink masks."""
    union = np.logical_or(a > 0, b > 0).sum()
    return float(np.logical_and(a > 0, b > 0).sum() / union) if union else 0.0


def find_window(screen: np.ndarray, model_line: str = MODEL_NAME) -> tuple[int, int] | None:
    """Top-left corner of the 640x480 picture, found by the overlay's model-name line."""
    info_line = OVERLAY.top_k + 1
    template = rendered_line(model_line, info_line, LAYOUT.bar_x, LAYOUT.bar_x)
    found = cv2.matchTemplate(ink(screen), template, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(found)
    if best < 0.9:
        return None
    rows, cols = line_band(info_line, LAYOUT.bar_x)
    return x - cols.start, y - rows.start


def top_line_ink(picture: np.ndarray) -> np.ndarray:
    rows, cols = line_band(0, LAYOUT.text_x - 2)
    return ink(picture[rows, cols])


class EdgeAppRun:
    """`edge-app run` on the X display; stdout and stderr are read as they come so a
    full pipe never holds the program up."""

    def __init__(self, display: str, *args: str, model: Path):
        env = dict(os.environ, DISPLAY=display, PYTHONPATH=str(ROOT))
        env.pop("WAYLAND_DISPLAY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "run", "--model", str(model), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 30) -> int | None:
        """The exit code, or None when it had to be killed after ``timeout``."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        for reader in self._readers:
            reader.join(10)
        return code

    @property
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout]

    @property
    def errors(self) -> str:
        return "".join(self.stderr)


def video_thumbnails(path: Path, count: int) -> np.ndarray:
    """Small grey versions of the video's first frames, to recognise the picture."""
    cap = cv2.VideoCapture(str(path))
    thumbs = []
    for _ in range(count):
        ok, frame = cap.read()
        if not ok:
            break
        thumbs.append(
            cv2.resize(
                cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (160, 120), interpolation=cv2.INTER_AREA
            )
        )
    cap.release()
    return np.stack(thumbs).astype(np.float32)


def test_window_shows_the_video_with_the_overlay_and_the_right_label(
    xserver, int8_model, demo_video, tmp_path
):
    display, screen_file = xserver
    run = EdgeAppRun(display, "--source", str(demo_video), "--json", "--duration", "5",
                     model=int8_model)  # fmt: skip
    shots = []
    while run.running():
        time.sleep(0.3)
        shots.append((time.time(), read_screen(screen_file).copy()))
    assert run.finish() == 0, run.errors
    assert "running without a window" not in run.errors
    records = run.records
    assert records

    run_labels = {r["top"][0]["label"] for r in records}
    assert len(run_labels) >= 3  # the run went through several photos
    thumbs = video_thumbnails(demo_video, max(r["frame"] for r in records) + 10)
    box_right = LAYOUT.box[2] + 8
    found = []
    for shot_time, screen in shots:
        corner = find_window(screen)
        if corner is None:
            continue  # the window is not up yet, or gone
        x, y = corner
        picture = screen[y : y + 480, x : x + 640]
        # The label line on screen is exactly one of this run's results near that time.
        recent = [r for r in records if shot_time - 1.5 <= r["time"] <= shot_time + 0.2]
        if not recent:
            continue
        seen = top_line_ink(picture)
        if not seen.any():
            continue  # no result yet: the overlay says it is waiting

        def shown(score: float, label: str, seen=seen) -> float:
            text = OVERLAY.prediction_text(score, label)
            return overlap(seen, rendered_line(text, 0, LAYOUT.text_x, LAYOUT.text_x - 2))

        # Several results may print the same text: the newest of them is on screen.
        match, _, record = max(
            ((round(shown(r["top"][0]["score"], r["top"][0]["label"]), 3), r["frame"], r)
             for r in recent),
            key=lambda item: item[:2],
        )  # fmt: skip
        assert match > 0.8, f"label line not found on screen (best overlap {match:.2f})"
        # ...and clearly not any other label of the run, drawn with the same score.
        label, score = record["top"][0]["label"], record["top"][0]["score"]
        others = [shown(score, other) for other in run_labels if other != label]
        assert match - max(others) > 0.3, (label, match, max(others))
        # The picture beside the overlay is the video's frame of about that time.
        region = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
        region = cv2.resize(region, (160, 120), interpolation=cv2.INTER_AREA).astype(np.float32)
        cols = slice(box_right // 4, 160)
        errors = np.abs(thumbs[:, :, cols] - region[:, cols]).mean(axis=(1, 2))
        # (The picture may be a few frames newer than the result shown on it.)
        n = record["frame"]
        near = errors[max(0, n - 15) : n + 16].min()
        # Frames of one photo differ by about 2 (grey levels), other photos by 44 or
        # more; the margin allows for a screenshot taken while the window repaints.
        assert near < 20.0
        far = np.concatenate([errors[: max(0, n - 75)], errors[n + 76 :]])  # other photos
        assert far.size == 0 or far.min() > near + 20
        found.append((record["frame"], record["top"][0]["label"]))

    if len(found) < 5:
        for i, (_, screen) in enumerate(shots):
            cv2.imwrite(str(tmp_path / f"shot{i:02d}.png"), screen)
    assert len(found) >= 5, (
        f"overlay found in {len(found)} of {len(shots)} shots (in {tmp_path}); {run.errors}"
    )
    # Frames 60-119 show the parrot: the window says macaw then.
    parrot = [label for frame, label in found if 70 <= frame <= 115]
    assert parrot and all(label == "macaw" for label in parrot), found


def test_keys_pause_snapshot_and_quit(xserver, int8_model, demo_video, tmp_path):
    display, screen_file = xserver
    keyboard = Keyboard(display)
    run = EdgeAppRun(display, "--source", str(demo_video), "--loop", "--snapshot-dir",
                     str(tmp_path), model=int8_model)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (corner := find_window(read_screen(screen_file))) is None:
            assert run.running(), run.errors
            assert time.monotonic() < deadline, "the window never showed the overlay"
            time.sleep(0.1)
        x, y = corner
        keyboard.press("p", x + 320, y + 240)
        paused_line = f"{MODEL_NAME}  [paused]"
        while find_window(read_screen(screen_file), paused_line) is None:
            assert time.monotonic() < deadline, "no [paused] mark after pressing p"
            time.sleep(0.1)
        keyboard.press("s", x + 320, y + 240)
        while not list(tmp_path.glob("*.json")):
            assert time.monotonic() < deadline, "no snapshot after pressing s"
            time.sleep(0.1)
        time.sleep(0.2)  # the PNG is written before the JSON; let the JSON finish too
        keyboard.press("q", x + 320, y + 240)
        code = run.finish()
    finally:
        keyboard.close()
        run.finish(0)
    assert code == 0, run.errors
    assert "results" in run.stderr[-1]  # the summary line
    (png,) = tmp_path.glob("*.png")
    snapshot = json.loads(png.with_suffix(".json").read_text())
    assert snapshot["image"] == png.name and snapshot["model"] == MODEL_NAME
    assert snapshot["result"]["top"][0]["label"]
    image = cv2.imread(str(png))
    assert image.shape == (480, 640, 3)
    assert find_window(image, paused_line) == (0, 0)  # annotated, with the overlay
    top = snapshot["result"]["top"][0]
    expected = rendered_line(OVERLAY.prediction_text(top["score"], top["label"]), 0,
                             LAYOUT.text_x, LAYOUT.text_x - 2)  # fmt: skip
    assert overlap(top_line_ink(image), expected) > 0.8


def test_a_snapshot_that_cannot_be_saved_is_one_line_and_the_run_goes_on(
    xserver, int8_model, demo_video, tmp_path
):
    display, screen_file = xserver
    keyboard = Keyboard(display)
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = EdgeAppRun(display, "--source", str(demo_video), "--loop", "--snapshot-dir",
                     str(blocker / "snaps"), model=int8_model)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (corner := find_window(read_screen(screen_file))) is None:
            assert run.running(), run.errors
            assert time.monotonic() < deadline, "the window never showed the overlay"
            time.sleep(0.1)
        x, y = corner
        keyboard.press("s", x + 320, y + 240)
        while not any("cannot save a snapshot" in line for line in run.stderr):
            assert run.running(), run.errors
            assert time.monotonic() < deadline, "no message after pressing s"
            time.sleep(0.1)
        assert run.running(), run.errors  # still classifying
        keyboard.press("q", x + 320, y + 240)
        code = run.finish()
    finally:
        keyboard.close()
        run.finish(0)
    assert code == 0, run.errors
    text = "".join(run.stderr)
    assert "Traceback" not in text
    (line,) = [line for line in run.stderr if "cannot save a snapshot" in line]
    assert line.startswith("edge-app: ERROR: cannot save a snapshot in ")
    assert "Not a directory" in line
    assert "results" in run.stderr[-1]  # the summary line

"""`edge-app run` as a user runs it: a real process on the demo video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_app.cli import cli

ROOT = Path(__file__).resolve().parent.parent
ANSWERS = {
    "parrot.jpg": "macaw",
    "hot_dog.jpg": "hotdog",
    "dragonfly.bmp": "dragonfly",
    "bird.bmp": "chickadee",
    "cat.bmp": "Egyptian cat",
    "sunflower.bmp": "daisy",
}


def headless_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def edge_app(*args: str, timeout: float = 180, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *args],
        cwd=ROOT,
        env=env or headless_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_no_pace_json_run_classifies_every_frame_of_the_demo(int8_model, demo_video, demo_segments):
    proc = edge_app(
        "run", "--source", str(demo_video), "--no-pace", "--headless", "--json",
        "--model", str(int8_model),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = records(proc.stdout)
    assert [r["frame"] for r in out] == list(range(420))
    first = out[0]
    assert set(first) == {
        "frame", "time", "top", "inference_ms", "latency_ms", "fps", "camera_fps", "trigger",
    }  # fmt: skip
    assert {r["trigger"] for r in out} == {"always"}  # no gate: every frame classified
    assert len(first["top"]) == 5
    assert set(first["top"][0]) == {"index", "label", "score"}
    for start, last, photo in demo_segments:
        if photo in ANSWERS:
            top1 = Counter(r["top"][0]["label"].split(",")[0] for r in out[start : last + 1])
            assert top1[ANSWERS[photo]] > (last - start + 1) / 2, (photo, top1.most_common(3))
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("edge-app: 420 frames, 420 results, 0 dropped")
    assert "FPS mean" in summary and "p50" in summary and "p95" in summary
    assert "running without a window" in proc.stderr


def test_max_frames_and_top_k_shape_the_output(int8_model, demo_video):
    proc = edge_app(
        "run", "--source", str(demo_video), "--no-pace", "--json", "--max-frames", "7",
        "--top-k", "2", "--model", str(int8_model),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = records(proc.stdout)
    assert [r["frame"] for r in out] == list(range(7))
    assert all(len(r["top"]) == 2 for r in out)
    # no display in the environment: it says so and runs anyway
    assert "no display (DISPLAY and WAYLAND_DISPLAY are unset)" in proc.stderr


def test_duration_ends_a_looping_paced_run(int8_model, demo_video):
    proc = edge_app(
        "run", "--source", str(demo_video), "--loop", "--duration", "1", "--json",
        "--model", str(int8_model), "--smooth",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = records(proc.stdout)
    assert out, proc.stderr
    frames = [r["frame"] for r in out]
    assert frames == sorted(set(frames))
    # Paced at the file's 30 fps: frame n is not captured before n / 30 s after the first
    # (one-sided, one interval of slack for the first stamp, so a busy machine cannot fail it).
    first = out[0]
    for r in out[1:]:
        assert r["time"] - first["time"] >= (r["frame"] - first["frame"] - 1) / 30.0


def test_missing_video_is_one_line_and_exit_2(int8_model, tmp_path):
    proc = edge_app("run", "--source", str(tmp_path / "nope.mp4"), "--model", str(int8_model))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-app: error: --source")
    assert "Traceback" not in proc.stderr


def _has_camera() -> bool:
    try:
        import picamera2  # noqa: F401

        return True
    except ImportError:
        return any(Path("/dev").glob("video*"))


@pytest.mark.skipif(_has_camera(), reason="this machine has a camera or picamera2")
def test_auto_source_without_a_camera_explains_itself(int8_model):
    proc = edge_app("run", "--model", str(int8_model))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-app: error: no camera found (tried picamera2")
    assert "V4L2" in lines[0] and "--source FILE" in lines[0]


def test_bad_options_are_usage_errors(int8_model, demo_video):
    proc = edge_app("run", "--source", str(demo_video), "--size", "640by480")
    assert proc.returncode == 2 and "WIDTHxHEIGHT" in proc.stderr
    proc = edge_app("run", "--source", str(demo_video), "--smooth", "1.5")
    assert proc.returncode == 2 and "--smooth" in proc.stderr


def test_stdout_closed_early_ends_the_run_quietly(int8_model, demo_video):
    """`edge-app run --json | head -3` stops without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_app", "run", "--source", str(demo_video), "--no-pace",
         "--json", "--model", str(int8_model)],
        cwd=ROOT, env=headless_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    head = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert all(json.loads(line)["frame"] == i for i, line in enumerate(head))
    assert "Traceback" not in stderr
    assert proc.returncode == 0


def test_headless_run_never_starts_the_window_system(int8_model, demo_video, monkeypatch):
    """In-process, so the process can be inspected after: no Qt platform plugin loaded."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = CliRunner().invoke(
        cli,
        ["run", "--source", str(demo_video), "--no-pace", "--json", "--max-frames", "3",
         "--model", str(int8_model)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == [0, 1, 2]
    maps = Path("/proc/self/maps").read_text()
    assert "platforms/libqxcb" not in maps and "libqoffscreen" not in maps

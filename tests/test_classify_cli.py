"""`edge-app classify` as a user runs it: real files, real exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.core


def edge_app(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, test_images) -> Path:
    """The 13 test photos plus every kind of awkward or broken input."""
    folder = tmp_path_factory.mktemp("mixed")
    for photo in sorted(test_images.iterdir()):
        shutil.copy(photo, folder / photo.name)
    parrot = cv2.imread(str(test_images / "parrot.jpg"))
    (folder / "empty.jpg").write_bytes(b"")
    data = (test_images / "hot_dog.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is a text file saved with a .jpg name\n")
    sixteen = (cv2.cvtColor(parrot, cv2.COLOR_BGR2RGB).astype(np.uint16) * 257)[:, :, ::-1]
    cv2.imwrite(str(folder / "parrot_16bit.png"), np.ascontiguousarray(sixteen))
    cv2.imwrite(str(folder / "parrot_gray.png"), cv2.cvtColor(parrot, cv2.COLOR_BGR2GRAY))
    Image.open(test_images / "parrot.jpg").convert("CMYK").save(folder / "parrot_cmyk.jpg")
    # Stored rotated 90 degrees counter-clockwise; EXIF orientation 6 says "rotate back".
    rotated = Image.open(test_images / "parrot.jpg").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(folder / "parrot_exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    unreadable = folder / "unreadable.jpg"
    os.mkfifo(unreadable)  # readable by nobody as an image, root included
    os.symlink("loop.jpg", folder / "loop.jpg")
    _png_header_only(folder / "bomb.png", 20000, 20000)
    return folder


EXPECTED_FAILURES = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated JPEG",
    "notes.jpg": "not an image",
    "unreadable.jpg": "not a regular file",
    "loop.jpg": "symlink loop",
    "bomb.png": "image too large: 20000x20000",
}


def test_mixed_folder_gives_exactly_one_record_per_file(mixed_folder, int8_model):
    result = edge_app("classify", mixed_folder, "--format", "jsonl", "-m", int8_model)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    rows = records(result.stdout)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == len(by_name) == len(os.listdir(mixed_folder)) == 13 + 10
    for name, reason in EXPECTED_FAILURES.items():
        row = by_name[name]
        assert row["ok"] is False, name
        assert reason in row["error"], (name, row["error"])
        assert set(row) == {"path", "ok", "error"} and "\n" not in row["error"]
    for name in ("parrot_16bit.png", "parrot_gray.png", "parrot_cmyk.jpg"):
        assert by_name[name]["ok"], (name, by_name[name])
    assert by_name["parrot_16bit.png"]["top"][0]["label"] == "macaw"
    assert by_name["parrot_cmyk.jpg"]["top"][0]["label"] == "macaw"
    ok = [r for r in rows if r["ok"]]
    assert all(set(r) == {"path", "ok", "top", "inference_ms"} for r in ok)
    assert "done: 23 images, 6 failed" in result.stderr


def test_exif_rotated_photo_gets_the_upright_answer(mixed_folder, int8_model):
    result = edge_app(
        "classify",
        mixed_folder / "parrot.jpg",
        mixed_folder / "parrot_exif_rotated.jpg",
        "--format",
        "jsonl",
        "-m",
        int8_model,
        "--workers",
        "1",
    )
    upright, rotated = records(result.stdout)
    assert rotated["top"][0]["label"] == upright["top"][0]["label"] == "macaw"
    assert abs(rotated["top"][0]["score"] - upright["top"][0]["score"]) < 0.05


def test_records_come_back_in_input_order_with_several_workers(test_images, int8_model):
    names = sorted(p.name for p in test_images.iterdir())
    result = edge_app("classify", test_images, "-f", "jsonl", "-m", int8_model, "-w", "2")
    assert result.returncode == 0, result.stderr
    assert [Path(r["path"]).name for r in records(result.stdout)] == names


def test_globs_and_explicit_files(test_images, int8_model):
    result = edge_app("classify", str(test_images / "*.bmp"), "-f", "jsonl", "-m", int8_model)
    assert result.returncode == 0
    assert {Path(r["path"]).suffix for r in records(result.stdout)} == {".bmp"}
    missing = edge_app("classify", test_images / "nope.jpg", "-f", "jsonl", "-m", int8_model)
    assert missing.returncode == 1
    assert records(missing.stdout)[0]["error"] == "file not found"


def test_csv_and_table_formats(test_images, int8_model, tmp_path):
    out = tmp_path / "r.csv"
    result = edge_app(
        "classify", test_images / "parrot.jpg", "-f", "csv", "-o", out, "-m", int8_model
    )
    assert result.returncode == 0
    header, row = out.read_text().splitlines()
    assert header.startswith("path,ok,index1,label1,score1")
    assert ",true,89,macaw," in row
    table = edge_app("classify", test_images / "parrot.jpg", "-f", "table", "-m", int8_model)
    assert "macaw" in table.stdout and "%" in table.stdout


def test_model_errors_are_one_line_and_exit_2(tmp_path, test_images, int8_model):
    from tiny_models import add_model

    bad = tmp_path / "bad.tflite"
    bad.write_text("not a model")
    adder = tmp_path / "adder.tflite"
    adder.write_bytes(add_model([1, 8]))
    for args in (
        ["-m", tmp_path / "missing.tflite"],
        ["-m", bad],
        ["-m", adder],
        ["-m", int8_model, "--labels", tmp_path / "none.txt"],
    ):
        result = edge_app("classify", test_images / "parrot.jpg", *args)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("edge-app: error: ")
        assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(test_images):
    result = edge_app("classify", test_images, "--top-k", "0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_resume_skips_recorded_paths_and_repairs_a_partial_line(test_images, int8_model, tmp_path):
    out = tmp_path / "out.jsonl"
    first = edge_app("classify", test_images, "-o", out, "-m", int8_model)
    lines = out.read_text().splitlines()
    assert first.returncode == 0 and len(lines) == 13
    # an interrupted run: 5 whole lines and half of the sixth
    out.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    again = edge_app("classify", test_images, "-o", out, "--resume", "-m", int8_model)
    assert again.returncode == 0, again.stderr
    assert "5 already in" in again.stderr
    rows = records(out.read_text())
    assert [r["path"] for r in rows] == [json.loads(line)["path"] for line in lines]


@pytest.mark.slow
def test_ctrl_c_leaves_whole_lines_that_resume_continues(imagenet_sample, int8_model, tmp_path):
    out = tmp_path / "sample.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "edge_app",
        "classify",
        str(imagenet_sample),
        "-o",
        str(out),
        "-m",
        str(int8_model),
        "-w",
        "2",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "rerun with --resume" in stderr and "Traceback" not in stderr
    text = out.read_text()
    assert text.endswith("\n")
    done = [json.loads(line) for line in text.splitlines()]  # every line is whole JSON
    assert 0 < len(done) < 1000
    resumed = edge_app("classify", imagenet_sample, "-o", out, "--resume", "-m", int8_model)
    assert resumed.returncode == 0, resumed.stderr
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert len(paths) == len(set(paths)) == 1000


@pytest.mark.slow
def test_imagenet_sample_top1_is_at_least_88_percent(imagenet_sample, int8_model):
    result = edge_app("classify", imagenet_sample, "--format", "jsonl", "-m", int8_model)
    assert result.returncode == 0, result.stderr
    rows = records(result.stdout)
    assert len(rows) == 1000 and all(r["ok"] for r in rows)
    correct = 0
    for row in rows:
        truth = Path(row["path"]).stem.split("_", 1)[1].replace("_", " ").lower()
        correct += row["top"][0]["label"].split(",")[0].strip().lower() == truth
    assert correct / 1000 >= 0.88

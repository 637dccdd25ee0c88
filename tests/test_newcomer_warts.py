"""What a newcomer meets first: messages that say the right thing, a status line when
`run` has no window, a calm event log from `serve`, help on every option, and an
`eval` report whose "worst" means something."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from service_support import ServiceProcess, demo_config, free_port

ROOT = Path(__file__).resolve().parent.parent


def edge_app(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


# -- messages ------------------------------------------------------------------------------
def test_a_truncated_jpeg_says_so_wherever_it_is_cut(tmp_path, test_images, int8_model):
    data = (test_images / "owl.jpg").read_bytes()
    (tmp_path / "cut_in_header.jpg").write_bytes(data[:300])  # inside the EXIF/JFIF header
    (tmp_path / "cut_in_pixels.jpg").write_bytes(data[: len(data) // 2])
    result = edge_app("classify", tmp_path, "-m", int8_model)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["error"] == "truncated JPEG (no end-of-image marker)"
    assert "Truncated File Read" not in result.stdout + result.stderr


def test_one_image_is_singular(test_images, int8_model):
    result = edge_app("classify", test_images / "parrot.jpg", "-m", int8_model, "-w", "1")
    assert "classifying 1 image with" in result.stderr and "1 worker x" in result.stderr
    assert "done: 1 image," in result.stderr
    # a count of one, not a rate such as "32.1 images/s"
    assert not re.search(r"(?<![\d.,])1 images(?!/s)", result.stderr), result.stderr


def test_a_bad_environment_value_blames_the_variable(tmp_path):
    config = tmp_path / "edge-app.toml"
    config.write_text("[web]\nport = 8080\n")
    env = dict(os.environ, EDGE_APP_WEB_PORT="x")
    result = edge_app("config", "check", config, env=env)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line == (
        "edge-app: error: environment variable EDGE_APP_WEB_PORT='x': "
        "web.port must be an integer, got a string 'x'"
    )
    assert str(config) not in line  # the file is fine: it is not named


def test_a_port_in_use_names_it_and_hints_at_another_edge_app():
    from edge_app.errors import ConfigError
    from edge_app.service.config import WebConfig
    from edge_app.service.web import WebServer

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as caught:
            WebServer(WebConfig(port=port), backend=None)
    finally:
        taken.close()
    message = caught.value.message
    assert f"127.0.0.1:{port}" in message and "Address already in use" in message
    assert f"port {port} is taken: another edge-app running? choose another web.port" in message


def test_every_option_of_every_command_has_help():
    from edge_app.cli import cli

    ctx = click.Context(cli)
    missing = []

    def walk(command, name):
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                walk(command.get_command(ctx, sub), f"{name} {sub}")
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                missing.append(f"{name} {'/'.join(param.opts)}")

    walk(cli, "edge-app")
    assert missing == []


# -- run without a window: a status line ---------------------------------------------------
STATUS = re.compile(
    r"^edge-app: \d\d:\d\d (?P<label>[^|]+?) \| (?P<fps>[\d.]+) FPS \(camera [\d.]+\) \| "
    r"invoke [\d.]+ ms, latency \d+ ms \| \d+ dropped"
)


def test_a_headless_run_prints_a_status_line_every_few_seconds(demo_video, int8_model):
    result = edge_app(
        "run", "--source", demo_video, "--headless", "--duration", "11", "-m", int8_model
    )
    assert result.returncode == 0, result.stderr
    lines = [m for m in map(STATUS.match, result.stderr.splitlines()) if m]
    assert len(lines) >= 2  # one line every 5 s off a terminal, not one per frame
    assert len(lines) <= 3
    for match in lines:
        assert match["label"] != "background" and float(match["fps"]) > 0
    assert "\r" not in result.stderr  # a log gets whole lines


def test_a_headless_run_on_a_terminal_redraws_one_line(demo_video, int8_model):
    """stderr on a real pseudo-terminal: one line redrawn in place, then the summary."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_app", "run", "--source", str(demo_video), "--headless",
         "--duration", "3", "-m", str(int8_model)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal, cwd=ROOT,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    assert proc.wait(30) == 0
    text = output.decode(errors="replace")
    redraws = text.count("\r\x1b[K")
    assert redraws >= 3  # twice a second for 3 s, in place
    assert " FPS (camera " in text and " dropped" in text and " ms" in text
    assert re.search(r"\r\nedge-app: \d+ frames, \d+ results", text)  # summary on its own line


# -- serve: a calm event log, and an honest stop time --------------------------------------
def test_serve_logs_one_label_change_per_scene_and_times_its_stop(
    tmp_path, demo_video, int8_model, demo_segments
):
    """The demo video has seven scenes; frames 33/34 once flipped Windsor tie / military
    uniform. With the default smoothing a change in the log is a change of scene."""
    config = demo_config(
        demo_video, int8_model, tmp_path, free_port(), eventlog={"path": "events.jsonl"}
    )
    config["source"]["loop"] = False  # once through: every scene exactly once
    service = ServiceProcess(config, tmp_path)
    try:
        service.wait_until(lambda: "source ended" in service.stderr(), 120, "the end of the video")
        sent = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.proc.wait(30) == 0
        took = time.monotonic() - sent
    finally:
        service.stop()
    labels = [json.loads(line)["label"] for line in (tmp_path / "events.jsonl").open()]
    assert len(demo_segments) <= len(labels) <= len(demo_segments) + 2
    assert all(a != b for a, b in zip(labels, labels[1:], strict=False))  # changes only
    logged = float(re.search(r"stopped in ([\d.]+) s", service.stderr()).group(1))
    # The logged time counts from the signal: at most the real time to exit, and not
    # far below it (the interpreter's own exit is all that is left out).
    assert logged <= took + 0.05
    assert took - logged < max(1.0, 0.5 * took)


# -- eval: what "worst" means --------------------------------------------------------------
def test_eval_with_one_photo_per_class_lists_the_mistakes(tmp_path, imagenet_sample, int8_model):
    picks = sorted(imagenet_sample.iterdir())[::20]  # 50 classes, one photo each
    for photo in picks:
        os.symlink(photo, tmp_path / photo.name)
    result = edge_app("eval", tmp_path, "--truth", "filename", "-m", int8_model)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "worst classes" not in out  # 0/1 for every miss: ranking classes says nothing
    report = json.loads(
        edge_app("eval", tmp_path, "--truth", "filename", "-m", int8_model, "--json").stdout
    )
    assert report["one_photo_per_class"] is True
    misses = report["misclassified"]  # fewer than --worst (10) among these 50
    assert misses and len(misses) == report["evaluated"] - report["top1_correct"]
    assert [m["score"] for m in misses] == sorted((m["score"] for m in misses), reverse=True)
    assert f"misclassified: {len(misses)} photo" in out
    for miss in misses:  # each photo, relative to the argument, with its confusion
        assert f"  {Path(miss['path']).name}: {miss['truth']} -> {miss['predicted']}" in out


def test_eval_with_several_photos_per_class_ranks_by_recall(tmp_path, test_images, int8_model):
    layout = {
        "macaw": ["parrot.jpg", "hot_dog.jpg", "dragonfly.bmp"],  # 1 of 3
        "hotdog": ["hot_dog.jpg", "parrot.jpg"],  # 1 of 2
        "Egyptian cat": ["cat.bmp", "cat_720p.jpg"],  # 2 of 2
    }
    for folder, photos in layout.items():
        (tmp_path / folder).mkdir()
        for i, photo in enumerate(photos):
            os.symlink(test_images / photo, tmp_path / folder / f"{i}_{photo}")
    result = edge_app("eval", tmp_path, "--truth", "folder", "-m", int8_model, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["one_photo_per_class"] is False
    worst = report["worst_classes"]
    assert [(w["class"], w["correct"], w["images"]) for w in worst] == [
        ("macaw", 1, 3),
        ("hotdog", 1, 2),
    ]  # lowest recall first; a class without a miss is not "worst"
    assert {c["predicted"] for c in worst[0]["confused_with"]} == {"hotdog", "dragonfly"}
    text = edge_app("eval", tmp_path, "--truth", "folder", "-m", int8_model).stdout
    assert "worst classes (lowest recall" in text
    assert re.search(r"33\.3 %\s+1/3\s+macaw\s+-> ", text)

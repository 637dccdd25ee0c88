"""`edge-app serve` end to end, as systemd runs it: on the demo video with a config file,
a NOTIFY_SOCKET, the web view in headless Chromium, the JSON API, Prometheus metrics,
SIGHUP reloads and a clean SIGTERM.

One service process serves the whole module (loading the model once); the SIGTERM test
ends it, so it comes last.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from service_support import (
    NotifySocket,
    ServiceProcess,
    demo_config,
    free_port,
    parse_prometheus,
    to_toml,
)

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def config(demo_video, int8_model, workdir) -> dict:
    return demo_config(
        demo_video,
        int8_model,
        workdir / "state",
        free_port(),
        web={"token": TOKEN},
        eventlog={"path": "events.jsonl", "mode": "all"},
        trigger=[{"name": "parrots", "pattern": "macaw", "min_score": 0.5, "cooldown_s": 1.0}],
        service={"state_dir": str(workdir / "state"), "status_interval": 0.5},
    )


@pytest.fixture(scope="module")
def notify():
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def service(config, workdir, notify):
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
    proc = ServiceProcess(config, workdir, env=env, token=TOKEN)
    yield proc
    proc.stop()


def test_ready_then_watchdog_pings_and_status_on_the_notify_socket(service, notify):
    ready = notify.wait_for("READY=1", timeout=90)
    status, latest = service.get_json("/api/latest")
    assert status == 200 and latest["top"]  # READY=1 came after the first result
    assert any(line.startswith("STATUS=") for line in ready.split("\n"))
    notify.wait_for("WATCHDOG=1", timeout=10)
    notify.wait_for("WATCHDOG=1", timeout=10)  # and again: pings keep coming
    status_line = notify.wait_for_prefix("STATUS=", timeout=10)
    assert re.search(r"\d+\.\d FPS inference", status_line), status_line


def test_api_latest_is_the_run_json_record(service, demo_video, int8_model):
    latest = service.wait_for_result()
    done = subprocess.run(
        [
            sys.executable, "-m", "edge_app", "run", "--source", str(demo_video),
            "--model", str(int8_model), "--threads", "1", "--headless", "--json",
            "--max-frames", "2",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.splitlines()[0])
    assert latest.keys() == record.keys()
    for key, value in record.items():
        assert type(latest[key]) is type(value), key
    assert latest["top"][0].keys() == record["top"][0].keys() == {"index", "label", "score"}
    assert len(latest["top"]) == 5
    scores = [p["score"] for p in latest["top"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_stats_and_healthz(service):
    service.wait_for_result()
    status, stats = service.get_json("/api/stats")
    assert status == 200
    assert stats["source_state"] == "running" and stats["state"] == "running"
    assert stats["model"] == "mobilenet_v1_1.0_224_int8"
    assert stats["results"] > 0 and stats["inference_fps"] > 0
    assert stats["source"].endswith("demo_640x480.mp4")
    assert stats["eventlog"]["lines"] > 0
    status, health = service.get_json("/healthz", token=None)  # no token needed
    assert status == 200 and health["status"] == "ok"


def test_metrics_are_prometheus_text(service):
    service.wait_for_result()
    status, headers, body = service.request("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = parse_prometheus(body.decode())
    assert families["edge_app_results_total"]["type"] == "counter"
    assert families["edge_app_results_total"]["samples"][0][2] > 0
    assert families["edge_app_up"]["samples"][0][2] == 1
    states = {s[1]["state"]: s[2] for s in families["edge_app_state"]["samples"]}
    assert states["running"] == 1 and sum(states.values()) == 1
    quantiles = {s[1]["quantile"] for s in families["edge_app_latency_milliseconds"]["samples"]}
    assert quantiles == {"0.5", "0.95"}
    info = families["edge_app_info"]["samples"][0][1]
    assert info["model"] == "mobilenet_v1_1.0_224_int8"


def test_every_data_route_needs_the_token(service):
    for path in (
        "/api/events",
        "/api/latest",
        "/api/stats",
        "/metrics",
        "/snapshot.jpg",
        "/stream.mjpg",
    ):
        status, headers, _ = service.request(path, token=None)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert service.request(path, token="wrong-token-000000")[0] == 401
    assert service.request(f"/api/stats?token={TOKEN}", token=None)[0] == 200
    # The page's own files hold no data: a browser loads them without the token.
    for path in ("/", "/app.js", "/style.css"):
        assert service.request(path, token=None)[0] == 200
    assert service.request("/nowhere")[0] == 404


def decode_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def test_snapshot_is_the_annotated_frame(service):
    service.wait_for_result()
    status, headers, body = service.request("/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert decode_jpeg(body).shape == (480, 640, 3)


def read_until(sock_file, marker: bytes, limit: int = 4 << 20) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock_file.read1(65536)
        assert chunk, "stream closed"
        data += chunk
        assert len(data) < limit
    return data


def test_mjpeg_stream_sends_successive_jpegs(service):
    service.wait_for_result()
    with socket.create_connection(("127.0.0.1", service.port), timeout=20) as conn:
        conn.sendall(
            f"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        stream = conn.makefile("rb")
        head = read_until(stream, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200")
        boundary = re.search(rb"boundary=(\S+)", head).group(1)
        data = head.split(b"\r\n\r\n", 1)[1]
        frames = []
        while len(frames) < 3:
            data += stream.read1(65536)
            part = re.match(
                rb"--"
                + boundary
                + rb"\r\nContent-Type: image/jpeg\r\nContent-Length: (\d+)\r\n\r\n",
                data,
            )
            if part and len(data) >= part.end() + int(part.group(1)) + 2:
                end = part.end() + int(part.group(1))
                frames.append(data[part.end() : end])
                assert data[end : end + 2] == b"\r\n"
                data = data[end + 2 :]
    images = [decode_jpeg(f) for f in frames]
    assert all(i.shape == (480, 640, 3) for i in images)
    assert len(set(frames)) == 3  # each part a new frame


def test_event_stream_sends_results_and_stats(service):
    service.wait_for_result()
    with socket.create_connection(("127.0.0.1", service.port), timeout=20) as conn:
        conn.sendall(f"GET /api/events?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stream = conn.makefile("rb")
        data = read_until(stream, b"event: stats\n")
        data += read_until(stream, b"event: result\n")
        data += read_until(stream, b"\n\n")
    assert b"Content-Type: text/event-stream" in data
    events = re.findall(rb"event: (\w+)\ndata: (.*)\n\n", data)
    results = [json.loads(body) for name, body in events if name == b"result"]
    assert results and set(results[0]) >= {"frame", "top", "fps", "inference_ms"}


# -- the web page in a real browser -------------------------------------------------------
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
    "--virtual-time-budget=5000",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/install-test-deps.sh installs it)")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    profile.mkdir()
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        timeout=120,
    )


def video_thumbnails(demo_video: Path, size=(64, 48), step=3) -> np.ndarray:
    cap = cv2.VideoCapture(str(demo_video))
    thumbs, number = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if number % step == 0:
            thumbs.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        number += 1
    cap.release()
    return np.stack(thumbs).astype(np.float32)


def picture_box(screenshot: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box (x, y, w, h) of the largest region not painted in the page's
    background or card colours: the live picture."""
    page = np.array([24, 20, 17])  # #111418 as BGR
    card = np.array([39, 32, 27])  # #1b2027 as BGR
    distance = np.minimum(
        np.abs(screenshot.astype(int) - page).sum(axis=2),
        np.abs(screenshot.astype(int) - card).sum(axis=2),
    )
    mask = (distance > 12).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[biggest, :4]
    return int(x), int(y), int(w), int(h)


def test_the_page_shows_the_live_picture_and_the_label(
    service, demo_video, shared_models, tmp_path
):
    service.wait_for_result()
    shot = tmp_path / "page.png"
    # poll=1: the page's polling mode. Its default, an open event stream, never lets
    # --virtual-time-budget end (tests/test_service_events.py drives that mode over CDP).
    url = service.url(f"/?token={TOKEN}&poll=1")
    done = chromium(tmp_path, f"--screenshot={shot}", url)
    assert done.returncode == 0 and shot.exists(), done.stderr.decode()[-2000:]
    screenshot = cv2.imread(str(shot))
    assert screenshot.shape[:2] == (800, 1280)
    assert screenshot.std() > 20  # not blank

    # The picture: a 4:3 box whose pixels are frames of the demo video. Compared where the
    # overlay draws nothing (right of the crop outline, between the corner panels),
    # against every third frame of the video.
    x, y, w, h = picture_box(screenshot)
    assert w > 500 and abs(w / h - 4 / 3) < 0.05, (x, y, w, h)
    picture = cv2.resize(screenshot[y : y + h, x : x + w], (64, 48), interpolation=cv2.INTER_AREA)
    thumbs = video_thumbnails(demo_video)
    region = (slice(14, 41), slice(54, 64))
    diffs = np.abs(thumbs[:, region[0], region[1]] - picture[region].astype(np.float32))
    best = diffs.mean(axis=(1, 2, 3)).min()
    assert best < 6, f"the picture matches no video frame (mean abs diff {best:.1f})"

    # The label, after the page's scripts ran.
    dom = chromium(tmp_path, "--dump-dom", url).stdout.decode()
    label = re.search(r'id="top-label"[^>]*>([^<]*)<', dom).group(1)
    assert label and label != "waiting for the first result"
    short_labels = {
        line.split(",")[0].strip()
        for line in (shared_models / "imagenet_labels.txt").read_text().splitlines()
    }
    assert label in short_labels
    # The top-k list with scores, and the stats panel filled in.
    assert re.search(r'<li><span class="label"[^>]*>[^<]+</span><span class="score">\d+ %', dom)
    assert re.search(r'id="fps">\d+\.\d FPS<', dom)
    assert re.search(r'id="model">mobilenet_v1_1.0_224_int8<', dom)


# -- reload and stop ----------------------------------------------------------------------
def test_sighup_keeps_the_running_config_when_the_new_one_is_bad(service, config, notify):
    service.wait_for_result()
    good = service.config_path.read_text()
    service.config_path.write_text(good.replace("[web]", "[web]\nprot = 1"))
    notify.drain()
    service.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1", timeout=10)
    notify.wait_for("READY=1", timeout=10)
    service.wait_until(
        lambda: "reload: " in service.stderr() and "keeping the running configuration"
        in service.stderr(), 10, "the reload error"
    )  # fmt: skip
    line = [x for x in service.stderr().splitlines() if "reload: " in x][0]
    assert "unknown key 'web.prot' (did you mean 'port'?)" in line
    assert service.get_json("/api/stats")[0] == 200  # still serving

    changed = dict(config, web={**config["web"], "max_fps": 4.0})
    service.config_path.write_text(to_toml(changed))
    service.signal(signal.SIGHUP)
    service.wait_until(lambda: "configuration reloaded: web" in service.stderr(), 10, "the reload")
    assert service.get_json("/api/stats")[1]["web"]["max_fps"] == 4.0


def unit_setting(key: str) -> float:
    unit = Path(__file__).resolve().parent.parent / "systemd" / "edge-app.service"
    for line in unit.read_text().splitlines():
        if line.startswith(f"{key}="):
            return float(line.split("=", 1)[1])
    raise AssertionError(f"{key} missing from {unit}")


def test_sigterm_stops_cleanly_before_systemd_would_kill_it_with_whole_log_lines(
    service, workdir, notify
):
    service.wait_for_result()
    notify.drain()
    began = time.monotonic()
    service.signal(signal.SIGTERM)
    code = service.proc.wait(10)
    elapsed = time.monotonic() - began
    assert code == 0, service.stderr()
    # The contract is the unit's TimeoutStopSec: past it systemd kills the service. Half of
    # it leaves room for a busy machine without tying the test to this machine's speed.
    timeout_stop = unit_setting("TimeoutStopSec")
    assert elapsed < timeout_stop / 2, (
        f"SIGTERM took {elapsed:.2f} s (TimeoutStopSec={timeout_stop:g})"
    )
    notify.wait_for("STOPPING=1", timeout=1)
    assert "Traceback" not in service.stderr()

    log = workdir / "state" / "events.jsonl"
    data = log.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.splitlines()]
    assert len(records) > 10
    frames = [r["frame"] for r in records]
    assert all(set(r) >= {"frame", "time", "top", "label", "device_id"} for r in records)
    assert frames[:5] == sorted(frames[:5])

    # The trigger saved the parrot whenever the log shows it clearly.
    parrots = [r for r in records if r["label"] == "macaw" and r["top"][0]["score"] >= 0.5]
    snapshots = sorted((workdir / "state" / "snapshots").glob("*_parrots_macaw_*.jpg"))
    assert bool(parrots) == bool(snapshots)
    for path in snapshots:
        assert decode_jpeg(path.read_bytes()).shape == (480, 640, 3)

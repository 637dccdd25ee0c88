"""Camera faults under the service: a busy camera at start and one unplugged mid-run are
retried with backoff while the web view and API stay up, and frames resume when the
camera returns. The Pi camera is the project's one fake (tests/fake_picamera2.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import cv2
import pytest
from fake_picamera2 import make_fake_picamera2
from service_support import NotifySocket

from edge_app.service.config import from_document
from edge_app.service.notify import Notifier
from edge_app.service.service import Service


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def camera_service(tmp_path, test_images, int8_model):
    scene = cv2.imread(str(test_images / "parrot.jpg"))
    picamera2, libcamera, world = make_fake_picamera2(scene, pi=4)
    config = from_document(
        {
            "source": {"spec": "picamera2", "fps": 15.0},
            "model": {"model": str(int8_model), "threads": 1},
            "web": {"port": 0},
            "service": {"state_dir": str(tmp_path), "status_interval": 0.5},
        }
    )
    notify = NotifySocket()
    service = Service(
        config,
        notifier=Notifier({"NOTIFY_SOCKET": notify.address}),
        source_options={"picamera2_module": picamera2, "libcamera_module": libcamera},
    )
    yield service, world, notify
    service.request_stop()
    service.shutdown()
    notify.close()


def test_busy_then_unplugged_camera_is_retried_while_the_api_stays_up(camera_service, caplog):
    service, world, notify = camera_service
    caplog.set_level(logging.INFO)
    world.busy = True  # another program holds the camera
    service.start()  # does not fail: the camera is retried
    serving = threading.Thread(target=service.serve, daemon=True)
    serving.start()
    port = service.web.port

    # Up and honest about it: ready for systemd, API answering, health 503.
    assert "STATUS=camera unavailable: retrying with backoff" in notify.wait_for(
        "READY=1", timeout=15
    )
    assert get(port, "/api/stats")[1]["source_state"] == "retrying"
    status, health = get(port, "/healthz")
    assert status == 503 and health["status"] == "retrying"
    status, body = get(port, "/api/latest")
    assert status == 503 and body["source_state"] == "retrying"

    # The camera is freed: frames and results flow.
    world.busy = False
    wait_for(lambda: get(port, "/api/latest")[0] == 200, 30, "results after the camera freed")
    latest = get(port, "/api/latest")[1]
    assert latest["top"][0]["label"] == "macaw"
    assert get(port, "/healthz")[0] == 200

    # The cable comes out mid-run: retrying again, the API still up.
    world.unplug()
    wait_for(lambda: get(port, "/api/stats")[1]["source_state"] == "retrying", 30, "retrying")
    # Frames are counted by the capture thread before it reports retrying, so the count is
    # final now; a result still in flight may land, but never one without a frame.
    frames = get(port, "/api/stats")[1]["frames"]
    assert get(port, "/api/latest")[0] == 200  # the last result is still served
    time.sleep(1.5)
    stats = get(port, "/api/stats")[1]
    assert stats["frames"] == frames  # no frames while unplugged
    results = stats["results"]
    assert results <= frames

    # And back in: results resume.
    world.plug()
    wait_for(
        lambda: get(port, "/api/stats")[1]["results"] > results + 5, 40, "results after replug"
    )
    assert get(port, "/api/stats")[1]["state"] == "running"

    service.request_stop()
    serving.join(10)
    # Each change of state was logged once, not once per retry.
    messages = [r.getMessage() for r in caplog.records]
    assert sum("source unavailable; retrying" in m for m in messages) == 2
    assert sum("source is back" in m for m in messages) >= 1
    service.shutdown()
    assert world.open_cameras == [] and world.closed == world.opened >= 2  # released

"""`edge-app serve` with events and the motion gate, end to end: events recorded from the
looping demo video, the history API with its cursor, media behind the token, path
traversal refused, and the page in real Chromium: the gallery's thumbnails, the chart,
a click on an event playing its clip, at 1920x1080 and 390x844.

Screenshots go to the test's tmp folder, and also to $EDGE_APP_EVIDENCE when set.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from cdp_support import Browser
from service_support import ServiceProcess, demo_config, free_port, parse_prometheus

TOKEN = "events-token-0123456789"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-events")


@pytest.fixture(scope="module")
def service(demo_video, int8_model, workdir):
    config = demo_config(
        demo_video,
        int8_model,
        workdir / "state",
        free_port(),
        web={"token": TOKEN},
        pipeline={"gate": "motion", "gate_max_interval": 2.0},
        events={"pre_roll_s": 1.0, "post_roll_s": 1.0, "clip_fps": 10.0, "log": "events.jsonl"},
        event=[
            {"name": "parrot", "pattern": "macaw", "min_score": 0.4, "end_after_s": 1.0},
            {"name": "hotdog", "pattern": "hotdog", "min_score": 0.4, "end_after_s": 1.0},
            {"name": "dragonfly", "pattern": "dragonfly", "min_score": 0.4, "end_after_s": 1.0},
        ],
    )
    proc = ServiceProcess(config, workdir, token=TOKEN)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ended(service) -> list[dict]:
    """Wait until the first loop of the video made its three events, clips and all."""

    def three():
        status, page = service.get_json("/api/history?limit=50")
        done = [e for e in page["events"] if e["state"] == "ended" and e["clip"]]
        return done if len({e["name"] for e in done}) == 3 else None

    return service.wait_until(three, 120, "three ended events")


def evidence(path: Path) -> None:
    folder = os.environ.get("EDGE_APP_EVIDENCE")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def test_history_lists_events_newest_first_with_a_cursor(service, ended):
    status, page = service.get_json("/api/history?limit=50")
    assert status == 200
    events = page["events"]
    starts = [e["start"] for e in events]
    assert starts == sorted(starts, reverse=True)
    for event in ended:
        assert event["snapshot"] == f"media/{event['id']}/snapshot.jpg"
        assert event["clip"].startswith(f"media/{event['id']}/clip.")
        assert event["end"] > event["start"] and 0.4 <= event["top_score"] <= 1
    first = service.get_json("/api/history?limit=1")[1]
    assert len(first["events"]) == 1 and first["next"] is not None
    second = service.get_json(f"/api/history?limit=1&before={first['next']}")[1]
    assert second["events"][0]["id"] != first["events"][0]["id"]
    assert second["events"][0]["start"] <= first["events"][0]["start"]
    parrots = service.get_json("/api/history?label=macaw")[1]["events"]
    assert parrots and all("macaw" in e["label"] for e in parrots)
    later = service.get_json(f"/api/history?since={time.time() + 60}")[1]
    assert later["events"] == []
    assert service.get_json("/api/history?limit=x")[0] == 400

    status, stats = service.get_json("/api/stats")
    assert stats["events"]["ended"] >= 3 and stats["events"]["codec"] in ("h264", "vp8", "mjpeg")
    assert stats["gate"]["mode"] == "motion" and 0 <= stats["gate"]["gated_share"] <= 1
    latest = service.get_json("/api/latest")[1]
    assert latest["trigger"] in ("motion", "refresh")
    families = parse_prometheus(service.request("/metrics")[2].decode())
    assert families["edge_app_events_total"]["samples"][0][2] >= 3
    assert families["edge_app_gated_frames_total"]["type"] == "counter"
    # The JSONL log of ended events stays available.
    log = (service.config_path.parent / "state" / "events.jsonl").read_text().splitlines()
    assert len(log) >= 3


def test_media_needs_the_token_and_clips_decode(service, ended, tmp_path):
    event = ended[0]
    status, headers, body = service.request("/" + event["snapshot"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    assert service.request("/" + event["snapshot"], token=None)[0] == 401
    assert service.request("/" + event["clip"], token=None)[0] == 401

    status, headers, clip = service.request("/" + event["clip"])
    assert status == 200 and headers["Content-Type"] == event["clip_type"]
    path = tmp_path / event["clip"].rsplit("/", 1)[1]
    path.write_bytes(clip)
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames >= int((event["end"] - event["start"] + 2.0) * 10) - 1, (frames, event)

    # A byte range, as a video element asks for it.
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
        conn.sendall(
            f"GET /{event['clip']} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        reply = read_all(conn)
    assert reply.startswith(b"HTTP/1.0 206")
    assert f"Content-Range: bytes 10-19/{len(clip)}".encode() in reply
    assert reply.split(b"\r\n\r\n", 1)[1] == clip[10:20]

    # The clip as a JPEG stream, for browsers that cannot play the file.
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
        conn.sendall(
            f"GET /{event['clip_stream']}?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        data = read_all(conn, limit=8 << 20)
    parts = re.findall(rb"Content-Type: image/jpeg\r\nContent-Length: (\d+)", data)
    assert len(parts) == frames


def read_all(conn, limit: int = 4 << 20) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def raw_status(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        reply = read_all(conn)
    return int(reply.split(b" ", 2)[1])


def test_media_paths_outside_the_media_folder_are_refused(service, ended):
    event_id = ended[0]["id"]
    for path in (
        "/media/../index.sqlite3",
        "/media/%2e%2e/index.sqlite3",
        "/media/..%2findex.sqlite3",
        f"/media/{event_id}/../../index.sqlite3",
        f"/media/{event_id}/..%2f..%2findex.sqlite3",
        f"/media/{event_id}/%2e%2e/snapshot.jpg",
        f"/media/{event_id}/snapshot.jpg/..",
        f"/media/{event_id}/config.toml",
        "/media/../../config.toml",
        "/media//etc/passwd",
        "/media/index.sqlite3",
        f"/media/{event_id}x/snapshot.jpg",
    ):
        assert raw_status(service.port, path) == 404, path
    assert raw_status(service.port, f"/media/{event_id}/snapshot.jpg") == 200


def test_stream_is_clean_by_default_and_burned_in_on_request(service, ended):
    def first_jpeg(path: str) -> np.ndarray:
        with socket.create_connection(("127.0.0.1", service.port), timeout=20) as conn:
            conn.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
            )
            data = b""
            while True:
                data += conn.recv(65536)
                match = re.search(rb"Content-Length: (\d+)\r\n\r\n", data)
                if match and len(data) >= match.end() + int(match.group(1)):
                    jpeg = data[match.end() : match.end() + int(match.group(1))]
                    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)

    clean, burned = first_jpeg("/stream.mjpg"), first_jpeg("/stream.mjpg?overlay=1")
    assert clean.shape == burned.shape == (480, 640, 3)
    # The overlay darkens its box to a quarter so its text reads: against the rest of the
    # picture, that box is far darker in the burned-in frame than in the clean one.
    from edge_app.live.overlay import Overlay

    x0, y0, x1, y1 = Overlay("mobilenet_v1_1.0_224_int8", 5).layout(480, 640).box

    def box_share(image: np.ndarray) -> float:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
        inside = grey[y0:y1, x0:x1].mean()
        return inside / max(
            1.0, (grey.sum() - grey[y0:y1, x0:x1].sum()) / (grey.size - (y1 - y0) * (x1 - x0))
        )

    assert box_share(burned) < 0.6 * box_share(clean), (box_share(burned), box_share(clean))


# -- the page in Chromium -----------------------------------------------------------------
PAGE_READY = """
(() => {
  const thumbs = [...document.querySelectorAll('#gallery .event-card img.thumb')];
  const loaded = thumbs.filter((t) => t.complete && t.naturalWidth > 0).length;
  const chart = document.getElementById('chart');
  const px = chart.getContext('2d').getImageData(0, 0, chart.width, chart.height).data;
  let inked = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked++;
  const label = document.getElementById('top-label').textContent;
  return loaded >= 3 && inked > 2000 && label !== 'waiting for the first result'
    ? {loaded, inked, label} : null;
})()
"""


@pytest.mark.parametrize("width,height", [(1920, 1080), (390, 844)])
def test_page_shows_gallery_and_chart_and_a_click_plays_a_clip(
    service, ended, tmp_path, width, height
):
    browser = Browser(tmp_path / "profile")
    try:
        browser.open(service.url(f"/?token={TOKEN}"), width, height, mobile=width < 600)
        ready = browser.wait_for(PAGE_READY, 60, "thumbnails, chart and label")
        assert ready["loaded"] >= 3
        # Scores under 1 % and the background class are never shown.
        shown = browser.evaluate(
            "[...document.querySelectorAll('#predictions .label')].map(e => e.textContent)"
        )
        assert "background" not in shown
        scores = browser.evaluate(
            "[...document.querySelectorAll('#predictions .score')].map(e => e.textContent)"
        )
        assert all(int(s.split()[0]) >= 1 for s in scores), scores
        # Nothing wider than the screen; labels at a readable size.
        assert browser.evaluate("document.documentElement.scrollWidth") <= width
        sizes = browser.evaluate(
            "[...document.querySelectorAll('.event-label, .event-meta, #top-label')]"
            ".map(e => parseFloat(getComputedStyle(e).fontSize))"
        )
        assert min(sizes) >= 13, sizes
        shot = browser.screenshot(tmp_path / f"issue15-page-{width}x{height}.png")
        evidence(shot)
        if width < 600:
            # The gallery, scrolled into view on a phone.
            browser.evaluate("document.getElementById('gallery').scrollIntoView()")
            time.sleep(0.3)
            evidence(browser.screenshot(tmp_path / f"issue15-gallery-{width}x{height}.png"))

        # A click on the first event (a real mouse event at its place on the screen).
        box = browser.evaluate(
            """(() => { const c = [...document.querySelectorAll('#gallery .event-card.ended')].pop();
                c.scrollIntoView({block: 'center'});
                const r = c.getBoundingClientRect();
                return {x: r.left + r.width / 2, y: r.top + r.height / 2, id: c.dataset.id}; })()"""
        )
        browser.click(box["x"], box["y"])
        try:
            playing = browser.wait_for(
                """(() => { const v = document.getElementById('viewer-video');
                const s = document.getElementById('viewer-stream');
                const snap = document.getElementById('viewer-snapshot');
                if (!document.getElementById('viewer').open || !snap.naturalWidth) return null;
                if (!v.hidden && v.currentTime > 0.5 && v.videoWidth === 640)
                  return {how: 'video', t: v.currentTime, src: v.currentSrc};
                if (!s.hidden && s.naturalWidth === 640) return {how: 'frames', src: s.src};
                return null; })()""",
                30,
                "the clip playing",
            )
        except AssertionError as exc:
            state = browser.evaluate(
                """(() => { const v = document.getElementById('viewer-video');
                const s = document.getElementById('viewer-stream');
                return {open: document.getElementById('viewer').open, vh: v.hidden, vs: v.src,
                  t: v.currentTime, rs: v.readyState, err: v.error && v.error.message,
                  sh: s.hidden, ss: s.src, sw: s.naturalWidth,
                  snap: document.getElementById('viewer-snapshot').naturalWidth}; })()"""
            )
            raise AssertionError(f"{exc}; {state}; click at {box}") from None
        # The card under the mouse opened (the gallery may have shifted as a new event
        # came in between finding the card and clicking: the viewer says which opened).
        opened = browser.evaluate("document.getElementById('viewer').dataset.event")
        assert opened in playing["src"]
        history = service.get_json("/api/history?limit=100")[1]["events"]
        assert opened in {e["id"] for e in history if e["clip"]}
        time.sleep(1.5)  # past the 1 s pre-roll: the event itself is on screen
        evidence(browser.screenshot(tmp_path / f"issue15-clip-{width}x{height}.png"))
    finally:
        browser.close()


def test_sighup_rebuilds_the_recorder_and_events_go_on(service, ended):
    import signal

    before = {e["id"] for e in service.get_json("/api/history?limit=100")[1]["events"]}
    text = service.config_path.read_text().replace("post_roll_s = 1.0", "post_roll_s = 1.5")
    assert "post_roll_s = 1.5" in text
    service.config_path.write_text(text)
    service.signal(signal.SIGHUP)
    service.wait_until(
        lambda: "configuration reloaded: recorder" in service.stderr(), 20, "the reload"
    )

    def new_clip():
        events = service.get_json("/api/history?limit=100")[1]["events"]
        return [e for e in events if e["id"] not in before and e["clip"]]

    fresh = service.wait_until(new_clip, 60, "an event recorded after the reload")
    assert service.request("/" + fresh[0]["clip"])[0] == 200
    assert "cannot save the clip" not in service.stderr()
    # The reload let the old recorder finish: no event was left without its clip.
    events = service.get_json("/api/history?limit=100")[1]["events"]
    assert all(e["clip"] for e in events if e["state"] == "ended")

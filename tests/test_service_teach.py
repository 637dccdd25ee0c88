"""The service's Teach panel in real headless Chromium, driven over the DevTools protocol:
teach two classes from the demo video's segments, learn, and see the live label switch
to a taught class without a restart. Plus the API's refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from service_support import ServiceProcess, demo_config, free_port

TOKEN = "teach-token-0123456789"


@pytest.fixture(scope="module")
def service(tmp_path_factory, demo_video, int8_model):
    workdir = tmp_path_factory.mktemp("teach-serve")
    config = demo_config(demo_video, int8_model, workdir / "state", free_port(),
                         web={"token": TOKEN})  # fmt: skip
    proc = ServiceProcess(config, workdir, token=TOKEN)
    proc.wait_for_result()
    yield proc
    proc.stop()


def post(
    service, path: str, token: str | None = TOKEN, header: bool = True
) -> tuple[int, dict | str]:
    request = urllib.request.Request(service.url(path), method="POST", data=b"")
    if header:
        request.add_header("X-Edge-App", "1")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body


class DevTools:
    """Headless Chromium with one page, driven through its DevTools websocket."""

    def __init__(self, tmp_path: Path):
        websocket = pytest.importorskip("websocket")  # websocket-client (test extra)
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            pytest.skip("chromium is not installed (scripts/install-test-deps.sh installs it)")
        port = free_port()
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1280,900", f"--remote-debugging-port={port}",
             "--remote-allow-origins=*", f"--user-data-dir={tmp_path / 'profile'}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Chromium's DevTools never came up"
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30)
        self._id = 0

    def send(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_js(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what} (last: {value!r})")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(10)


LABEL = "document.getElementById('top-label').textContent"


def test_teach_two_classes_in_the_page_and_the_live_label_switches(service, tmp_path):
    browser = DevTools(tmp_path)
    try:
        browser.send("Page.navigate", url=service.url(f"/?token={TOKEN}"))
        browser.wait_js("!!document.getElementById('teach-burst')", 30, "the Teach panel")

        def teach(shown_label: str, name: str) -> None:
            # Wait for the segment (the base model names it), then burst-capture it.
            browser.wait_js(f"{LABEL} === {json.dumps(shown_label)}", 60, shown_label)
            browser.js(f"document.getElementById('teach-class').value = {json.dumps(name)}")
            browser.js("document.getElementById('teach-burst').click()")
            browser.wait_js(
                f"[...document.querySelectorAll('#teach-counts li')]"
                f".some(li => li.textContent === {json.dumps(name + ': 10')})",
                30,
                f"10 photos of {name}",
            )

        teach("macaw", "parrot")  # frames 60-119 of the demo
        teach("hotdog", "hot dog")  # frames 120-179
        browser.js("document.getElementById('teach-train').click()")
        # Learning runs beside inference: results keep coming while it trains.
        during = []
        deadline = time.monotonic() + 180
        while browser.js("document.getElementById('teach-status').dataset.state") != "done":
            assert time.monotonic() < deadline, "training did not finish"
            _, teach_now = service.get_json("/api/teach")
            if teach_now["state"] == "training":
                _, stats = service.get_json("/api/stats")
                during.append((stats["results"], stats["state"]))
            assert teach_now["state"] != "failed", teach_now["message"]
            time.sleep(0.2)
        assert during, "the training was never seen running"
        assert all(state == "running" for _, state in during), during
        if len(during) > 1:
            assert during[-1][0] > during[0][0], during
        status = browser.js("document.getElementById('teach-status').textContent")
        assert "switched to it" in status and "learned" in status
        # The live label (from the running pipeline, no restart) becomes a taught class.
        label = browser.wait_js(
            f"['parrot', 'hot dog'].includes({LABEL}) && {LABEL}", 60, "a taught label"
        )
        assert label in ("parrot", "hot dog")
    finally:
        browser.close()
    _, teach_status = service.get_json("/api/teach")
    assert teach_status["model"] == "learned" and teach_status["trainings"] == 1
    assert {c["name"]: c["photos"] for c in teach_status["classes"]} == {
        "parrot": 10,
        "hot dog": 10,
    }
    _, stats = service.get_json("/api/stats")
    assert stats["model"] == "learned"
    # Both segments come round again in the loop: each reads as its taught class.
    seen = set()

    def both_seen():
        _, latest = service.get_json("/api/latest")
        seen.add(latest["top"][0]["label"])
        return {"parrot", "hot dog"} <= seen

    service.wait_until(both_seen, 60, "both taught classes on the live label")


def test_teach_api_refusals(service):
    status, body = post(service, "/api/teach/capture?class=x", token=None)
    assert status == 401
    status, body = post(service, "/api/teach/train", header=False)  # a cross-site form post
    assert status == 403 and "X-Edge-App" in body
    status, body = post(service, "/api/teach/capture?class=../up")
    assert status == 400 and "bad class name" in body["error"]
    status, body = post(service, "/api/teach/capture?class=a&count=500")
    assert status == 400 and "count must be 1 to 50" in body["error"]
    status, body = post(service, "/api/nope")
    assert status == 404

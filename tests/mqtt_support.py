"""Helpers for the MQTT tests: a real mosquitto on a loopback port, restartable, and a
paho subscriber that records what arrives."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest


class Broker:
    """mosquitto on a loopback port with a generated config, restartable on that port."""

    def __init__(self, folder: Path, port: int):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            pytest.skip("mosquitto is not installed (scripts/install-test-deps.sh installs it)")
        self.port = port
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.1)
        raise AssertionError("mosquitto did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Subscriber:
    """A paho client recording every message under ``filters`` as
    (topic, payload, retained, arrival time)."""

    def __init__(self, port: int, filters):
        self.filters = [filters] if isinstance(filters, str) else list(filters)
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the broker did not confirm the subscription"

    def _on_connect(self, client, userdata, flags, rc, properties) -> None:
        client.subscribe([(f, 1) for f in self.filters])

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append(
                (message.topic, bytes(message.payload), bool(message.retain), time.monotonic())
            )

    def publish(self, topic: str, payload, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def wait_for(self, topic_end: str, predicate=lambda p: True, timeout: float = 30, after=0):
        """The first payload on a topic ending with ``topic_end`` (from message number
        ``after``) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for topic, payload, _retained, _t in self.messages[after:]:
                    if topic.endswith(topic_end) and predicate(payload):
                        return payload
            time.sleep(0.1)
        with self.lock:
            seen = [(t, p[:80]) for t, p, _, _ in self.messages[-5:]]
        raise AssertionError(f"no {topic_end} message within {timeout} s; last: {seen}")

    def wait_until(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def latest(self) -> dict[str, bytes]:
        """The newest payload of every topic seen."""
        with self.lock:
            return {topic: payload for topic, payload, _, _ in self.messages}

    def topics(self, after: int = 0) -> list[str]:
        with self.lock:
            return [topic for topic, _, _, _ in self.messages[after:]]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def json_of(payload: bytes) -> dict:
    return json.loads(payload) if payload else {}

"""The broker-side view of a fleet, for `edge-app mqtt watch` and `edge-app mqtt unpublish`.

``Fleet`` folds ``<prefix>/+/state`` and ``<prefix>/+/availability`` messages into one
row per device. ``BrokerSession`` is a short-lived paho client that connects (or fails
in one line), subscribes, and hands messages over; ``unpublish`` clears everything a
device left retained on the broker: its discovery configs and its own topics.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

from edge_app.errors import BrokerError
from edge_app.service.ha_discovery import Topics, discovery_configs
from edge_app.service.mqtt_out import _is_failure, _reason_text, make_client
from edge_app.service.watches import Watches

log = logging.getLogger(__name__)

COLUMNS = (
    ("device", "device_id", 22),
    ("avail", "availability", 7),
    ("state", "state", 9),
    ("label", "label", 24),
    ("score", "score", 5),
    ("fps", "fps", 5),
    ("age", "age_s", 5),
)


class Fleet:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.devices: dict[str, dict] = {}

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> bool:
        """Fold one message in; True when a row changed."""
        if not topic.startswith(self.prefix + "/"):
            return False
        device_id, _, leaf = topic[len(self.prefix) + 1 :].rpartition("/")
        if not device_id or leaf not in ("state", "availability"):
            return False
        now = time.time() if now is None else now
        row = self.devices.setdefault(
            device_id,
            {"device_id": device_id, "availability": None, "state": None, "label": None,
             "score": None, "fps": None, "model": None, "paused": None, "seen": None},
        )  # fmt: skip
        if leaf == "availability":
            row["availability"] = payload.decode("utf-8", "replace").strip() or None
        else:
            try:
                state = json.loads(payload) if payload else {}
            except ValueError:
                return False
            if not isinstance(state, dict):
                return False
            row["state"] = state.get("state") or state.get("source_state")
            for key in ("label", "score", "fps", "model", "paused"):
                row[key] = state.get(key)
            # The result's own wall-clock time: a retained state may be old news.
            stamp = state.get("time")
            row["seen"] = (stamp if isinstance(stamp, int | float) else now) if state else None
        if row["availability"] is None and row["seen"] is None and row["state"] is None:
            del self.devices[device_id]  # both topics cleared (unpublished)
        return True

    def rows(self, now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        out = []
        for device_id in sorted(self.devices):
            row = dict(self.devices[device_id])
            if row["availability"] == "offline":
                row["state"] = "offline"
            seen = row.pop("seen")
            row["age_s"] = round(max(0.0, now - seen), 1) if seen is not None else None
            out.append(row)
        return out

    def table(self, now: float | None = None) -> str:
        def cell(value, width: int) -> str:
            if value is None:
                text = "-"
            elif isinstance(value, float):
                text = f"{value:.2f}" if value < 10 else f"{value:.1f}"
            else:
                text = str(value).split(",")[0]
            return text[:width].ljust(width)

        lines = [" ".join(title.ljust(width) for title, _, width in COLUMNS).rstrip()]
        for row in self.rows(now):
            lines.append(" ".join(cell(row[key], width) for _, key, width in COLUMNS).rstrip())
        return "\n".join(lines)


class BrokerSession:
    """A connected paho client whose messages go to ``on_message(topic, payload, retain)``
    (paho's thread)."""

    def __init__(self, mqtt_config, on_message: Callable[[str, bytes, bool], None], filters):
        self.config = mqtt_config
        self.filters = list(filters)
        self._subscribed = threading.Event()
        self._pending: set[int] = set()
        self.last_message = time.monotonic()
        self.client = make_client(mqtt_config, f"edge-app-cli-{os.getpid()}-{time.time_ns()}")

        def deliver(client, userdata, message) -> None:
            self.last_message = time.monotonic()
            try:
                on_message(message.topic, bytes(message.payload), bool(message.retain))
            except Exception:  # never stop paho's thread
                log.exception("message on %s not handled", message.topic)

        def on_subscribe(client, userdata, mid, *rest) -> None:
            self._pending.discard(mid)
            if not self._pending:
                self._subscribed.set()

        self.client.on_message = deliver
        self.client.on_subscribe = on_subscribe

    def open(self, timeout: float = 10.0) -> None:
        where = f"{self.config.host}:{self.config.port}"
        connected = threading.Event()
        failure: list[str] = []

        def on_connect(client, userdata, flags, reason, *rest) -> None:
            if _is_failure(reason):
                failure.append(_reason_text(reason))
            connected.set()

        self.client.on_connect = on_connect
        try:
            self.client.connect(self.config.host, self.config.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot reach the MQTT broker {where}: {exc}") from None
        self.client.loop_start()
        if not connected.wait(timeout):
            self.close()
            raise BrokerError(f"the MQTT broker {where} did not answer within {timeout:g} s")
        if failure:
            self.close()
            raise BrokerError(f"the MQTT broker {where} refused us: {failure[0]}")
        for topic in self.filters:
            _, mid = self.client.subscribe(topic, qos=1)
            self._pending.add(mid)
        if self.filters and not self._subscribed.wait(timeout):
            self.close()
            raise BrokerError(f"the MQTT broker {where} did not confirm the subscription")

    def settle(self, quiet_s: float = 0.4, limit_s: float = 3.0) -> None:
        """Wait until the retained messages have arrived (quiet for ``quiet_s``)."""
        end = time.monotonic() + limit_s
        self.last_message = max(self.last_message, time.monotonic())
        while time.monotonic() < end and time.monotonic() - self.last_message < quiet_s:
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def fleet_filters(prefix: str) -> list[str]:
    return [f"{prefix}/+/state", f"{prefix}/+/availability"]


def unpublish(config, *, wait_s: float = 3.0) -> tuple[list[str], bool]:
    """Clear every retained message of ``config``'s device (discovery configs and
    ``<prefix>/<device_id>/...``). (topics cleared, whether the device looked online)."""
    mqtt_config = config.mqtt
    topics = Topics(mqtt_config.prefix, config.device_id, mqtt_config.discovery_prefix)
    found: dict[str, bytes] = {}

    def collect(topic: str, payload: bytes, retain: bool) -> None:
        if retain and payload:
            found[topic] = payload

    session = BrokerSession(mqtt_config, collect, [topics.config_filter, topics.base + "/#"])
    session.open()
    try:
        session.settle(limit_s=wait_s)
        watches = Watches()
        for i, trigger in enumerate(config.trigger):
            watches.add_trigger(config.trigger_name(i), trigger.pattern, 0.0, 0.0)
        expected = discovery_configs(
            topics, model="", watches=list(watches), commands=mqtt_config.commands
        )
        targets = sorted(set(found) | {topic for topic, _ in expected})
        online = found.get(topics.availability, b"") == b"online"
        infos = [session.client.publish(topic, b"", qos=1, retain=True) for topic in targets]
        for info in infos:
            info.wait_for_publish(5.0)
    finally:
        session.close()
    return targets, online

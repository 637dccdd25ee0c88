"""MQTT output: the device's state as JSON, plus an availability topic with a last will.

Topics (``prefix`` and ``device_id`` from the config):
  ``<prefix>/<device_id>/state``         the newest result (the `run --json` record plus
                                         label, score, device_id, source_state, model;
                                         ``top`` and ``label`` follow results.human_top:
                                         no background, nothing under 1 %, "uncertain");
                                         sent when the top label or the source state
                                         changes and every ``interval`` seconds
  ``<prefix>/<device_id>/availability``  ``online`` (retained) once connected; the broker
                                         sends the retained will ``offline`` if the
                                         service vanishes, and a clean stop sends it too

paho-mqtt's network thread connects in the background and reconnects with backoff
(1 s doubling to 30 s); while the broker is away states are not queued (the next one
after reconnecting is current anyway) and nothing raises. Connection changes are
logged once each.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from edge_app.errors import ConfigError
from edge_app.results import UNCERTAIN, human_top

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
ONLINE, OFFLINE = "online", "offline"


def _reason_text(reason) -> str:
    if hasattr(reason, "getName"):
        return str(reason.getName())
    try:
        return mqtt.connack_string(int(reason)) if reason else "success"
    except (TypeError, ValueError):
        return str(reason)


def _is_failure(reason) -> bool:
    if hasattr(reason, "is_failure"):
        return bool(reason.is_failure)
    return bool(reason)


class MqttPublisher:
    def __init__(
        self,
        config,
        device_id: str,
        status: Callable[[], dict] | None = None,
    ):
        """``config`` is an MqttConfig; ``status()`` gives source_state and model."""
        self.config = config
        self.device_id = device_id
        self.status = status or (lambda: {})
        base = f"{config.prefix}/{device_id}"
        self.state_topic = f"{base}/state"
        self.availability_topic = f"{base}/availability"
        self.connected = False
        self.published = 0
        self.connects = 0
        self._was_connected: bool | None = None  # for logging state changes once
        self._latest = None
        self._last_label: object = object()
        self._last_state: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()

        self.client = self._make_client()
        self.client.connect_async(config.host, config.port, keepalive=config.keepalive)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="edge-app-mqtt", daemon=True)
        self._thread.start()

    # -- client set-up -----------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        config = self.config
        client_id = config.client_id or f"edge-app-{self.device_id}"
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        else:  # paho-mqtt 1.6 (Debian bookworm's python3-paho-mqtt)
            client = mqtt.Client(client_id=client_id)
        client.enable_logger(logging.getLogger("edge_app.service.paho"))
        logging.getLogger("edge_app.service.paho").setLevel(logging.ERROR)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(100)
        client.will_set(self.availability_topic, OFFLINE, qos=config.qos, retain=True)
        if config.username:
            client.username_pw_set(config.username, config.password or None)
        tls = config.tls
        if tls.enabled:
            try:
                client.tls_set(
                    ca_certs=tls.ca or None,
                    certfile=tls.cert or None,
                    keyfile=tls.key or None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls: {exc}") from None
            client.tls_insecure_set(tls.insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        return client

    # -- paho callbacks (network thread); *rest spans paho 1 and 2 signatures ------------
    def _on_connect(self, client, userdata, flags, reason, *rest) -> None:
        if _is_failure(reason):
            self._log_change(False, f"broker refused the connection: {_reason_text(reason)}")
            return
        self.connected = True
        self.connects += 1
        self._log_change(True, f"MQTT connected to {self.config.host}:{self.config.port}")
        client.publish(self.availability_topic, ONLINE, qos=self.config.qos, retain=True)
        self._wake.set()  # publish the current state now

    def _on_disconnect(self, client, userdata, *args) -> None:
        self.connected = False
        if not self._stop.is_set():
            reason = args[1] if len(args) >= 2 else (args[0] if args else "")
            self._log_change(
                False,
                f"MQTT connection to {self.config.host}:{self.config.port} lost "
                f"({_reason_text(reason)}); reconnecting with backoff",
            )

    def _on_connect_fail(self, client, userdata, *rest) -> None:
        self._log_change(
            False,
            f"MQTT broker {self.config.host}:{self.config.port} unreachable; retrying with backoff",
        )

    def _log_change(self, connected: bool, message: str) -> None:
        if self._was_connected is connected:
            return
        self._was_connected = connected
        (log.info if connected else log.warning)(message)

    # -- the pipeline side -------------------------------------------------------------
    def submit(self, result, frame=None) -> None:
        """Pipeline listener: keep the newest result; wake the publisher on a new label."""
        self._latest = result
        label = result.top[0].label if result.top else None
        if label != self._last_label:
            self._last_label = label
            self._wake.set()

    # -- the publisher thread ------------------------------------------------------------
    def state(self) -> dict | None:
        result = self._latest
        status = self.status()
        if result is None:
            return {"device_id": self.device_id, "label": None, "score": None, **status}
        shown = human_top(result.top)  # a dashboard is read by people: the human rule
        top = shown[0] if shown else None
        return {
            **result.to_json(),
            "top": [p.to_json() for p in shown],
            "label": top.label if top else UNCERTAIN,
            "score": round(top.score, 5) if top else None,
            "device_id": self.device_id,
            **status,
        }

    def publish_state(self) -> bool:
        if not self.connected:
            return False
        state = self.state()
        payload = json.dumps(state, separators=(",", ":"))
        with self._lock:
            info = self.client.publish(
                self.state_topic, payload, qos=self.config.qos, retain=self.config.retain
            )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False  # lost the connection just now; on_connect publishes again
        self.published += 1
        self._last_state = state.get("source_state")
        return True

    def _run(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            woken = self._wake.wait(min(1.0, max(0.0, next_due - time.monotonic())))
            if self._stop.is_set():
                break
            now = time.monotonic()
            source_state = self.status().get("source_state")
            changed = source_state != self._last_state and self._last_state is not None
            if woken or changed or now >= next_due:
                self._wake.clear()
                if self.publish_state():
                    next_due = now + self.config.interval
                elif now >= next_due:
                    next_due = now + 1.0

    def close(self, timeout: float = 1.0) -> None:
        """Say offline (a clean stop does not fire the will), then disconnect."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self.connected:
            try:
                info = self.client.publish(
                    self.availability_topic, OFFLINE, qos=self.config.qos, retain=True
                )
                info.wait_for_publish(timeout / 2)
            except (RuntimeError, ValueError):
                pass  # the connection went away meanwhile
        self.client.disconnect()
        # loop_stop joins paho's thread, which may sit in a connect timeout: bound it.
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(timeout / 2)

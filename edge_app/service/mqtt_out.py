"""MQTT output: state, watched labels, events and snapshots; Home Assistant discovery;
commands. Topics (``<base>`` is ``<mqtt.prefix>/<device_id>``):

  ``<base>/state``          JSON: the newest result (the `run --json` record plus label,
                            score, device_id, source_state, state, paused, thresholds,
                            model; ``top`` and ``label`` follow results.human_top: no
                            background, nothing under 1 %, "uncertain"); sent when
                            the top label, the service state or a command changes
                            it, and every ``interval`` seconds
  ``<base>/availability``   ``online`` (retained) once connected; the broker sends the
                            retained will ``offline`` if the service vanishes, and a
                            clean stop sends it too
  ``<base>/trigger/<name>`` ``ON``/``OFF`` (retained) per trigger, see watches.py;
  ``<base>/label/<slug>``   ... and per label the event recorder watches
  ``<base>/<kind>/<name>/snapshot``  that watch's newest snapshot, JPEG bytes (retained)
  ``<base>/snapshot``       the newest snapshot of any watch or command (retained)
  ``<base>/events``         ``{"type": "new"|"update"|"end", "before": ..., "after": ...}``
  ``<base>/set/...``        commands, see mqtt_commands.py
  ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``  see ha_discovery.py

paho-mqtt's network thread connects in the background and reconnects with backoff
(1 s doubling to 30 s); everything else runs on this publisher's own thread, so nothing
here ever makes the inference thread wait. While the broker is away nothing is queued
(the next state after reconnecting is current anyway) and nothing raises; each
connection change is logged once, and paho's own logging is left off (it repeats an
error line per retry). On every connect, and when Home Assistant's status topic says
``online``, the discovery configs and the current states are published again, so a
broker or Home Assistant restart brings everything back.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_app.errors import ConfigError
from edge_app.results import UNCERTAIN, human_top
from edge_app.service.ha_discovery import OFFLINE, ONLINE, Topics, discovery_configs
from edge_app.service.mqtt_commands import CommandError, parse_command
from edge_app.service.watches import TRIGGER, Watch, Watches

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
EVENT_KINDS = ("new", "update", "end")
MAX_OPEN_EVENTS = 100  # events whose "before" is remembered until their "end"
MAX_SNAPSHOT_BYTES = 8_000_000
SNAPSHOT_KEYS = ("snapshot_jpeg", "snapshot", "best_snapshot", "snapshot_path")


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


def make_client(config, client_id: str = "") -> mqtt.Client:
    """A paho client with the config's credentials and TLS (not connected)."""
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    else:  # paho-mqtt 1.6 (Debian bookworm's python3-paho-mqtt)
        client = mqtt.Client(client_id=client_id)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
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
    return client


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)  # paths, datetimes


def event_json(event: dict) -> dict:
    """The event as plain JSON: snapshot bytes left out, paths as strings."""
    plain = {k: v for k, v in event.items() if not isinstance(v, bytes | bytearray | memoryview)}
    return json.loads(json.dumps(plain, default=_jsonable))


def event_snapshot(event: dict, given: bytes | None) -> tuple[bytes | None, str]:
    """(JPEG bytes, fingerprint) of an event's best snapshot: ``given``, else the first
    of SNAPSHOT_KEYS holding bytes or a file path."""
    if given:
        return bytes(given), f"bytes:{len(given)}:{hash(bytes(given))}"
    for key in SNAPSHOT_KEYS:
        value = event.get(key)
        if isinstance(value, bytes | bytearray | memoryview) and value:
            data = bytes(value)
            return data, f"bytes:{len(data)}:{hash(data)}"
        if isinstance(value, str | Path) and str(value):
            path = Path(value)
            try:
                stat = path.stat()
                if stat.st_size > MAX_SNAPSHOT_BYTES:
                    return None, ""
                return path.read_bytes(), f"file:{path}:{stat.st_mtime_ns}:{stat.st_size}"
            except OSError as exc:
                log.debug("event snapshot %s unreadable: %s", path, exc)
                return None, ""
    return None, ""


class MqttPublisher:
    def __init__(
        self,
        config,
        device_id: str,
        status: Callable[[], dict] | None = None,
        *,
        control=None,
        triggers=(),
        labels=(),
        model: str | None = None,
    ):
        """``config`` is an MqttConfig; ``status()`` gives source_state and model;
        ``control`` is a ServiceControl (commands, snapshots); ``triggers`` are
        (name, pattern, min_score, hold_s) and ``labels`` the event recorder's watched
        labels, each one binary sensor."""
        from edge_app.service.device_info import device_model

        self.config = config
        self.device_id = device_id
        self.status = status or (lambda: {})
        self.control = control
        self.model = model or device_model()
        self.topics = Topics(config.prefix, device_id, config.discovery_prefix)
        self.state_topic = self.topics.state
        self.availability_topic = self.topics.availability
        self.watches = Watches(self._on_watch_change)
        for name, pattern, min_score, hold_s in triggers:
            self.watches.add_trigger(name, pattern, min_score, hold_s)
        for label in labels:
            self.watches.add_label(label)
        self.connected = False
        self.published = 0
        self.connects = 0
        self.announced = 0  # discovery rounds sent
        self.events_published = 0
        self.commands_done = 0
        self.commands_refused = 0
        self._refusals_logged: set[str] = set()
        self._was_connected: bool | None = None  # for logging state changes once
        self._latest = None
        self._last_label: object = object()
        self._last_state: tuple | None = None
        self._want_state = False
        self._events: OrderedDict[object, tuple[dict, str]] = OrderedDict()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
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
        client = make_client(config, config.client_id or f"edge-app-{self.device_id}")
        client.max_queued_messages_set(100)
        client.will_set(self.availability_topic, OFFLINE, qos=config.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
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
        if self.config.discovery:
            client.subscribe(self.topics.ha_status, qos=1)
            # Our configs left retained by an earlier run: stale ones (a trigger since
            # removed, commands since turned off) are cleared; see _prune.
            client.subscribe(self.topics.config_filter, qos=1)
        if self.config.commands:
            client.subscribe(self.topics.commands + "#", qos=1)
        self._do(self._announce)

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

    def _on_message(self, client, userdata, message) -> None:
        # Hand over and return: an exception here would stop paho's thread.
        try:
            topic = message.topic
            if topic == self.topics.ha_status:
                if message.payload.strip() == ONLINE.encode():
                    self._do(self._announce)
            elif topic.endswith("/config") and message.retain and message.payload:
                self._do(self._prune, topic)
            elif topic.startswith(self.topics.commands):
                tail = topic[len(self.topics.commands) :]
                self._do(self._command, tail, bytes(message.payload), bool(message.retain))
        except Exception:
            log.exception("MQTT message on %s not handled", getattr(message, "topic", "?"))

    def _log_change(self, connected: bool, message: str) -> None:
        if self._was_connected is connected:
            return
        self._was_connected = connected
        (log.info if connected else log.warning)(message)

    # -- the pipeline side -------------------------------------------------------------
    def submit(self, result, frame=None) -> None:
        """Pipeline listener: keep the newest result; wake the publisher on a new label."""
        self._latest = result
        if len(self.watches):
            self.watches.update(result, time.monotonic())
        label = result.top[0].label if result.top else None
        if label != self._last_label:
            self._last_label = label
            self._want_state = True
            self._wake.set()

    # -- the event recorder side -------------------------------------------------------
    def publish_event(self, kind: str, event: dict, snapshot_jpeg: bytes | None = None) -> None:
        """Event listener (any thread, returns at once): publish ``{"type", "before",
        "after"}`` on ``<base>/events``, turn the label's binary sensor on (``new``) or
        off (``end``), and put the event's best snapshot on the label's snapshot topic."""
        if kind not in EVENT_KINDS:
            self._refuse("event", f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
            return
        self._do(self._event, kind, dict(event), snapshot_jpeg)

    # -- the publisher thread ------------------------------------------------------------
    def _do(self, fn, *args) -> None:
        self._jobs.put((fn, args))
        self._wake.set()

    def _publish(self, topic: str, payload, *, retain: bool) -> bool:
        if not self.connected:
            return False
        with self._lock:
            info = self.client.publish(topic, payload, qos=self.config.qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def state(self) -> dict:
        result = self._latest
        status = self.status()
        paused = bool(self.control is not None and self.control.paused)
        extra = {
            "device_id": self.device_id,
            **status,
            "state": "paused" if paused else status.get("source_state"),
            "paused": paused,
            "thresholds": self.watches.thresholds(),
        }
        if result is None:
            return {"label": None, "score": None, "fps": None, "latency_ms": None,
                    "inference_ms": None, **extra}  # fmt: skip
        shown = human_top(result.top)  # a dashboard is read by people: the human rule
        top = shown[0] if shown else None
        return {
            **result.to_json(),
            "top": [p.to_json() for p in shown],
            "label": top.label if top else UNCERTAIN,
            "score": round(top.score, 5) if top else None,
            **extra,
        }

    def publish_state(self) -> bool:
        if not self.connected:
            return False
        state = self.state()
        payload = json.dumps(state, separators=(",", ":"))
        if not self._publish(self.state_topic, payload, retain=self.config.retain):
            return False  # lost the connection just now; on_connect publishes again
        self.published += 1
        self._last_state = (state.get("state"), state.get("source_state"))
        return True

    def _announce(self) -> None:
        """Discovery configs, then every current state (after a connect, or when Home
        Assistant comes online)."""
        if not self.connected:
            return
        if self.config.discovery:
            for topic, payload in self.discovery_configs():
                self._publish(topic, json.dumps(payload, separators=(",", ":")), retain=True)
            self.announced += 1
        for watch in self.watches:
            self._publish_watch(watch)
        self._want_state = True

    def _prune(self, topic: str) -> None:
        """Clear a retained config of this device that the current entities lack."""
        if topic not in {t for t, _ in self.discovery_configs()}:
            if self._publish(topic, b"", retain=True):
                log.info("MQTT discovery: removed the stale entity %s", topic)

    def discovery_configs(self) -> list[tuple[str, dict]]:
        return discovery_configs(
            self.topics,
            model=self.model,
            watches=list(self.watches),
            commands=self.config.commands,
            command_secret=self.config.command_secret,
            qos=self.config.qos,
        )

    def _publish_watch(self, watch: Watch) -> None:
        topic = self.topics.watch(watch.kind, watch.name)
        self._publish(topic, "ON" if watch.on else "OFF", retain=True)

    def _on_watch_change(self, watch: Watch, on: bool) -> None:
        # Any thread: publishing (and a trigger's snapshot) happen on the publisher's.
        self._do(self._watch_changed, watch, on)

    def _watch_changed(self, watch: Watch, on: bool) -> None:
        self._publish_watch(watch)
        if on and watch.kind == TRIGGER and self.control is not None:
            jpeg = self.control.snapshot()
            if jpeg:
                self._publish_snapshot(watch, jpeg)

    def _publish_snapshot(self, watch: Watch | None, jpeg: bytes) -> None:
        if watch is not None:
            self._publish(self.topics.watch_snapshot(watch.kind, watch.name), jpeg, retain=True)
        self._publish(self.topics.snapshot, jpeg, retain=True)

    def _event(self, kind: str, event: dict, snapshot_jpeg: bytes | None) -> None:
        after = event_json(event)
        key = after.get("id")
        before, published_snapshot = self._events.get(key, (after, ""))
        if kind == "end":
            self._events.pop(key, None)
        else:
            self._events[key] = (after, published_snapshot)
            self._events.move_to_end(key)
            while len(self._events) > MAX_OPEN_EVENTS:
                self._events.popitem(last=False)
        payload = {"type": kind, "before": before, "after": after}
        if self._publish(
            self.topics.events, json.dumps(payload, separators=(",", ":")), retain=False
        ):
            self.events_published += 1
        # The watch is the event's name (a `[[event]]` entry, declared at start-up), else
        # the label it saw.
        label = event.get("name") or event.get("label")
        if not isinstance(label, str) or not label:
            return
        watch, new = self.watches.add_label(label)
        if new and self.config.discovery and self.connected:
            for topic, config in self.discovery_configs():
                if config["unique_id"].endswith(f"_{watch.kind}_{watch.name}"):
                    self._publish(topic, json.dumps(config, separators=(",", ":")), retain=True)
        self.watches.set(watch, kind != "end")
        jpeg, fingerprint = event_snapshot(event, snapshot_jpeg)
        if jpeg and fingerprint != published_snapshot:
            self._publish_snapshot(watch, jpeg)
            if kind != "end" and key in self._events:
                self._events[key] = (after, fingerprint)

    def _refuse(self, what: str, reason: str) -> None:
        self.commands_refused += what != "event"
        if reason not in self._refusals_logged:
            self._refusals_logged.add(reason)
            log.warning("MQTT %s ignored: %s (further ones like it are not logged)", what, reason)

    def _command(self, tail: str, payload: bytes, retained: bool) -> None:
        try:
            command = parse_command(
                tail, payload, secret=self.config.command_secret, retained=retained
            )
            control = self.control
            if control is None:
                raise CommandError("this service has nothing to command")
            if command.name == "inference":
                (control.resume if command.value else control.pause)()
            elif command.name == "threshold":
                if self.watches.get(TRIGGER, command.target) is None:
                    raise CommandError(f"no trigger named {command.target!r}")
                control.set_threshold(command.target, command.value)
                self.watches.set_threshold(command.target, command.value)
            elif command.name == "snapshot":
                jpeg = control.snapshot()
                if not jpeg:
                    raise CommandError("snapshot: no frame yet")
                self._publish_snapshot(None, jpeg)
        except CommandError as exc:
            self._refuse(f"command set/{tail[:60]}", exc.reason)
            return
        self.commands_done += 1
        log.info("MQTT command: %s", command.describe())
        self._want_state = True  # the resulting state, at once

    def _run(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(min(1.0, max(0.0, next_due - time.monotonic())))
            if self._stop.is_set():
                break
            self._wake.clear()
            while True:
                try:
                    fn, args = self._jobs.get_nowait()
                except queue.Empty:
                    break
                try:
                    fn(*args)
                except Exception:  # one bad job must not end the publisher
                    log.exception("MQTT publisher: %s failed", getattr(fn, "__name__", fn))
            now = time.monotonic()
            self.watches.expire(now)
            status = self.status()
            paused = bool(self.control is not None and self.control.paused)
            current = (
                "paused" if paused else status.get("source_state"),
                status.get("source_state"),
            )
            changed = self._last_state is not None and current != self._last_state
            if self._want_state or changed or now >= next_due:
                self._want_state = False
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

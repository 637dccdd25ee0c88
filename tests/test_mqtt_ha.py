"""Home Assistant discovery, commands and fleets: `edge-app serve` processes (the demo
video as their camera) on a real mosquitto, watched the way Home Assistant and
`edge-app mqtt watch` see them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

from mqtt_support import Broker, Subscriber, json_of
from service_support import ServiceProcess, demo_config, free_port

PREFIX = "edge-app-test"
HA = "homeassistant"

# What Home Assistant's MQTT documentation requires of a discovered entity, per component
# (home-assistant.io/integrations/<component>.mqtt/, the variables marked "required";
# MQTT_RO_SCHEMA / MQTT_RW_SCHEMA in its mqtt integration): sensors need a state_topic,
# controls a command_topic, an image exactly one of image_topic and url_topic. The
# discovery page adds: the topic is <prefix>/<component>/[<node_id>/]<object_id>/config
# with ids of [a-zA-Z0-9_-] only, the payload a JSON object, and a device block (which
# needs unique_id, and identifiers or connections).
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "image": set(),
    "switch": {"command_topic"},
    "button": {"command_topic"},
    "number": {"command_topic"},
}
EXACTLY_ONE = {"image": ("image_topic", "url_topic")}
CONFIG_TOPIC = re.compile(rf"^{HA}/([a-z_]+)/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_-]+)/config$")
TOPIC_KEYS = ("state_topic", "json_attributes_topic", "image_topic", "command_topic",
              "availability_topic")  # fmt: skip


def check_discovery(topic: str, payload: bytes, device_id: str, state: dict) -> dict:
    """One discovery message, checked as Home Assistant would take it."""
    match = CONFIG_TOPIC.match(topic)
    assert match, f"not a discovery config topic: {topic}"
    component, node_id, object_id = match.groups()
    assert node_id == device_id
    config = json.loads(payload)
    assert isinstance(config, dict)
    assert component in REQUIRED, f"{topic}: unexpected component"
    for key in REQUIRED[component]:
        assert isinstance(config.get(key), str) and config[key], f"{topic}: no {key}"
    if component in EXACTLY_ONE:
        assert sum(key in config for key in EXACTLY_ONE[component]) == 1, topic
    assert config["unique_id"] == f"edge-app_{device_id}_{object_id}"
    device = config["device"]
    assert device["identifiers"] == [f"edge-app_{device_id}"]
    assert device["name"] == device_id and device["model"] and device["sw_version"]
    assert config["availability_topic"] == f"{PREFIX}/{device_id}/availability"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    for key in TOPIC_KEYS:
        if key in config:  # the device's own topics only: devices cannot collide
            assert config[key].startswith(f"{PREFIX}/{device_id}/"), (topic, key)
            assert not set("+#") & set(config[key])
    if config.get("state_class") == "measurement":
        assert config["unit_of_measurement"]
    # Every field a template reads is in the state the device publishes.
    for template in (config.get("value_template", ""), config.get("json_attributes_template", "")):
        for field in re.findall(r"value_json\.(\w+)", template):
            assert field in state, f"{topic}: the state has no {field!r}"
    return config


def service_for(tmp_path, demo_video, int8_model, port, device_id, **mqtt) -> ServiceProcess:
    folder = tmp_path / device_id
    folder.mkdir()
    sections = {
        "mqtt": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": port,
            "prefix": PREFIX,
            "device_id": device_id,
            "qos": 1,
            "interval": 1.0,
            "keepalive": 5,
            **mqtt,
        }
    }
    if device_id.endswith("-a") or mqtt.get("commands"):
        # The parrot segment of the demo video: its binary sensor goes on and off.
        sections["trigger"] = [{"name": "parrot", "pattern": "macaw", "min_score": 0.3,
                                "cooldown_s": 1.0, "dir": "snapshots"}]  # fmt: skip
    config = demo_config(demo_video, int8_model, folder / "state", free_port(), **sections)
    return ServiceProcess(config, folder)


def configs_of(subscriber: Subscriber, device_id: str) -> dict[str, bytes]:
    return {
        topic: payload
        for topic, payload in subscriber.latest().items()
        if topic.startswith(f"{HA}/") and f"/{device_id}/" in topic and payload
    }


def is_result_state(payload: bytes) -> bool:
    """A state with a result, once the service calls itself running (the first result
    may go out a health tick before that)."""
    state = json_of(payload)
    return state.get("label") is not None and state.get("state") == "running"


def edge_app(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *args], capture_output=True, text=True, timeout=timeout
    )


A_ENTITIES = {
    "sensor/cam-a/label", "sensor/cam-a/fps", "sensor/cam-a/latency", "sensor/cam-a/invoke",
    "sensor/cam-a/state", "image/cam-a/snapshot", "binary_sensor/cam-a/trigger_parrot",
}  # fmt: skip
B_ENTITIES = {e.replace("cam-a", "cam-b") for e in A_ENTITIES} - {
    "binary_sensor/cam-b/trigger_parrot"
}


def entity_names(configs: dict[str, bytes]) -> set[str]:
    return {topic.split("/", 1)[1].rsplit("/", 1)[0] for topic in configs}


def test_discovery_second_device_home_assistant_restart_broker_restart_unpublish(
    tmp_path, demo_video, int8_model
):
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    subscriber = Subscriber(port, [f"{HA}/#", f"{PREFIX}/#"])
    a = service_for(tmp_path, demo_video, int8_model, port, "cam-a")
    b = None
    try:
        subscriber.wait_for(f"{PREFIX}/cam-a/availability", lambda p: p == b"online", 60)
        state = json_of(subscriber.wait_for(f"{PREFIX}/cam-a/state", is_result_state, 60))
        assert state["state"] == "running" and state["paused"] is False
        assert state["thresholds"] == {"parrot": 0.3}
        subscriber.wait_until(
            lambda: entity_names(configs_of(subscriber, "cam-a")) == A_ENTITIES, 20, "A's configs"
        )
        a_configs = configs_of(subscriber, "cam-a")
        for topic, payload in a_configs.items():
            check_discovery(topic, payload, "cam-a", state)
        # Retained: a subscriber arriving later (Home Assistant starting) gets them all.
        late = Subscriber(port, f"{HA}/#")
        late.wait_until(lambda: configs_of(late, "cam-a") == a_configs, 10, "retained configs")
        with late.lock:
            assert all(retained for _, _, retained, _ in late.messages)
        late.close()
        label = json_of(a_configs[f"{HA}/sensor/cam-a/label/config"])
        assert label["json_attributes_topic"] == f"{PREFIX}/cam-a/state"
        fps = json_of(a_configs[f"{HA}/sensor/cam-a/fps/config"])
        assert fps["state_class"] == "measurement" and fps["unit_of_measurement"] == "fps"
        image = json_of(a_configs[f"{HA}/image/cam-a/snapshot/config"])
        assert image["image_topic"] == f"{PREFIX}/cam-a/snapshot"

        # The trigger's binary sensor: on while the parrot is in the picture, with a
        # snapshot of it, then off again once it has been gone for the cooldown.
        sensor = f"{PREFIX}/cam-a/trigger/parrot"
        on_at = subscriber.count()
        subscriber.wait_for(sensor, lambda p: p == b"ON", 60)
        jpeg = subscriber.wait_for(f"{sensor}/snapshot", timeout=20, after=on_at)
        assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        subscriber.wait_for(sensor, lambda p: p == b"OFF", 30, after=on_at)

        # A second device adds its own entities and touches none of the first's.
        before_b = subscriber.count()
        b = service_for(tmp_path, demo_video, int8_model, port, "cam-b")
        state_b = json_of(subscriber.wait_for(f"{PREFIX}/cam-b/state", is_result_state, 60))
        subscriber.wait_until(
            lambda: entity_names(configs_of(subscriber, "cam-b")) == B_ENTITIES, 20, "B's configs"
        )
        for topic, payload in configs_of(subscriber, "cam-b").items():
            check_discovery(topic, payload, "cam-b", state_b)
        touched = [t for t in subscriber.topics(before_b) if t.startswith(f"{HA}/")]
        assert touched and all("/cam-b/" in t for t in touched), touched
        assert configs_of(subscriber, "cam-a") == a_configs
        unique = [json_of(p)["unique_id"] for p in subscriber.latest().values() if p and
                  p.startswith(b"{") and b'"unique_id"' in p]  # fmt: skip
        assert len(unique) == len(set(unique)) == len(A_ENTITIES) + len(B_ENTITIES)

        # Home Assistant restarts (its birth message): both devices publish again.
        seen = subscriber.count()
        subscriber.publish(f"{HA}/status", b"online")
        for device in ("cam-a", "cam-b"):
            subscriber.wait_for(f"{HA}/sensor/{device}/label/config", timeout=20, after=seen)
        assert configs_of(subscriber, "cam-a") == a_configs

        # The broker restarts without persistence, forgetting every retained message:
        # the services reconnect and bring discovery, availability and state back.
        subscriber.close()
        broker.stop()
        broker.start()
        subscriber = Subscriber(port, [f"{HA}/#", f"{PREFIX}/#"])
        for device, names in (("cam-a", A_ENTITIES), ("cam-b", B_ENTITIES)):
            subscriber.wait_for(f"{PREFIX}/{device}/availability", lambda p: p == b"online", 60)
            subscriber.wait_for(f"{PREFIX}/{device}/state", is_result_state, 30)
            subscriber.wait_until(
                lambda d=device, n=names: entity_names(configs_of(subscriber, d)) == n,
                30,
                f"{device}'s configs after the broker restart",
            )
        assert configs_of(subscriber, "cam-a") == a_configs
        assert subscriber.wait_for(sensor, timeout=10) in (b"ON", b"OFF")

        # A stopped device is unpublished: its entities go, the other's stay.
        assert a.stop() == 0
        done = edge_app("mqtt", "unpublish", "--config", str(a.config_path))
        assert done.returncode == 0, done.stderr
        assert "cleared" in done.stdout and "warning" not in done.stderr
        late = Subscriber(port, [f"{HA}/#", f"{PREFIX}/#"])
        late.wait_for(f"{HA}/sensor/cam-b/label/config", timeout=10)
        time.sleep(1.0)  # every retained message arrives at once after subscribing
        assert not [t for t in late.topics() if "cam-a" in t], late.topics()
        assert entity_names(configs_of(late, "cam-b")) == B_ENTITIES
        late.close()
        for service in (a, b):
            assert "ERROR" not in service.stderr(), service.stderr()
    finally:
        subscriber.close()
        for service in (a, b):
            if service is not None:
                service.stop()
        broker.stop()


def command(subscriber: Subscriber, device_id: str, name: str, value, secret: str | None):
    payload = json.dumps({"secret": secret, "value": value}) if secret else str(value)
    subscriber.publish(f"{PREFIX}/{device_id}/set/{name}", payload.encode())


def test_commands_pause_resume_threshold_snapshot_and_refusals(tmp_path, demo_video, int8_model):
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    subscriber = Subscriber(port, [f"{PREFIX}/#", f"{HA}/#"])
    secret = "feeder-secret-42"
    # A retained pause left on the broker must not pause the device at each (re)connect.
    stale = json.dumps({"secret": secret, "value": "OFF"})
    subscriber.publish(f"{PREFIX}/cam-c/set/inference", stale, retain=True)
    service = service_for(
        tmp_path, demo_video, int8_model, port, "cam-c", commands=True, command_secret=secret
    )
    state_topic = f"{PREFIX}/cam-c/state"
    try:
        subscriber.wait_for(state_topic, is_result_state, 60)
        service.wait_until(lambda: "retained command" in service.stderr(), 20, "the refusal")
        assert service.get_json("/api/stats")[1]["paused"] is False
        subscriber.publish(f"{PREFIX}/cam-c/set/inference", b"", retain=True)  # clear it
        # The controls are discovered too, and carry the secret in their command template.
        switch = json_of(subscriber.wait_for(f"{HA}/switch/cam-c/inference/config", timeout=20))
        assert switch["command_topic"] == f"{PREFIX}/cam-c/set/inference"
        assert secret in switch["command_template"]
        number = json_of(subscriber.wait_for(f"{HA}/number/cam-c/threshold_parrot/config"))
        assert (number["min"], number["max"]) == (0.0, 1.0)
        subscriber.wait_for(f"{HA}/button/cam-c/take_snapshot/config")

        seen = subscriber.count()
        command(subscriber, "cam-c", "inference", "OFF", secret)
        paused = json_of(subscriber.wait_for(
            state_topic, lambda p: json_of(p).get("paused") is True, 20, after=seen))  # fmt: skip
        assert paused["state"] == "paused"
        stats = service.get_json("/api/stats")[1]
        assert stats["paused"] is True
        held = stats["results"]
        time.sleep(1.5)
        assert service.get_json("/api/stats")[1]["results"] == held  # inference is held

        # Refused: a wrong secret, a bad value, an unknown trigger; each
        # reason is logged once however often it comes, and nothing changes.
        for _ in range(3):
            command(subscriber, "cam-c", "inference", "ON", "wrong-secret-00")
            command(subscriber, "cam-c", "threshold/parrot", "high", secret)
            command(subscriber, "cam-c", "threshold/nosuch", 0.5, secret)
        service.wait_until(lambda: "no trigger named" in service.stderr(), 20, "the refusals")
        log = service.stderr()
        assert log.count("missing or wrong secret") == 1, log
        assert log.count("threshold wants a number") == 1, log
        assert log.count("no trigger named 'nosuch'") == 1, log
        assert service.get_json("/api/stats")[1]["paused"] is True

        seen = subscriber.count()
        command(subscriber, "cam-c", "threshold/parrot", 0.9, secret)
        subscriber.wait_for(state_topic, lambda p: json_of(p).get("thresholds") == {"parrot": 0.9},
                            20, after=seen)  # fmt: skip

        seen = subscriber.count()
        command(subscriber, "cam-c", "snapshot", "PRESS", secret)
        jpeg = subscriber.wait_for(f"{PREFIX}/cam-c/snapshot", timeout=20, after=seen)
        assert jpeg.startswith(b"\xff\xd8")

        seen = subscriber.count()
        command(subscriber, "cam-c", "inference", "ON", secret)
        running = json_of(subscriber.wait_for(
            state_topic, lambda p: json_of(p).get("paused") is False, 20, after=seen))  # fmt: skip
        assert running["state"] == "running"
        service.wait_until(
            lambda: service.get_json("/api/stats")[1]["results"] > held, 30, "inference again"
        )
        log = service.stderr()
        for line in ("MQTT command: pause inference", "MQTT command: resume inference",
                     "trigger parrot threshold 0.9", "MQTT command: take a snapshot"):  # fmt: skip
            assert log.count(line) == 1, log
    finally:
        subscriber.close()
        service.stop()
        broker.stop()


def test_three_devices_one_killed_goes_offline_and_watch_lists_all(
    tmp_path, demo_video, int8_model
):
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    subscriber = Subscriber(port, [f"{PREFIX}/#"])
    names = ("fleet-1", "fleet-2", "fleet-3")
    services = [service_for(tmp_path, demo_video, int8_model, port, n) for n in names]
    watch = ("mqtt", "watch", "--host", "127.0.0.1", "--port", str(port), "--prefix", PREFIX)
    try:
        for name in names:
            subscriber.wait_for(f"{PREFIX}/{name}/state", is_result_state, 90)
        done = edge_app(*watch, "--once", "--json")
        assert done.returncode == 0, done.stderr
        rows = {row["device_id"]: row for row in json.loads(done.stdout)}
        assert set(rows) == set(names)
        for row in rows.values():
            assert row["availability"] == "online" and row["state"] == "running"
            assert row["label"] and row["fps"] is not None

        seen = subscriber.count()
        services[1].signal(signal.SIGKILL)
        will = subscriber.wait_for(f"{PREFIX}/fleet-2/availability", timeout=20, after=seen)
        assert will == b"offline"  # the broker's last will
        killed_at = subscriber.count()
        for name in ("fleet-1", "fleet-3"):  # the others carry on
            subscriber.wait_for(f"{PREFIX}/{name}/state", is_result_state, 20, after=killed_at)
        latest = subscriber.latest()
        assert latest[f"{PREFIX}/fleet-1/availability"] == b"online"
        assert latest[f"{PREFIX}/fleet-3/availability"] == b"online"

        done = edge_app(*watch, "--once")
        assert done.returncode == 0, done.stderr
        lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
        assert set(lines) == set(names)
        assert lines["fleet-2"][1:3] == ["offline", "offline"]
        assert lines["fleet-1"][1:3] == ["online", "running"]
    finally:
        subscriber.close()
        for service in services:
            service.stop()
        broker.stop()


def test_recorded_events_reach_their_topic_binary_sensor_and_snapshot(
    tmp_path, demo_video, int8_model
):
    """The event recorder's episodes on MQTT: a binary sensor per `[[event]]` announced at
    start-up, `new` then `end` on the events topic (frigate's before/after), the sensor on
    while the episode lasts and its best snapshot on the watch's snapshot topic."""
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    subscriber = Subscriber(port, [f"{HA}/#", f"{PREFIX}/#"])
    folder = tmp_path / "cam-e"
    folder.mkdir()
    sections = {
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "prefix": PREFIX,
                 "device_id": "cam-e", "qos": 1, "interval": 1.0, "keepalive": 5},
        "event": [{"name": "parrots", "pattern": "macaw", "min_score": 0.3,
                   "consensus": 2, "end_after_s": 1.0}],
        "events": {"pre_roll_s": 0.5, "post_roll_s": 0.5},
    }  # fmt: skip
    config = demo_config(demo_video, int8_model, folder / "state", free_port(), **sections)
    service = ServiceProcess(config, folder)
    try:
        sensor_config = f"{HA}/binary_sensor/cam-e/label_parrots/config"
        subscriber.wait_until(
            lambda: sensor_config in subscriber.latest(), 60, "the event's binary sensor config"
        )
        assert json_of(subscriber.latest()[sensor_config])["state_topic"] == (
            f"{PREFIX}/cam-e/label/parrots"
        )
        new = json_of(
            subscriber.wait_for(f"{PREFIX}/cam-e/events", lambda p: json_of(p)["type"] == "new", 90)
        )
        assert new["type"] == "new" and new["after"]["label"].startswith("macaw")
        assert new["after"]["end"] is None
        event_id = new["after"]["id"]
        subscriber.wait_for(f"{PREFIX}/cam-e/label/parrots", lambda p: p == b"ON", 20)
        jpeg = subscriber.wait_for(f"{PREFIX}/cam-e/label/parrots/snapshot", timeout=20)
        assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        end = json_of(
            subscriber.wait_for(
                f"{PREFIX}/cam-e/events",
                lambda p: json_of(p)["type"] == "end" and json_of(p)["after"]["id"] == event_id,
                60,
            )
        )
        assert end["before"]["id"] == end["after"]["id"] == event_id
        assert end["after"]["end"] is not None
        subscriber.wait_for(f"{PREFIX}/cam-e/label/parrots", lambda p: p == b"OFF", 20)
    finally:
        service.stop()
        subscriber.close()
        broker.stop()

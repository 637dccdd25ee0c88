"""The MQTT side's parts without a service: command parsing, the default device id, the
fleet table, and the event publisher against a real mosquitto with real event dicts."""

from __future__ import annotations

import json
import logging
import time

import pytest
from mqtt_support import Broker, Subscriber, json_of
from service_support import free_port

from edge_app.results import LiveResult, Prediction
from edge_app.service.config import MqttConfig
from edge_app.service.device_info import default_device_id, device_model
from edge_app.service.mqtt_commands import Command, CommandError, parse_command
from edge_app.service.mqtt_fleet import Fleet
from edge_app.service.mqtt_out import MqttPublisher
from edge_app.service.watches import Watches


# -- commands --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tail", "payload", "expected"),
    [
        ("inference", b"OFF", Command("inference", False)),
        ("inference", b"on", Command("inference", True)),
        ("inference", b'{"value": "pause"}', Command("inference", False)),
        ("pause", b"", Command("inference", False)),
        ("resume", b"anything", Command("inference", True)),
        ("snapshot", b"PRESS", Command("snapshot")),
        ("threshold/birds", b"0.75", Command("threshold", 0.75, "birds")),
        ("threshold/birds", b'{"value": 0.2}', Command("threshold", 0.2, "birds")),
    ],
)
def test_commands_are_parsed(tail, payload, expected):
    assert parse_command(tail, payload) == expected


@pytest.mark.parametrize(
    ("tail", "payload", "reason"),
    [
        ("inference", b"maybe", "inference wants ON or OFF"),
        ("threshold/birds", b"1.5", "a number from 0 to 1"),
        ("threshold/birds", b"nan", "a number from 0 to 1"),
        ("threshold/birds", b"abc", "a number from 0 to 1"),
        ("threshold", b"0.5", "unknown command"),
        ("reboot", b"", "unknown command"),
        ("inference", b"{not json", "not JSON"),
        ("inference", b"\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_commands_are_refused_with_a_reason(tail, payload, reason):
    with pytest.raises(CommandError) as caught:
        parse_command(tail, payload)
    assert reason in caught.value.reason


def test_a_command_secret_must_be_carried_and_retained_commands_are_refused():
    secret = "correct-horse"
    good = json.dumps({"secret": secret, "value": "OFF"}).encode()
    assert parse_command("inference", good, secret=secret) == Command("inference", False)
    for payload in (b"OFF", b'{"value": "OFF"}', b'{"secret": "wrong-horse", "value": "OFF"}'):
        with pytest.raises(CommandError, match="secret"):
            parse_command("inference", payload, secret=secret)
    with pytest.raises(CommandError, match="retained"):
        parse_command("inference", b"OFF", retained=True)


# -- identity --------------------------------------------------------------------------
def test_the_default_device_id_is_stable_and_differs_between_machines(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_text("3d1219c7a0b94e5f8f0a1c2d3e4f5a6b\n")
    two.write_text("0b1ed5e6f7a84b9c8d7e6f5a4b3c2d1e\n")
    first = default_device_id([one])
    assert first == default_device_id([one])  # stable
    assert first != default_device_id([two])  # same host name, another machine
    assert "3d1219" not in first  # the machine id itself is not exposed
    host_only = default_device_id([tmp_path / "missing"])
    assert first.startswith(host_only + "-") and len(first) == len(host_only) + 7


def test_the_device_model_is_the_boards_string_or_the_machine(tmp_path):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert device_model(model) == "Raspberry Pi 4 Model B Rev 1.4"
    assert device_model(tmp_path / "absent")  # e.g. x86_64


# -- trigger watches -------------------------------------------------------------------
def Result(*pairs) -> LiveResult:  # noqa: N802 - reads like the type it makes
    top = [Prediction(i, label, score) for i, (label, score) in enumerate(pairs)]
    return LiveResult(0, 0.0, top, inference_ms=5.0, latency_ms=9.0, fps=20.0, camera_fps=30.0)


def test_a_trigger_watch_is_on_while_its_label_scores_and_off_after_its_hold():
    changes = []
    watches = Watches(lambda watch, on: changes.append((watch.name, on)))
    watches.add_trigger("birds", "chickadee|jay", 0.5, hold_s=2.0)
    watches.update(Result(("chickadee", 0.4)), now=0.0)
    assert changes == []  # below min_score
    watches.update(Result(("tabby", 0.6), ("chickadee", 0.55)), now=1.0)  # anywhere in top-k
    assert changes == [("birds", True)]
    watches.update(Result(("tabby", 0.9)), now=2.5)
    assert changes == [("birds", True)]  # still inside the hold
    watches.update(Result(("jay", 0.7)), now=2.9)  # seen again: the hold restarts
    watches.expire(now=4.5)
    assert changes == [("birds", True)]
    watches.expire(now=4.9)  # results stopped coming (a pause): off on the timer
    assert changes == [("birds", True), ("birds", False)]
    assert watches.set_threshold("birds", 0.8) and watches.thresholds() == {"birds": 0.8}
    watches.update(Result(("jay", 0.7)), now=10.0)
    assert changes[-1] == ("birds", False)  # 0.7 is below the new threshold


# -- fleet table -----------------------------------------------------------------------
def test_the_fleet_table_folds_state_and_availability_per_device():
    fleet = Fleet("edge-app")
    now = 1000.0
    state = {"label": "chickadee", "score": 0.91, "fps": 14.2, "state": "running"}
    assert fleet.handle("edge-app/cam-1/state", json.dumps(state).encode(), now)
    assert fleet.handle("edge-app/cam-1/availability", b"online", now)
    assert fleet.handle("edge-app/cam-2/availability", b"offline", now)
    assert fleet.handle("edge-app/cam-2/state", json.dumps(state).encode(), now - 5)
    assert not fleet.handle("edge-app/cam-1/trigger/birds", b"ON", now)
    rows = {row["device_id"]: row for row in fleet.rows(now)}
    assert rows["cam-1"]["state"] == "running" and rows["cam-1"]["fps"] == 14.2
    assert rows["cam-2"]["state"] == "offline" and rows["cam-2"]["age_s"] == 5.0
    table = fleet.table(now).splitlines()
    assert table[0].split() == ["device", "avail", "state", "label", "score", "fps", "age"]
    assert table[1].split()[:4] == ["cam-1", "online", "running", "chickadee"]
    # Both topics cleared (edge-app mqtt unpublish): the device leaves the table.
    fleet.handle("edge-app/cam-2/availability", b"", now)
    fleet.handle("edge-app/cam-2/state", b"", now)
    assert [row["device_id"] for row in fleet.rows(now)] == ["cam-1"]


# -- the event publisher ---------------------------------------------------------------
PREFIX = "edge-app-test"


def test_events_reach_their_topics_with_before_after_sensor_and_snapshot(
    tmp_path, test_images, caplog
):
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    subscriber = Subscriber(port, [f"{PREFIX}/#", "homeassistant/#"])
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, prefix=PREFIX, qos=1)
    publisher = MqttPublisher(config, "events-cam", labels=["chickadee"])
    base = f"{PREFIX}/events-cam"
    first_jpeg = (test_images / "parrot.jpg").read_bytes()
    second_jpeg = (test_images / "cat_720p.jpg").read_bytes()
    try:
        sensor = subscriber.wait_for(
            "homeassistant/binary_sensor/events-cam/label_chickadee/config", timeout=20
        )
        assert json_of(sensor)["state_topic"] == f"{base}/label/chickadee"
        assert subscriber.wait_for(f"{base}/label/chickadee", timeout=10) == b"OFF"

        start = time.time()
        event = {
            "id": "1733050000.123-chickadee",
            "label": "chickadee",
            "start": start,
            "end": None,
            "top_score": 0.81,
            "snapshot": str(tmp_path / "best.jpg"),
        }
        (tmp_path / "best.jpg").write_bytes(first_jpeg)
        publisher.publish_event("new", event)
        new = json_of(subscriber.wait_for(f"{base}/events", timeout=10))
        assert new["type"] == "new" and new["before"] == new["after"]
        assert new["after"]["id"] == event["id"] and new["after"]["end"] is None
        assert subscriber.wait_for(f"{base}/label/chickadee", lambda p: p == b"ON", 10)
        assert subscriber.wait_for(f"{base}/label/chickadee/snapshot", timeout=10) == first_jpeg
        assert subscriber.wait_for(f"{base}/snapshot", timeout=10) == first_jpeg

        seen = subscriber.count()
        publisher.publish_event("update", {**event, "top_score": 0.93}, snapshot_jpeg=second_jpeg)
        update = json_of(subscriber.wait_for(f"{base}/events", timeout=10, after=seen))
        assert update["type"] == "update"
        assert update["before"]["top_score"] == 0.81 and update["after"]["top_score"] == 0.93
        got = subscriber.wait_for(f"{base}/label/chickadee/snapshot", timeout=10, after=seen)
        assert got == second_jpeg

        seen = subscriber.count()
        publisher.publish_event("end", {**event, "top_score": 0.93, "end": start + 4.0})
        end = json_of(subscriber.wait_for(f"{base}/events", timeout=10, after=seen))
        assert end["type"] == "end" and end["after"]["end"] == start + 4.0
        assert end["before"]["top_score"] == 0.93
        assert subscriber.wait_for(f"{base}/label/chickadee", lambda p: p == b"OFF", 10, seen)

        # A label first seen in an event gets its binary sensor then.
        publisher.publish_event("new", {"id": "e2", "label": "macaw", "start": start,
                                        "end": None, "top_score": 0.7})  # fmt: skip
        assert subscriber.wait_for(
            "homeassistant/binary_sensor/events-cam/label_macaw/config", timeout=10
        )
        assert subscriber.wait_for(f"{base}/label/macaw", lambda p: p == b"ON", 10)

        with caplog.at_level(logging.WARNING, logger="edge_app.service.mqtt_out"):
            publisher.publish_event("started", event)
            publisher.publish_event("started", event)
        assert sum("event kind 'started'" in r.message for r in caplog.records) == 1
        assert publisher.events_published == 4
    finally:
        publisher.close()
        subscriber.close()
        broker.stop()


def test_entities_a_device_no_longer_has_are_removed_at_its_next_start(tmp_path):
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    subscriber = Subscriber(port, "homeassistant/#")
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, prefix=PREFIX, qos=1)
    old = "homeassistant/binary_sensor/prune-cam/trigger_birds/config"
    kept = "homeassistant/sensor/prune-cam/label/config"
    first = MqttPublisher(config, "prune-cam", triggers=[("birds", "jay", 0.5, 1.0)])
    try:
        subscriber.wait_for(old, timeout=20)
        first.close()
        seen = subscriber.count()
        second = MqttPublisher(config, "prune-cam")  # the trigger was removed since
        try:
            assert subscriber.wait_for(old, timeout=20, after=seen) == b""  # removed
            subscriber.wait_for(kept, timeout=20, after=seen)
            assert subscriber.latest()[kept]  # still there
        finally:
            second.close()
    finally:
        subscriber.close()
        broker.stop()


def test_new_mqtt_keys_are_checked_and_the_secret_is_masked(tmp_path):
    import subprocess
    import sys

    from edge_app.errors import ConfigError
    from edge_app.service.config import from_document

    with pytest.raises(ConfigError, match="command_secret must be at least 8"):
        from_document({"mqtt": {"command_secret": "short"}})
    with pytest.raises(ConfigError, match="discovery_prefix must not be empty"):
        from_document({"mqtt": {"discovery_prefix": ""}})
    with pytest.raises(ConfigError, match="discovery_prefix"):
        from_document({"mqtt": {"discovery_prefix": "home/#"}})
    path = tmp_path / "config.toml"
    path.write_text('[mqtt]\ncommands = true\ncommand_secret = "feeder-secret-42"\n')
    shown = subprocess.run(
        [sys.executable, "-m", "edge_app", "config", "show", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "feeder-secret-42" not in shown.stdout
    assert json.loads(shown.stdout)["mqtt"]["command_secret"] == "***"

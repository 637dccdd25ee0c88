"""MQTT output against a real mosquitto broker: states on label change and interval,
availability with a last will, and reconnection when the broker goes away and returns."""

from __future__ import annotations

import json
import signal
import time

from mqtt_support import Broker, Subscriber
from service_support import ServiceProcess, demo_config, free_port

PREFIX = "edge-app-test"
DEVICE = "feeder-cam"
RUN_JSON_KEYS = {"frame", "time", "top", "inference_ms", "latency_ms", "fps", "camera_fps"}


def device_subscriber(port: int) -> Subscriber:
    return Subscriber(port, f"{PREFIX}/{DEVICE}/#")


def is_state(payload: bytes) -> bool:
    state = json.loads(payload)
    return state.get("label") is not None


def start_service(tmp_path, demo_video, int8_model, port, name) -> ServiceProcess:
    folder = tmp_path / name
    folder.mkdir()
    config = demo_config(
        demo_video,
        int8_model,
        folder / "state",
        free_port(),
        mqtt={
            "enabled": True,
            "host": "127.0.0.1",
            "port": port,
            "prefix": PREFIX,
            "device_id": DEVICE,
            "qos": 1,
            "interval": 1.0,
            "keepalive": 5,
        },
    )
    return ServiceProcess(config, folder)


def test_states_reach_the_broker_and_survive_a_broker_restart(tmp_path, demo_video, int8_model):
    port = free_port()
    broker = Broker(tmp_path, port)
    service = start_service(tmp_path, demo_video, int8_model, port, "main")
    subscriber = None
    try:
        # The broker is not there yet: the service runs anyway.
        service.wait_for_result()
        assert service.get_json("/api/stats")[1]["mqtt"]["connected"] is False

        broker.start()
        subscriber = device_subscriber(port)
        online = subscriber.wait_for("/availability", lambda p: p == b"online", timeout=40)
        assert online == b"online"
        state = json.loads(subscriber.wait_for("/state", is_state, timeout=20))
        assert RUN_JSON_KEYS <= state.keys()
        assert state["device_id"] == DEVICE and state["source_state"] == "running"
        assert state["label"] == state["top"][0]["label"]
        assert state["model"] == "mobilenet_v1_1.0_224_int8"

        # States keep coming (interval 1 s, plus label changes).
        seen = subscriber.count()
        subscriber.wait_for("/state", is_state, timeout=10, after=seen)

        # The broker goes away: the service keeps running and serving.
        subscriber.close()
        subscriber = None
        broker.stop()
        service.wait_until(
            lambda: service.get_json("/api/stats")[1]["mqtt"]["connected"] is False,
            20,
            "the service to notice the broker is gone",
        )
        time.sleep(2)  # a few reconnect attempts fail meanwhile
        assert service.get_json("/api/latest")[0] == 200

        # It comes back: the service reconnects and publishes again.
        broker.start()
        subscriber = device_subscriber(port)
        subscriber.wait_for("/availability", lambda p: p == b"online", timeout=60)
        subscriber.wait_for("/state", is_state, timeout=20)
        stats = service.get_json("/api/stats")[1]["mqtt"]
        assert stats["connected"] and stats["connects"] == 2

        # Each connection change was logged once, not once per retry.
        log = service.stderr()
        assert log.count("MQTT connected to") == 2
        assert log.count("lost") + log.count("unreachable") <= 2, log
        assert "ERROR" not in log, log  # paho's own per-retry error lines stay silent

        # The service dies without a goodbye: the broker sends its last will.
        seen = subscriber.count()
        service.signal(signal.SIGKILL)
        will = subscriber.wait_for("/availability", lambda p: p == b"offline", 20, after=seen)
        assert will == b"offline"
    finally:
        if subscriber is not None:
            subscriber.close()
        service.stop()
        broker.stop()


def test_a_clean_stop_leaves_offline_retained(tmp_path, demo_video, int8_model):
    port = free_port()
    broker = Broker(tmp_path, port)
    broker.start()
    service = start_service(tmp_path, demo_video, int8_model, port, "clean")
    try:
        subscriber = device_subscriber(port)
        subscriber.wait_for("/state", is_state, timeout=60)
        subscriber.close()
        assert service.stop() == 0
        # A new subscriber gets the retained availability and the retained last state.
        late = device_subscriber(port)
        assert late.wait_for("/availability", lambda p: True, timeout=10) == b"offline"
        assert is_state(late.wait_for("/state", lambda p: True, timeout=10))
        with late.lock:
            assert all(retained for _, _, retained, _ in late.messages)
        late.close()
    finally:
        service.stop()
        broker.stop()

"""Home Assistant MQTT discovery: the retained config messages that make a device's
entities appear in Home Assistant by themselves.

Each entity is one retained JSON message on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` (node_id: the device id,
object_id: the entity), with a ``unique_id`` of ``edge-app_<device_id>_<object_id>``, the
shared ``device`` block, and availability on the service's last-will topic. Every
entity reads the one JSON state topic through a ``value_template``, so a state message
updates all of them at once. An empty retained message on the same topic removes the
entity (``edge-app mqtt unpublish``).

Home Assistant's ids allow only ``[a-zA-Z0-9_-]``: other characters of a device id
(``.``) become ``_``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edge_app import __version__
from edge_app.service.watches import TRIGGER

ONLINE, OFFLINE = "online", "offline"


def ha_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, from ``<prefix>/<device_id>``."""

    prefix: str
    device_id: str
    discovery_prefix: str = "homeassistant"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    def watch(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{name}"

    def watch_snapshot(self, kind: str, name: str) -> str:
        return f"{self.base}/{kind}/{name}/snapshot"

    @property
    def commands(self) -> str:
        return f"{self.base}/set/"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    @property
    def node_id(self) -> str:
        return ha_id(self.device_id)

    def config(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    @property
    def config_filter(self) -> str:
        """A subscription matching every config of this device."""
        return f"{self.discovery_prefix}/+/{self.node_id}/+/config"


def device_block(device_id: str, model: str) -> dict:
    block = {
        "identifiers": [f"edge-app_{ha_id(device_id)}"],
        "name": device_id,
        "model": model,
        "sw_version": __version__,
    }
    if model.startswith("Raspberry Pi"):
        block["manufacturer"] = "Raspberry Pi Ltd"
    return block


def _jinja_string(text: str) -> str:
    """A Jinja string literal (JSON's quoting is valid Jinja)."""
    return json.dumps(text)


def discovery_configs(
    topics: Topics,
    *,
    model: str,
    watches=(),
    commands: bool = False,
    command_secret: str = "",
    qos: int = 0,
) -> list[tuple[str, dict]]:
    """(config topic, payload) for every entity of this device."""
    device = device_block(topics.device_id, model)
    node = topics.node_id

    def entity(component: str, object_id: str, name: str, **keys) -> tuple[str, dict]:
        payload = {
            "name": name,
            "unique_id": f"edge-app_{node}_{object_id}",
            "device": device,
            "origin": {"name": "edge-app", "sw_version": __version__},
            "availability_topic": topics.availability,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": qos,
            **keys,
        }
        return topics.config(component, object_id), payload

    def command_template(value: str) -> dict:
        if not command_secret:
            return {}
        return {
            "command_template": f'{{"secret": {_jinja_string(command_secret)}, "value": {value}}}'
        }

    state = topics.state
    configs = [
        entity(
            "sensor",
            "label",
            "Label",
            state_topic=state,
            value_template="{{ value_json.label }}",
            json_attributes_topic=state,
            json_attributes_template=(
                "{{ {'score': value_json.score, 'top': value_json.top} | tojson }}"
            ),
            icon="mdi:label-outline",
        ),
        entity(
            "sensor",
            "fps",
            "Inference FPS",
            state_topic=state,
            value_template="{{ value_json.fps }}",
            unit_of_measurement="fps",
            state_class="measurement",
            suggested_display_precision=1,
            icon="mdi:speedometer",
        ),
        entity(
            "sensor",
            "latency",
            "Latency",
            state_topic=state,
            value_template="{{ value_json.latency_ms }}",
            unit_of_measurement="ms",
            device_class="duration",
            state_class="measurement",
            suggested_display_precision=0,
        ),
        entity(
            "sensor",
            "invoke",
            "Invoke time",
            state_topic=state,
            value_template="{{ value_json.inference_ms }}",
            unit_of_measurement="ms",
            device_class="duration",
            state_class="measurement",
            suggested_display_precision=1,
            entity_category="diagnostic",
        ),
        entity(
            "sensor",
            "state",
            "Service state",
            state_topic=state,
            value_template="{{ value_json.state }}",
            icon="mdi:state-machine",
            entity_category="diagnostic",
        ),
        entity(
            "image",
            "snapshot",
            "Snapshot",
            image_topic=topics.snapshot,
            content_type="image/jpeg",
        ),
    ]
    for watch in watches:
        configs.append(
            entity(
                "binary_sensor",
                f"{watch.kind}_{ha_id(watch.name)}",
                watch.title,
                state_topic=topics.watch(watch.kind, watch.name),
                payload_on="ON",
                payload_off="OFF",
                device_class="occupancy",
            )
        )
    if commands:
        configs.append(
            entity(
                "switch",
                "inference",
                "Inference",
                command_topic=topics.commands + "inference",
                state_topic=state,
                value_template="{{ 'OFF' if value_json.paused else 'ON' }}",
                payload_on="ON",
                payload_off="OFF",
                icon="mdi:play-pause",
                **command_template('"{{ value }}"'),
            )
        )
        configs.append(
            entity(
                "button",
                "take_snapshot",
                "Take snapshot",
                command_topic=topics.commands + "snapshot",
                payload_press="PRESS",
                icon="mdi:camera",
                **command_template('"{{ value }}"'),
            )
        )
        for watch in watches:
            if watch.kind != TRIGGER:
                continue
            configs.append(
                entity(
                    "number",
                    f"threshold_{ha_id(watch.name)}",
                    f"{watch.title} threshold",
                    command_topic=topics.commands + f"threshold/{watch.name}",
                    state_topic=state,
                    value_template=(
                        f"{{{{ value_json.thresholds[{_jinja_string(watch.name)}] }}}}"
                    ),
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    mode="box",
                    entity_category="config",
                    **command_template("{{ value }}"),
                )
            )
    return configs

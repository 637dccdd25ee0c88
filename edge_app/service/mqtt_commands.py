"""MQTT commands: ``<prefix>/<device_id>/set/<command>`` checked, then run by the service.

Commands (off unless ``mqtt.commands = true``):

  ``set/inference``          ``ON``/``resume`` or ``OFF``/``pause`` (also true/false, 1/0)
  ``set/pause``, ``set/resume``  the same, payload ignored
  ``set/snapshot``           publish the newest annotated frame on ``.../snapshot``
  ``set/threshold/<trigger>`` a number from 0 to 1: the trigger's ``min_score`` until
                             the next restart or reload

The payload is the value itself, or JSON ``{"value": ..., "secret": "..."}``; with
``mqtt.command_secret`` set only the JSON form carrying that secret is accepted. A command the
broker hands over from its retained store (at a connect) is refused: a retained
``pause`` would otherwise pause the device again at every reconnect. (MQTT flags only
those deliveries as retained; one published with the flag while we listen runs once.)
A refused command raises CommandError with the reason; the publisher logs
each distinct reason once and ignores the command.

``ServiceControl`` is the one object through which the MQTT side reaches the service.
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass

ON_WORDS = {"on", "resume", "true", "1", "start"}
OFF_WORDS = {"off", "pause", "false", "0", "stop"}


class CommandError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Command:
    name: str  # "inference", "snapshot" or "threshold"
    value: object = None  # bool for inference, float for threshold
    target: str = ""  # the trigger of a threshold

    def describe(self) -> str:
        if self.name == "inference":
            return "resume inference" if self.value else "pause inference"
        if self.name == "threshold":
            return f"trigger {self.target} threshold {self.value:g}"
        return "take a snapshot"


def _payload_value(payload: bytes, secret: str) -> object:
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    document = None
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            raise CommandError("payload starts with { but is not JSON") from None
        if not isinstance(document, dict):
            raise CommandError("JSON payload must be an object")
    if secret:
        given = document.get("secret") if document is not None else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
            raise CommandError("missing or wrong secret")
    if document is not None:
        return document.get("value", "")
    return text


def parse_command(tail: str, payload: bytes, *, secret: str = "", retained: bool = False):
    """The Command for ``set/<tail>`` with ``payload``; CommandError when refused."""
    if retained:
        raise CommandError("retained command (publish commands without the retain flag)")
    value = _payload_value(payload, secret)
    parts = tail.split("/")
    name = parts[0]
    if name in ("pause", "resume") and len(parts) == 1:
        return Command("inference", name == "resume")
    if name == "inference" and len(parts) == 1:
        word = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
        if word in ON_WORDS:
            return Command("inference", True)
        if word in OFF_WORDS:
            return Command("inference", False)
        raise CommandError(f"inference wants ON or OFF, got {str(value)[:40]!r}")
    if name == "snapshot" and len(parts) == 1:
        return Command("snapshot")
    if name == "threshold" and len(parts) == 2 and parts[1]:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not 0.0 <= number <= 1.0:  # also refuses NaN
            raise CommandError(f"threshold wants a number from 0 to 1, got {str(value)[:40]!r}")
        return Command("threshold", number, parts[1])
    raise CommandError(f"unknown command set/{tail[:60]}")


class ServiceControl:
    """The service as the MQTT side sees it: pause, resume, snapshot, thresholds."""

    def __init__(self, service):
        self.service = service

    @property
    def paused(self) -> bool:
        pipeline = self.service.pipeline
        return bool(pipeline is not None and pipeline.paused)

    def pause(self) -> None:
        if self.service.pipeline is not None:
            self.service.pipeline.pause()

    def resume(self) -> None:
        if self.service.pipeline is not None:
            self.service.pipeline.resume()

    def snapshot(self) -> bytes | None:
        """The newest frame with the overlay as JPEG (None before the first frame)."""
        return self.service.feed.snapshot()

    def set_threshold(self, name: str, value: float) -> bool:
        triggers = self.service.triggers
        for trigger in triggers.triggers if triggers is not None else ():
            if trigger.name == name:
                trigger.min_score = value
                return True
        return False

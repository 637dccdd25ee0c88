"""The service's `/metrics`: the Prometheus text exposition format (version 0.0.4),
written without a dependency, rendered from one pipeline stats snapshot.

Each metric family gets one ``# HELP`` and one ``# TYPE`` line followed by its samples;
label values are escaped as the format requires (backslash, double quote, newline).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from edge_app.live.stats import PipelineStats
from edge_app.results import Prediction
from edge_app.service.health import HealthState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
KINDS = ("counter", "gauge", "untyped")


def _escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class MetricsText:
    """Collects families in order and renders them: ``add(...)`` then ``render()``."""

    def __init__(self, prefix: str = "edge_app_"):
        self.prefix = prefix
        self._families: dict[str, tuple[str, str, list[tuple[dict, float]]]] = {}

    def add(
        self, name: str, kind: str, help_text: str, value: float, labels: dict | None = None
    ) -> None:
        full = self.prefix + name
        if not _NAME.match(full):
            raise ValueError(f"bad metric name {full!r}")
        if kind not in KINDS:
            raise ValueError(f"bad metric type {kind!r}")
        if kind == "counter" and not full.endswith("_total"):
            raise ValueError(f"counter {full!r} must end in _total")
        for key in labels or {}:
            if not _LABEL.match(key):
                raise ValueError(f"bad label name {key!r}")
        family = self._families.setdefault(full, (kind, help_text, []))
        if family[0] != kind:
            raise ValueError(f"{full} added as {family[0]} and {kind}")
        family[2].append((dict(labels or {}), value))

    def render(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                if labels:
                    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                    lines.append(f"{name}{{{inner}}} {_number(value)}")
                else:
                    lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ServiceFigures:
    """What the service adds to the pipeline's figures, read at one moment."""

    version: str
    device_id: str
    uptime_s: float
    reloads: int
    reload_failures: int
    web_viewers: int
    jpeg_frames: int
    mqtt_connected: bool | None  # None: MQTT is off
    mqtt_published: int
    eventlog_lines: int | None  # None: no event log
    trigger_saved: tuple[tuple[str, int], ...]  # (trigger name, snapshots saved)
    # The event recorder's (None: no events configured): started, in the index, media bytes
    events: tuple[int, int, int] | None = None


def render_metrics(
    stats: PipelineStats | None,
    state: HealthState,
    top: Prediction | None,
    service: ServiceFigures,
) -> str:
    """The service's `/metrics` page from one pipeline snapshot and the service's figures."""
    m = MetricsText()
    m.add(
        "info",
        "gauge",
        "Version, model and runtime; always 1.",
        1,
        {
            "version": service.version,
            "model": stats.model if stats else "",
            "runtime": stats.runtime if stats else "",
            "device_id": service.device_id,
        },
    )
    m.add("up", "gauge", "1 while frames flow (state running).", int(state == HealthState.RUNNING))
    for each in HealthState:
        m.add(
            "state",
            "gauge",
            "The service's state (one of them is 1).",
            int(state == each),
            {"state": str(each)},
        )
    m.add("frames_total", "counter", "Frames handed to inference.", stats.frames if stats else 0)
    m.add("results_total", "counter", "Inference results.", stats.results if stats else 0)
    m.add(
        "dropped_frames_total",
        "counter",
        "Frames replaced before inference took them.",
        stats.dropped if stats else 0,
    )
    m.add("inference_fps", "gauge", "Results per second.", stats.inference_fps if stats else 0)
    m.add("camera_fps", "gauge", "Frames captured per second.", stats.camera_fps if stats else 0)
    m.add(
        "invoke_milliseconds",
        "gauge",
        "Mean model invoke time, recent results.",
        stats.invoke_ms if stats else 0,
    )
    for q, value in (
        ("0.5", stats.latency_ms_p50 if stats else 0),
        ("0.95", stats.latency_ms_p95 if stats else 0),
    ):
        m.add(
            "latency_milliseconds",
            "gauge",
            "Capture-to-result latency, recent results.",
            value,
            {"quantile": q},
        )
    m.add(
        "heartbeat_age_seconds",
        "gauge",
        "Seconds since the pipeline last turned.",
        round(time.monotonic() - stats.heartbeat, 3) if stats and stats.heartbeat else 0,
    )
    if top is not None:
        m.add(
            "top_score", "gauge", "Score of the current top label.", top.score, {"label": top.label}
        )
    m.add("uptime_seconds", "gauge", "Seconds since the service started.", service.uptime_s)
    m.add("config_reloads_total", "counter", "Successful configuration reloads.", service.reloads)
    m.add(
        "config_reload_failures_total",
        "counter",
        "Rejected configuration reloads.",
        service.reload_failures,
    )
    m.add("web_viewers", "gauge", "Clients watching the live picture.", service.web_viewers)
    m.add("jpeg_frames_total", "counter", "Live-picture JPEGs encoded.", service.jpeg_frames)
    if service.mqtt_connected is not None:
        m.add(
            "mqtt_connected",
            "gauge",
            "1 while connected to the broker.",
            int(service.mqtt_connected),
        )
        m.add("mqtt_messages_total", "counter", "State messages published.", service.mqtt_published)
    if service.eventlog_lines is not None:
        m.add(
            "eventlog_lines_total",
            "counter",
            "Lines written to the event log.",
            service.eventlog_lines,
        )
    if service.events is not None:
        started, stored, media_bytes = service.events
        m.add("events_total", "counter", "Events started.", started)
        m.add("events_stored", "gauge", "Events in the index.", stored)
        m.add("event_media_bytes", "gauge", "Disk used by events' media.", media_bytes)
    gate = stats["gate"] if stats is not None else {}
    if gate.get("mode") == "motion":
        m.add("gated_frames_total", "counter", "Frames the motion gate skipped.", gate["skipped"])
    for name, saved in service.trigger_saved:
        m.add(
            "trigger_snapshots_total",
            "counter",
            "Snapshots saved by a trigger.",
            saved,
            {"trigger": name},
        )
    return m.render()

"""The service's health (service/health.py) and /metrics (service/metrics.py), decided
and rendered from one pipeline stats snapshot."""

from __future__ import annotations

import dataclasses
import time

from edge_app.live.stats import PipelineState, PipelineStats
from edge_app.results import Prediction
from edge_app.service.health import HealthMonitor, HealthState, health_report
from edge_app.service.metrics import ServiceFigures, render_metrics


def snapshot(**changes) -> PipelineStats:
    base = PipelineStats(
        frames=10, results=9, dropped=1, camera_fps=30.0, inference_fps=29.5, invoke_ms=12.5,
        latency_ms_p50=20.0, latency_ms_p95=30.0, source_state=PipelineState.RUNNING,
        heartbeat=time.monotonic(), model="mobilenet_v1_1.0_224_int8", runtime="litert 1.2",
        threads=2, source="demo.mp4", paused=False, error=None,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_states_follow_the_source_and_the_results():
    monitor = HealthMonitor(stall_s=60.0)
    assert monitor.decide(None) == HealthState.STARTING
    assert monitor.decide(snapshot(results=0)) == "starting"
    assert monitor.decide(snapshot()) == HealthState.RUNNING == "running"
    retrying = snapshot(source_state=PipelineState.RETRYING)
    assert monitor.decide(retrying) == "retrying" and monitor.state == "retrying"
    assert monitor.decide(snapshot(source_state=PipelineState.FAILED)) == "failed"
    assert monitor.decide(snapshot().as_dict()) == "running"  # the dict form works too


def test_a_pipeline_that_stopped_turning_is_stalled():
    monitor = HealthMonitor(stall_s=5.0)
    old = snapshot(heartbeat=time.monotonic() - 6.0)
    assert monitor.decide(old) == HealthState.STALLED
    ok, detail = health_report(old, monitor.state)
    assert not ok and detail["status"] == "stalled" and detail["heartbeat_age_s"] >= 6.0
    # A retrying source is expected to be silent: not stalled.
    assert monitor.decide(dataclasses.replace(old, source_state=PipelineState.RETRYING)) == (
        "retrying"
    )


def test_frames_that_stop_coming_are_a_stall():
    monitor = HealthMonitor(stall_s=0.0)  # any time without a new frame is too long
    turning = time.monotonic() + 3600  # the threads keep turning: only frames can stall
    assert monitor.decide(snapshot(heartbeat=turning)) == "running"  # first sight of 10
    deadline = time.monotonic() + 5
    while monitor.decide(snapshot(heartbeat=turning)) != "stalled":
        assert time.monotonic() < deadline
    assert monitor.decide(snapshot(frames=11, heartbeat=turning)) == "running"  # new frames


def test_healthz_body_from_the_snapshot():
    assert health_report(None, HealthState.STARTING) == (False, {"status": "starting"})
    ok, detail = health_report(snapshot(), HealthState.RUNNING)
    assert ok and detail["status"] == "ok" and detail["source_state"] == "running"
    assert detail["results"] == 9


def test_metrics_render_the_snapshot_and_the_service_figures():
    figures = ServiceFigures(
        version="1.0", device_id="pi", uptime_s=12.0, reloads=1, reload_failures=0,
        web_viewers=2, jpeg_frames=40, mqtt_connected=True, mqtt_published=3,
        eventlog_lines=None, trigger_saved=(("birds", 4),),
    )  # fmt: skip
    text = render_metrics(snapshot(), HealthState.RUNNING, Prediction(88, "macaw", 0.9), figures)
    lines = text.splitlines()
    assert "edge_app_up 1" in lines and "edge_app_frames_total 10" in lines
    assert 'edge_app_state{state="running"} 1' in lines
    assert 'edge_app_state{state="stalled"} 0' in lines
    assert 'edge_app_latency_milliseconds{quantile="0.95"} 30' in lines
    assert 'edge_app_top_score{label="macaw"} 0.9' in lines
    assert "edge_app_mqtt_connected 1" in lines and "edge_app_eventlog_lines_total" not in text
    assert 'edge_app_trigger_snapshots_total{trigger="birds"} 4' in lines
    starting = render_metrics(None, HealthState.STARTING, None, figures).splitlines()
    assert "edge_app_up 0" in starting and "edge_app_frames_total 0" in starting

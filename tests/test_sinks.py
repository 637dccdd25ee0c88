"""Every output of the live pipeline is a result sink: submit(result, frame) on the
inference thread, close(timeout) to flush and release (edge_app.live.sinks)."""

from __future__ import annotations

import inspect
import io
import json

import cv2
import pytest

from edge_app.live.display import LiveDisplay
from edge_app.live.sinks import JsonLinesWriter, ResultSink
from edge_app.service.eventlog import EventLog
from edge_app.service.frames import JpegFeed
from edge_app.service.mqtt_out import MqttPublisher
from edge_app.service.triggers import Triggers
from edge_app.settings import ModelSettings, PipelineSettings, SourceSettings

OUTPUTS = [LiveDisplay, JsonLinesWriter, JpegFeed, MqttPublisher, EventLog, Triggers]


@pytest.mark.parametrize("cls", OUTPUTS, ids=lambda c: c.__name__)
def test_every_output_has_the_sink_methods(cls):
    submit = list(inspect.signature(cls.submit).parameters)
    assert submit[:3] == ["self", "result", "frame"]
    close = inspect.signature(cls.close).parameters
    assert "timeout" in close and close["timeout"].default is not inspect.Parameter.empty


def test_sinks_on_a_real_pipeline_get_every_result(tmp_path, test_images, int8_model):
    from edge_app.live.assembly import build_pipeline

    video = tmp_path / "parrot.avi"
    scene = cv2.resize(cv2.imread(str(test_images / "parrot.jpg")), (320, 240))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(6):
        writer.write(scene)
    writer.release()
    pipeline = build_pipeline(
        SourceSettings(spec=str(video), pace=False),
        ModelSettings(model=str(int8_model), threads=1),
        PipelineSettings(),
    )
    stream = io.StringIO()
    lines = JsonLinesWriter(stream, lossless=True)
    events = EventLog(tmp_path / "events.jsonl", mode="all")
    sinks = [lines, events]
    assert all(isinstance(sink, ResultSink) for sink in sinks)
    for sink in sinks:
        pipeline.add_sink(sink)
    pipeline.start()
    assert pipeline.wait(60)
    pipeline.stop()
    for sink in sinks:
        sink.close(5.0)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["frame"] for r in records] == list(range(6))
    assert all(r["top"][0]["label"] == "macaw" for r in records)
    logged = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in logged] == list(range(6))
    assert pipeline.snapshot().results == 6 and pipeline.stats()["results"] == 6
    stats = pipeline.stats()
    assert list(stats) == [
        "frames", "results", "dropped", "camera_fps", "inference_fps", "invoke_ms",
        "latency_ms_p50", "latency_ms_p95", "source_state", "heartbeat", "model", "runtime",
        "threads", "source", "paused", "error", "gate",
    ]  # fmt: skip
    assert json.loads(json.dumps(stats))["source_state"] == "ended"
    snapshot = pipeline.snapshot()
    assert snapshot.source_state == "ended" and snapshot["frames"] == stats["frames"]

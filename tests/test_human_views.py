"""What people see never shows `background` or 0 % noise; what programs read is exact.

The human rule (edge_app.results.human_top) is checked on every human view: the
classify table, the overlay's text, the headless status line, the MQTT state message
and the service status text. Machine formats (JSONL, CSV) keep exactly --top-k entries.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import pytest

from edge_app.cli.table import ClassifyTable, display_path, score_bar
from edge_app.live.overlay import Overlay
from edge_app.live.status_line import format_status
from edge_app.results import UNCERTAIN, LiveResult, Prediction, human_label, human_top

# A result as a 1001-class model gives it on a dark, empty frame: background leads, the
# rest is noise, one real class just clears the floor.
NOISY = [
    Prediction(0, "background", 0.62),
    Prediction(286, "Egyptian cat", 0.3),
    Prediction(282, "tiger cat", 0.012),
    Prediction(1, "tench, Tinca tinca", 0.004),
    Prediction(2, "goldfish, Carassius auratus", 0.0),
]
NOTHING = [NOISY[0], NOISY[3], NOISY[4]]  # nothing a person should see
PERCENT = re.compile(r"(\d+(?:\.\d+)?) ?%")


def edge_app(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def assert_human(text: str) -> None:
    """No background and no percentage under 1 anywhere in ``text``."""
    assert "background" not in text.lower()
    for match in PERCENT.finditer(text):
        assert float(match.group(1)) >= 1.0, f"sub-floor score shown: {match.group(0)!r}"


# -- the rule itself -----------------------------------------------------------------------
def test_human_top_drops_background_and_scores_under_one_percent():
    assert [p.label for p in human_top(NOISY)] == ["Egyptian cat", "tiger cat"]
    assert human_top(NOTHING) == []
    assert human_label(NOISY) == ("Egyptian cat", 0.3)
    assert human_label(NOTHING) == (UNCERTAIN, None)
    as_json = [p.to_json() for p in NOISY]  # records carry dicts: same rule
    assert [p["index"] for p in human_top(as_json)] == [286, 282]
    assert human_top(NOISY, floor=0.5) == []


# -- machine formats: exact top-k, no background -------------------------------------------
def test_jsonl_and_csv_keep_exactly_top_k_without_background(test_images, int8_model, tmp_path):
    parrot = test_images / "parrot.jpg"  # macaw at 99.6 %: the other four are ~0 %
    jsonl = edge_app("classify", parrot, "-m", int8_model, "-k", "5", "-w", "1")
    assert jsonl.returncode == 0, jsonl.stderr
    top = json.loads(jsonl.stdout)["top"]
    assert len(top) == 5 and top[0]["label"] == "macaw"
    assert all(p["index"] != 0 and p["label"] != "background" for p in top)
    out = tmp_path / "r.csv"
    result = edge_app("classify", parrot, "-m", int8_model, "-k", "3", "-f", "csv", "-o", out)
    assert result.returncode == 0, result.stderr
    header, row = csv.reader(io.StringIO(out.read_text()))
    row = dict(zip(header, row, strict=True))
    assert [row[f"label{i}"] != "" for i in (1, 2, 3)] == [True, True, True]
    assert "background" not in row.values()
    # --threshold is the way to get fewer entries
    cut = edge_app("classify", parrot, "-m", int8_model, "--threshold", "0.5")
    assert [p["label"] for p in json.loads(cut.stdout)["top"]] == ["macaw"]


def test_keep_background_brings_index_0_back(test_images, int8_model):
    # Scores tie at 0 after the leader, and ties break by index: `background` (index 0)
    # would be the runner-up of every confident photo, at "0 %".
    parrot = test_images / "parrot.jpg"
    kept = edge_app("classify", parrot, "-m", int8_model, "--keep-background", "-w", "1")
    top = json.loads(kept.stdout)["top"]
    assert len(top) == 5 and top[0]["label"] == "macaw"
    assert top[1]["index"] == 0 and top[1]["label"] == "background" and top[1]["score"] == 0.0


# -- the classify table --------------------------------------------------------------------
def table_text(records, width, arguments=("photos",), encoding="utf-8") -> str:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding)
    table = ClassifyTable(stream, arguments, [r["path"] for r in records], width=width)
    for record in records:
        table.write(record)
    stream.flush()
    return raw.getvalue().decode(encoding)


RECORDS = [
    {
        "path": "photos/pets/cat.jpg",
        "ok": True,
        "top": [p.to_json() for p in NOISY],
        "inference_ms": 7.1,
    },
    {"path": "photos/dark.png", "ok": True, "top": [p.to_json() for p in NOTHING]},
    {
        "path": "photos/a_very_long_folder_name/with_a_long_file_name_inside_it.jpg",
        "ok": True,
        "top": [{"index": 89, "label": "macaw", "score": 0.996}],
        "inference_ms": 12.25,
    },
    {"path": "photos/broken.jpg", "ok": False, "error": "truncated JPEG (no end-of-image marker)"},
]


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_the_table_aligns_under_its_header_and_fits_the_width(width):
    text = table_text(RECORDS, width)
    lines = text.splitlines()
    assert len(lines) == 1 + len(RECORDS)
    assert all(len(line) < width for line in lines)  # never the last column either
    header = lines[0]
    assert header.startswith("image") and "prediction" in header and "score" in header
    label_col = header.index("prediction")
    score_end = header.index("score") + len("score")
    cat, dark, long, broken = lines[1:]
    assert cat[label_col:].startswith("Egyptian cat")  # first synonym, under its header
    assert cat[:score_end].endswith("30.0 %")  # scores right-aligned under "score"
    assert long[:score_end].endswith("99.6 %")
    assert dark[label_col:].startswith(UNCERTAIN)
    assert broken[label_col - 2 :].lstrip().startswith("FAILED: truncated JPEG")
    assert lines[1].startswith("pets/cat.jpg ")  # relative to the argument `photos`
    if width < 150:
        assert "…" in long[:label_col]  # a long path is cut, marked, and keeps the columns
    for line in lines[1:]:
        assert_human(line)
    if width >= 80:
        assert "█" in cat  # score bars when there is room
    if width >= 120:
        assert "tiger cat 1 %" in cat  # the runner-ups, after the bar
    if width >= 200:
        assert "7.1 ms" in cat and "time" in header


def test_the_table_without_unicode_uses_plain_characters():
    text = table_text(RECORDS, 100, encoding="ascii")
    assert "#" in text and "~" in text


def test_score_bars_and_relative_paths(tmp_path):
    assert score_bar(1.0, 10) == "█" * 10
    assert score_bar(0.0, 10) == " " * 10
    assert score_bar(0.55, 10).rstrip() == "█████▌"
    assert score_bar(0.5, 4, unicode=False) == "##  "
    (tmp_path / "sub").mkdir()
    folder = str(tmp_path)
    assert display_path(f"{folder}/sub/a.jpg", [folder]) == "sub/a.jpg"
    assert display_path(f"{folder}/sub/a.jpg", [f"{folder}/**/*.jpg"]) == "sub/a.jpg"
    assert display_path("/elsewhere/b.jpg", [folder, "/elsewhere/b.jpg"]) == "/elsewhere/b.jpg"


def test_classify_table_on_real_photos_is_human(test_images, int8_model):
    """The real command, its table forced (stdout is a pipe here)."""
    result = edge_app(
        "classify", test_images, "-m", int8_model, "-f", "table", env=_env(COLUMNS="100")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("image")
    assert any(line.startswith("parrot.jpg ") and " macaw " in line for line in lines)
    assert_human(result.stdout)
    assert "done: 13 images" in result.stderr


def _env(**extra):
    import os

    return dict(os.environ, **extra)


# -- overlay, status line, MQTT, service status --------------------------------------------
def test_the_overlay_text_is_human():
    overlay = Overlay("m")
    lines = overlay.prediction_lines(LiveResult(1, 0.0, NOISY, 7.0, 20.0, 30.0, 30.0))
    assert lines == [" 30% Egyptian cat", "  1% tiger cat"]
    for line in lines:
        assert_human(line)
    empty = overlay.prediction_lines(LiveResult(2, 0.0, NOTHING, 7.0, 20.0, 30.0, 30.0))
    assert empty == [UNCERTAIN]


def test_the_status_line_is_human_and_has_units():
    stats = {
        "inference_fps": 29.84,
        "camera_fps": 30.0,
        "invoke_ms": 7.12,
        "latency_ms_p50": 21.4,
        "dropped": 3,
        "source_state": "running",
    }
    line = format_status(stats, LiveResult(1, 0.0, NOISY, 7.0, 20.0, 30.0, 30.0), 72.0)
    assert line == (
        "01:12 Egyptian cat 30 % | 29.8 FPS (camera 30.0) | "
        "invoke 7.1 ms, latency 21 ms | 3 dropped"
    )
    quiet = format_status(stats, LiveResult(2, 0.0, NOTHING, 7.0, 20.0, 30.0, 30.0))
    assert quiet.startswith(UNCERTAIN + " |")
    assert_human(quiet)
    assert format_status({**stats, "source_state": "ended"}, None).endswith("ended")


def test_the_mqtt_state_message_is_human():
    from edge_app.service.config import MqttConfig
    from edge_app.service.mqtt_out import MqttPublisher

    # The real publisher; its broker is never reached, and the message is built alike.
    publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=9), "cam1")
    try:
        publisher.submit(LiveResult(1, 0.0, NOISY, 7.0, 20.0, 30.0, 30.0))
        state = publisher.state()
        assert [p["label"] for p in state["top"]] == ["Egyptian cat", "tiger cat"]
        assert state["label"] == "Egyptian cat" and state["score"] == 0.3
        publisher.submit(LiveResult(2, 0.0, NOTHING, 7.0, 20.0, 30.0, 30.0))
        state = publisher.state()
        assert state["top"] == [] and state["label"] == UNCERTAIN and state["score"] is None
    finally:
        publisher.close(0.5)


def test_the_service_status_text_is_human():
    from edge_app.service.config import ServiceConfig
    from edge_app.service.service import Service

    class Latest:  # the pipeline's two read methods the status text uses
        def __init__(self, top):
            self.result = LiveResult(1, 0.0, top, 7.0, 20.0, 30.0, 30.0)

        def latest(self):
            return self.result, None

    service = Service(ServiceConfig())
    stats = {"inference_fps": 30.0, "camera_fps": 30.0, "invoke_ms": 7.0}
    from edge_app.service.health import HealthState

    service._monitor.state = HealthState.RUNNING  # as the health monitor last decided
    service.pipeline = Latest(NOISY)
    assert service.status_text(stats).endswith("; Egyptian cat 30%")
    service.pipeline = Latest(NOTHING)
    assert service.status_text(stats).endswith("; uncertain")


def test_run_json_keeps_exactly_top_k_without_background(demo_video, int8_model):
    result = edge_app(
        "run", "--source", demo_video, "--headless", "--json", "--no-pace", "--max-frames",
        "40", "-k", "4", "-m", int8_model,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 40
    for record in records:
        assert len(record["top"]) == 4
        assert all(p["index"] != 0 for p in record["top"])

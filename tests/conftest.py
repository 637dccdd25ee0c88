"""Shared fixtures: the real models, photos and video from ../shared.

``EDGE_APP_SHARED`` overrides the location (default: ``../shared`` beside the project).
A contributor who cloned the project alone gets those tests skipped, with one summary line
per missing item; under CI (``CI=true``) missing shared data fails instead, so a broken CI
set-up cannot pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_APP_SHARED", ROOT.parent / "shared")).resolve()


def _need(path: Path) -> Path:
    if not path.exists():
        message = (
            f"shared test data missing: {path} (place the shared folder beside the project "
            "as ../shared, or set EDGE_APP_SHARED to it)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def shared_models(shared_dir) -> Path:
    return _need(shared_dir / "models")


@pytest.fixture(scope="session")
def int8_model(shared_models) -> Path:
    return _need(shared_models / "mobilenet_v1_1.0_224_int8.tflite")


@pytest.fixture(scope="session")
def uint8_model(shared_models) -> Path:
    return _need(shared_models / "mobilenet_v1_1.0_224_quant.tflite")


@pytest.fixture(scope="session")
def float_model(shared_models) -> Path:
    return _need(shared_models / "mobilenet_v1_1.0_224_float.tflite")


@pytest.fixture(scope="session")
def test_images(shared_dir) -> Path:
    return _need(shared_dir / "images" / "test")


@pytest.fixture(scope="session")
def imagenet_sample(shared_dir) -> Path:
    return _need(shared_dir / "images" / "imagenet-sample")


@pytest.fixture(scope="session")
def demo_video(shared_dir) -> Path:
    return _need(shared_dir / "videos" / "demo_640x480.mp4")


@pytest.fixture(scope="session")
def demo_segments(shared_dir) -> list[tuple[int, int, str]]:
    rows = []
    for line in _need(shared_dir / "videos" / "demo_640x480.segments.tsv").read_text().splitlines():
        if line.strip():
            first, last, photo = line.split("\t")
            rows.append((int(first), int(last), photo))
    return rows


def pytest_terminal_summary(terminalreporter):
    """One line per reason tests were skipped (missing shared data, no ARM trees), with
    the count, instead of one line per test."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("why tests were skipped")
        for reason, count in reasons.items():
            terminalreporter.write_line(f"{count} skipped: {reason}")

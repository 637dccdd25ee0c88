"""What the live pipeline reports: its state and a typed snapshot of its figures.

``PipelineStats`` is frozen and taken under the pipeline's lock, so every figure in one
snapshot belongs to the same moment. ``as_dict()`` gives the JSON keys `/api/stats` has
always shown; ``stats["frames"]`` works too, for code written against the dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum


class PipelineState(StrEnum):
    """Where the source stands. A ``str``: compares equal to, and prints as, its value."""

    RUNNING = "running"
    RETRYING = "retrying"  # the source failed or is unavailable; retried with backoff
    ENDED = "ended"  # end of a file, a limit reached, or stopped
    FAILED = "failed"  # the run ended on an error (``Pipeline.error``)


@dataclass(frozen=True, slots=True)
class PipelineStats:
    frames: int  # handed to inference
    results: int
    dropped: int  # replaced in the slot before inference took them
    camera_fps: float
    inference_fps: float
    invoke_ms: float  # mean over recent results
    latency_ms_p50: float  # capture to result, recent results
    latency_ms_p95: float
    source_state: PipelineState
    heartbeat: float  # time.monotonic() when a pipeline thread last turned
    model: str
    runtime: str
    threads: int
    source: str
    paused: bool
    error: str | None
    gate: dict = field(default_factory=lambda: {"mode": "off"})  # the motion gate's counts

    def as_dict(self) -> dict:
        """The stats as plain JSON-ready data (the state as its string)."""
        data = asdict(self)
        data["source_state"] = str(self.source_state)
        return data

    to_json = as_dict

    def __getitem__(self, key: str):
        return getattr(self, key)

    def get(self, key: str, default=None):
        """Like ``dict.get``, for code written against the stats dict."""
        return getattr(self, key, default)

"""The service's health, decided from a pipeline stats snapshot.

Health is decided from the very snapshot a client is shown, at the moment it asks (not
on the main loop's tick), so /healthz, /api/latest and /api/stats always agree. A source
that should be delivering frames but has delivered none for ``stall_s`` seconds, or a
pipeline whose threads stopped turning, is ``stalled``: systemd's watchdog then restarts
the service.
"""

from __future__ import annotations

import threading
import time
from enum import StrEnum

from edge_app.live.stats import PipelineState, PipelineStats


class HealthState(StrEnum):
    """The service's state. A ``str``: compares equal to, and prints as, its value."""

    STARTING = "starting"  # no result yet
    RUNNING = "running"
    RETRYING = "retrying"
    ENDED = "ended"
    FAILED = "failed"
    STALLED = "stalled"


class HealthMonitor:
    """Turns snapshots into a HealthState; thread-safe (web threads and the main loop)."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self.state = HealthState.STARTING
        self._lock = threading.Lock()
        self._progress = (-1, time.monotonic())  # (frames, when that count was first seen)

    def restart(self) -> None:
        """A new pipeline: its frame count starts again."""
        with self._lock:
            self._progress = (-1, time.monotonic())

    def decide(self, stats: PipelineStats | dict | None) -> HealthState:
        """The state for a snapshot (``Pipeline.snapshot()``, or its ``stats()`` dict)."""
        if stats is None:
            return HealthState.STARTING
        source_state = stats["source_state"]
        with self._lock:
            now = time.monotonic()
            held = (PipelineState.RETRYING, PipelineState.ENDED, PipelineState.FAILED)
            # A paused pipeline hands no frames on by design: that is not a stall (else the
            # watchdog ping stops and systemd restarts a service a user paused).
            if source_state in held or stats["paused"]:
                self._progress = (stats["frames"], now)
            elif stats["frames"] != self._progress[0]:
                self._progress = (stats["frames"], now)
            stall_s = self.stall_s
            stalled = (
                now - self._progress[1] > stall_s or now - stats["heartbeat"] > stall_s
            ) and source_state == PipelineState.RUNNING
            if stalled:
                state = HealthState.STALLED
            elif source_state == PipelineState.RUNNING and stats["results"] == 0:
                state = HealthState.STARTING
            else:
                state = HealthState(str(source_state))
            self.state = state
        return state


def health_report(stats: PipelineStats | dict | None, state: HealthState) -> tuple[bool, dict]:
    """(healthy, the /healthz body) for a snapshot and the state decided from it."""
    if stats is None:
        return False, {"status": "starting"}
    detail = {
        "status": "ok" if state == HealthState.RUNNING else str(state),
        "source_state": str(stats["source_state"]),
        "results": stats["results"],
        "heartbeat_age_s": round(time.monotonic() - stats["heartbeat"], 3),
    }
    return state == HealthState.RUNNING, detail

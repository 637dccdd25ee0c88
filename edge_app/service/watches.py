"""Watched labels: the on/off states behind the MQTT binary sensors.

Two kinds feed the same ``Watches`` collection:

- a **trigger** watch (one per ``[[trigger]]``) is decided from results: it turns **on**
  with the first result whose top-k has a label matching the trigger's pattern with at
  least its ``min_score``, and turns **off** once no result has matched for the trigger's
  ``cooldown_s`` (at once with a cooldown of 0). The hold keeps a bird that flickers
  between two labels from toggling the sensor; results stopping (a pause, a camera
  fault) also lets it fall off after the hold.
- a **label** watch is driven from outside by ``set(name, on)``: the event recorder's
  ``new`` and ``end`` calls.

Results are matched on the inference thread (a few regex searches) and hold-offs are
checked on the MQTT thread, so one lock guards the states; ``on_change(watch, on)`` is
called outside it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

TRIGGER, LABEL = "trigger", "label"


def label_slug(label: str, limit: int = 40) -> str:
    """A topic-safe name for a label line: ``"tabby, tabby cat"`` -> ``"tabby"``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", label.split(",")[0]).strip("-").lower()[:limit] or "x"


@dataclass
class Watch:
    kind: str  # TRIGGER or LABEL
    name: str  # topic-safe
    title: str  # for people (Home Assistant's entity name)
    pattern: str = ""
    min_score: float = 0.0
    hold_s: float = 0.0
    on: bool = False
    last_match: float = 0.0
    _regex: re.Pattern | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind == TRIGGER:
            self._regex = re.compile(self.pattern, re.IGNORECASE)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def matches(self, result) -> bool:
        return any(p.score >= self.min_score and self._regex.search(p.label) for p in result.top)


class Watches:
    def __init__(self, on_change: Callable[[Watch, bool], None] | None = None):
        self.on_change = on_change or (lambda watch, on: None)
        self._lock = threading.Lock()
        self._watches: dict[str, Watch] = {}

    def __iter__(self):
        with self._lock:
            return iter(list(self._watches.values()))

    def __len__(self) -> int:
        return len(self._watches)

    def add_trigger(self, name: str, pattern: str, min_score: float, hold_s: float) -> Watch:
        watch = Watch(TRIGGER, name, name, pattern, min_score, hold_s)
        with self._lock:
            return self._watches.setdefault(watch.key, watch)

    def add_label(self, label: str) -> tuple[Watch, bool]:
        """The label's watch, and whether it is new."""
        watch = Watch(LABEL, label_slug(label), label.split(",")[0].strip() or label)
        with self._lock:
            if watch.key in self._watches:
                return self._watches[watch.key], False
            self._watches[watch.key] = watch
            return watch, True

    def get(self, kind: str, name: str) -> Watch | None:
        with self._lock:
            return self._watches.get(f"{kind}/{name}")

    def set_threshold(self, name: str, value: float) -> bool:
        with self._lock:
            watch = self._watches.get(f"{TRIGGER}/{name}")
            if watch is None:
                return False
            watch.min_score = value
            return True

    def thresholds(self) -> dict[str, float]:
        with self._lock:
            return {w.name: w.min_score for w in self._watches.values() if w.kind == TRIGGER}

    # -- changes ---------------------------------------------------------------------
    def _flip(self, changes: list[tuple[Watch, bool]]) -> None:
        for watch, on in changes:
            self.on_change(watch, on)

    def set(self, watch: Watch, on: bool) -> None:
        with self._lock:
            changed = watch.on != on
            watch.on = on
        if changed:
            self.on_change(watch, on)

    def update(self, result, now: float) -> None:
        """A new result (inference thread): trigger watches that match turn on."""
        changes = []
        with self._lock:
            for watch in self._watches.values():
                if watch.kind != TRIGGER:
                    continue
                if watch.matches(result):
                    watch.last_match = now
                    if not watch.on:
                        watch.on = True
                        changes.append((watch, True))
                elif watch.on and now - watch.last_match >= watch.hold_s:
                    watch.on = False
                    changes.append((watch, False))
        self._flip(changes)

    def expire(self, now: float) -> None:
        """Trigger watches whose hold ran out without a match turn off (results may
        have stopped coming, so this runs on a timer too)."""
        changes = []
        with self._lock:
            for watch in self._watches.values():
                if watch.kind == TRIGGER and watch.on and now - watch.last_match >= watch.hold_s:
                    # hold_s 0: off at the next non-matching result, not on the timer
                    if watch.hold_s > 0:
                        watch.on = False
                        changes.append((watch, False))
        self._flip(changes)


def trigger_watches(config) -> list[tuple[str, str, float, float]]:
    """(name, pattern, min_score, hold_s) for each ``[[trigger]]`` of a ServiceConfig."""
    return [
        (config.trigger_name(i), t.pattern, t.min_score, t.cooldown_s)
        for i, t in enumerate(config.trigger)
    ]

"""Episodes of watched labels: when they start, improve and end (pure logic, no I/O).

A watch (config ``[[event]]``) matches a result when any of its top-k predictions has a
label its ``pattern`` finds (a regular expression, case-insensitive) with at least
``min_score``. An episode starts after ``consensus`` matching results in a row, at the
time of the first of them; it ends once it has been ``end_after_s`` seconds since the last
matching result and a result without the label has been seen. Without any result a
picture is taken as unchanged (a motion gate skips still frames), so a still scene keeps
its episode open; only when no result at all arrives for ``stale_s`` (the camera is gone)
does the episode end anyway. Under a gate (results with trigger "motion" or "refresh")
the label was on screen until the first result without it, so that is the end; without
one (trigger "always") the end is the last result with it. Times are the frames' capture
times (``time.time()``).

The event dict, as listeners, the history API and the JSONL log see it:

  id          str    "<UTC yyyymmddThhmmssmmm>Z-<watch name>", unique, safe in a URL path
  name        str    the watch's name (``[[event]] name``, default event<N>)
  label       str    the label line of the best match (e.g. "macaw")
  index       int    the model's class index of that label
  start       float  Unix time of the first matching result of the episode
  end         float  Unix time of the last matching result (None while active)
  duration_s  float  end - start (so far, while active)
  top_score   float  the best score of the episode
  score       float  the newest matching score
  results     int    matching results in the episode
  state       str    "active" or "ended"
  snapshot    str    "media/<id>/snapshot.jpg" (relative to the web root), or None
  clip        str    "media/<id>/clip.<ext>" once written (at "end"), or None
  clip_type   str    the clip's MIME type ("video/mp4", "video/webm", "video/x-msvideo")
  clip_stream str    "media/<id>/clip.mjpg": the clip as a JPEG stream any browser shows
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

STALE_S = 60.0


@dataclass
class Watch:
    name: str
    pattern: str
    min_score: float = 0.5
    consensus: int = 3
    end_after_s: float = 3.0
    _regex: re.Pattern = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(self.pattern, re.IGNORECASE)

    def match(self, result):
        """The best prediction of ``result`` this watch accepts, else None."""
        best = None
        for prediction in result.top:
            if prediction.score >= self.min_score and self._regex.search(prediction.label):
                if best is None or prediction.score > best.score:
                    best = prediction
        return best


@dataclass
class Episode:
    id: str
    name: str
    label: str
    index: int
    start: float
    last_seen: float
    top_score: float
    score: float
    results: int
    end: float | None = None
    state: str = "active"
    snapshot: str | None = None
    clip: str | None = None
    clip_type: str | None = None
    absent_since: float | None = field(default=None, repr=False)
    present_until: float = field(default=0.0, repr=False)  # the end if it ended now

    def to_dict(self) -> dict:
        end = self.end
        return {
            "id": self.id,
            "name": self.name,
            "label": self.label,
            "index": self.index,
            "start": round(self.start, 3),
            "end": round(end, 3) if end is not None else None,
            "duration_s": round((end if end is not None else self.last_seen) - self.start, 3),
            "top_score": round(self.top_score, 5),
            "score": round(self.score, 5),
            "results": self.results,
            "state": self.state,
            "snapshot": self.snapshot,
            "clip": self.clip,
            "clip_type": self.clip_type,
            "clip_stream": f"media/{self.id}/clip.mjpg" if self.clip else None,
        }


def event_id(start: float, name: str) -> str:
    when = datetime.fromtimestamp(start, UTC)
    return f"{when:%Y%m%dT%H%M%S}{when.microsecond // 1000:03d}Z-{name}"


ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{9}Z-[A-Za-z0-9_.-]{1,64}(-[0-9]{1,4})?$")


class EpisodeDetector:
    """Feeds results to every watch; ``update`` and ``tick`` return what happened as a list
    of (kind, episode) with kind "new", "best" (a higher score: a better snapshot) or "end"."""

    def __init__(self, watches: list[Watch], stale_s: float = STALE_S):
        self.watches = watches
        self.stale_s = stale_s
        self.active: dict[str, Episode] = {}
        self._streaks: dict[str, list] = {w.name: [] for w in watches}
        self._last_result = None
        self._ids: set[str] = set()

    def _new_id(self, start: float, name: str) -> str:
        base = event_id(start, name)
        candidate, n = base, 1
        while candidate in self._ids:
            n += 1
            candidate = f"{base}-{n}"
        self._ids.add(candidate)
        if len(self._ids) > 10_000:
            self._ids = {candidate}
        return candidate

    def update(self, result, t: float) -> list[tuple[str, Episode]]:
        """A new result whose frame was captured at ``t``."""
        changes: list[tuple[str, Episode]] = []
        self._last_result = t
        for watch in self.watches:
            prediction = watch.match(result)
            episode = self.active.get(watch.name)
            if episode is None:
                streak = self._streaks[watch.name]
                if prediction is None:
                    streak.clear()
                    continue
                streak.append((t, prediction))
                if len(streak) < watch.consensus:
                    continue
                first_t = streak[0][0]
                best = max((p for _, p in streak), key=lambda p: p.score)
                episode = Episode(
                    id=self._new_id(first_t, watch.name),
                    name=watch.name,
                    label=best.label,
                    index=best.index,
                    start=first_t,
                    last_seen=t,
                    top_score=best.score,
                    score=prediction.score,
                    results=len(streak),
                    present_until=t,
                )
                streak.clear()
                self.active[watch.name] = episode
                changes.append(("new", episode))
            elif prediction is not None:
                episode.last_seen = episode.present_until = t
                episode.absent_since = None
                episode.results += 1
                episode.score = prediction.score
                if prediction.score > episode.top_score:
                    episode.top_score = prediction.score
                    episode.label, episode.index = prediction.label, prediction.index
                    changes.append(("best", episode))
            elif episode.absent_since is None:
                episode.absent_since = t
                if getattr(result, "trigger", "always") != "always":
                    episode.present_until = t  # skipped frames showed the same picture
        changes += self.tick(t)
        return changes

    def tick(self, now: float) -> list[tuple[str, Episode]]:
        """End the episodes that are over at ``now`` (same clock as the results)."""
        changes = []
        for watch in self.watches:
            episode = self.active.get(watch.name)
            if episode is None:
                continue
            gone = (
                episode.absent_since is not None
                and now - episode.present_until >= watch.end_after_s
            )
            stale = self._last_result is not None and now - self._last_result >= self.stale_s
            if gone or stale:
                changes.append(("end", self._end(watch.name)))
        return changes

    def close(self) -> list[tuple[str, Episode]]:
        """End every active episode (the service is stopping)."""
        return [("end", self._end(name)) for name in list(self.active)]

    def _end(self, name: str) -> Episode:
        episode = self.active.pop(name)
        episode.end = max(episode.last_seen, episode.present_until)
        return episode

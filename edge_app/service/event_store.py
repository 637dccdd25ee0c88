"""Where events live: an SQLite index and a media folder per event, with retention.

Layout under ``folder`` (``events.dir`` in ``state_dir``)::

    index.sqlite3            one row per event (WAL journal)
    media/<event id>/snapshot.jpg
    media/<event id>/clip.<ext>

Crash safety (a SIGKILL or power cut at any moment): media are written under a name with
``.tmp.`` in it and renamed into place (``os.replace``) only when complete, and the index
row is updated after the rename. On start ``recover`` deletes every temporary file, ends
the rows of events that were active (their clip was never finished), forgets media a row
names but the disk lacks, and deletes media folders no row names. WAL with
``synchronous=NORMAL`` keeps the index consistent through a killed process (a power cut
may lose the last transactions, never the file).

Retention: events older than ``max_age_s`` go first, then the oldest until the media
total is within ``max_bytes``. The row goes before the files, so a crash in between
leaves an orphan folder, which the next start deletes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from edge_app.errors import ConfigError
from edge_app.service.clips import TEMP_MARK
from edge_app.service.events import ID_PATTERN

log = logging.getLogger(__name__)

MEDIA_NAMES = ("snapshot.jpg", "clip.mp4", "clip.webm", "clip.avi")
COLUMNS = (
    "id",
    "name",
    "label",
    "idx",
    "start",
    "end_time",
    "top_score",
    "score",
    "results",
    "state",
    "snapshot",
    "clip",
    "clip_type",
    "bytes",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start REAL NOT NULL,
    end_time REAL,
    top_score REAL NOT NULL,
    score REAL NOT NULL,
    results INTEGER NOT NULL,
    state TEXT NOT NULL,
    snapshot TEXT,
    clip TEXT,
    clip_type TEXT,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_start ON events (start);
"""


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventStore:
    def __init__(self, folder: Path, *, max_age_s: float = 0.0, max_bytes: int = 0):
        self.folder = Path(folder)
        self.media = self.folder / "media"
        self.max_age_s = max_age_s  # 0: no age limit
        self.max_bytes = max_bytes  # 0: no cap
        self.deleted = 0
        try:
            self.media.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"events: cannot create {self.media}: {exc.strerror or exc}"
            ) from None
        self._root = self.media.resolve()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.folder / "index.sqlite3", check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(
                f"events: cannot open {self.folder / 'index.sqlite3'}: {exc}"
            ) from None
        self.recover()

    # -- start-up --------------------------------------------------------------------
    def recover(self) -> dict:
        """Make the folder and the index agree after any crash; what was fixed."""
        fixed = {"temporary": 0, "interrupted": 0, "missing": 0, "orphans": 0}
        for path in self.media.rglob(f"*{TEMP_MARK}*"):
            path.unlink(missing_ok=True)
            fixed["temporary"] += 1
        with self._lock:
            rows = self._db.execute("SELECT id, state, snapshot, clip FROM events").fetchall()
            known = set()
            for event_id, state, snapshot, clip in rows:
                known.add(event_id)
                folder = self.media / event_id
                updates = {}
                if state == "active":
                    updates["state"] = "ended"
                    fixed["interrupted"] += 1
                for column, name in (("snapshot", snapshot), ("clip", clip)):
                    if name and not (folder / name).is_file():
                        updates[column] = None
                        fixed["missing"] += 1
                if updates:
                    if "state" in updates:
                        self._db.execute(
                            "UPDATE events SET end_time = coalesce(end_time, start) WHERE id = ?",
                            (event_id,),
                        )
                    sets = ", ".join(f"{k} = ?" for k in updates)
                    self._db.execute(
                        f"UPDATE events SET {sets} WHERE id = ?", (*updates.values(), event_id)
                    )
                    self._db.execute(
                        "UPDATE events SET bytes = ? WHERE id = ?",
                        (self._folder_bytes(folder), event_id),
                    )
        for folder in self.media.iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
                fixed["orphans"] += 1
        if any(fixed.values()):
            log.info("events: recovered after an unclean stop: %s", fixed)
        return fixed

    @staticmethod
    def _folder_bytes(folder: Path) -> int:
        total = 0
        if folder.is_dir():
            for path in folder.iterdir():
                try:
                    total += path.stat().st_size
                except OSError:
                    pass
        return total

    # -- writing (the recorder thread) -----------------------------------------------
    def event_folder(self, event_id: str) -> Path:
        folder = self.media / event_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def insert(self, event: dict) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
                f"({', '.join('?' * len(COLUMNS))})",
                self._row(event),
            )

    def update(self, event: dict) -> None:
        with self._lock:
            sets = ", ".join(f"{c} = ?" for c in COLUMNS[1:])
            row = self._row(event)
            self._db.execute(f"UPDATE events SET {sets} WHERE id = ?", (*row[1:], row[0]))

    def _row(self, event: dict) -> tuple:
        folder = self.media / event["id"]
        snapshot = event["snapshot"].rsplit("/", 1)[1] if event.get("snapshot") else None
        clip = event["clip"].rsplit("/", 1)[1] if event.get("clip") else None
        return (
            event["id"],
            event["name"],
            event["label"],
            event["index"],
            event["start"],
            event["end"],
            event["top_score"],
            event["score"],
            event["results"],
            event["state"],
            snapshot,
            clip,
            event.get("clip_type"),
            self._folder_bytes(folder),
        )

    def publish_bytes(self, event_id: str, name: str, data: bytes) -> None:
        """Write ``data`` as media ``name`` of an event: temporary name, fsync, rename."""
        folder = self.event_folder(event_id)
        temporary = folder / f"{name}{TEMP_MARK}part"
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, folder / name)

    def publish_file(self, event_id: str, temporary: Path, name: str) -> None:
        """Move a finished temporary file (a clip) into place as media ``name``."""
        fsync_file(temporary)
        os.replace(temporary, self.event_folder(event_id) / name)

    # -- reading (web threads) -------------------------------------------------------
    def _dicts(self, rows) -> list[dict]:
        out = []
        for row in rows:
            values = dict(zip(("seq", *COLUMNS), row, strict=True))
            event_id = values["id"]
            end = values["end_time"]
            clip = values["clip"]
            out.append(
                {
                    "id": event_id,
                    "name": values["name"],
                    "label": values["label"],
                    "index": values["idx"],
                    "start": values["start"],
                    "end": end,
                    "duration_s": round(
                        (end if end is not None else values["start"]) - values["start"], 3
                    ),
                    "top_score": values["top_score"],
                    "score": values["score"],
                    "results": values["results"],
                    "state": values["state"],
                    "snapshot": f"media/{event_id}/{values['snapshot']}"
                    if values["snapshot"]
                    else None,
                    "clip": f"media/{event_id}/{clip}" if clip else None,
                    "clip_type": values["clip_type"],
                    "clip_stream": f"media/{event_id}/clip.mjpg" if clip else None,
                    "bytes": values["bytes"],
                    "seq": values["seq"],
                }
            )
        return out

    def history(
        self,
        *,
        since: float | None = None,
        label: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> dict:
        """Newest first: {"events": [...], "next": cursor or None}; pass ``next`` back as
        ``before`` for the next page."""
        limit = max(1, min(int(limit), 500))
        where, args = [], []
        if since is not None:
            where.append("coalesce(end_time, start) >= ?")
            args.append(since)
        if label:
            where.append("(label LIKE ? ESCAPE '\\' OR name = ?)")
            escaped = label.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args += [f"%{escaped}%", label]
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        sql = f"SELECT seq, {', '.join(COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        events = self._dicts(rows[:limit])
        return {"events": events, "next": events[-1]["seq"] if len(rows) > limit else None}

    def get(self, event_id: str) -> dict | None:
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, {', '.join(COLUMNS)} FROM events WHERE id = ?", (event_id,)
            ).fetchall()
        return self._dicts(rows)[0] if rows else None

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM events").fetchone()[0]

    def total_bytes(self) -> int:
        with self._lock:
            return self._db.execute("SELECT coalesce(sum(bytes), 0) FROM events").fetchone()[0]

    def media_path(self, event_id: str, name: str) -> Path | None:
        """The file for /media/<event_id>/<name>, or None: only known names of known events,
        and only inside the media folder (resolved, so no link leads out)."""
        if not ID_PATTERN.match(event_id) or name not in MEDIA_NAMES:
            return None
        path = (self.media / event_id / name).resolve()
        if path.parent.parent != self._root or not path.is_file():
            return None
        if self.get(event_id) is None:
            return None
        return path

    # -- retention -------------------------------------------------------------------
    def enforce_retention(self, now: float | None = None) -> list[str]:
        """Delete ended events past the age limit, then the oldest over the disk cap."""
        now = time.time() if now is None else now
        deleted = []
        with self._lock:
            rows = self._db.execute(
                "SELECT id, start, bytes FROM events WHERE state = 'ended' ORDER BY start, seq"
            ).fetchall()
            total = self._db.execute("SELECT coalesce(sum(bytes), 0) FROM events").fetchone()[0]
        for event_id, start, size in rows:
            too_old = self.max_age_s > 0 and start < now - self.max_age_s
            too_big = self.max_bytes > 0 and total > self.max_bytes
            if not (too_old or too_big):
                break  # oldest first: neither holds for any later event
            self.delete(event_id)
            deleted.append(event_id)
            total -= size
        if deleted:
            log.info("events: retention deleted %d event(s), oldest first", len(deleted))
        return deleted

    def delete(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE id = ?", (event_id,))
        shutil.rmtree(self.media / event_id, ignore_errors=True)
        self.deleted += 1

    def close(self) -> None:
        with self._lock:
            self._db.close()

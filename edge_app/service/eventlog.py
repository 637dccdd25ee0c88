"""An optional JSONL log of results with size-based rotation.

Every record is written with a single ``os.write`` of one whole line to a file opened
with O_APPEND; a short write (a full disk) is cut back to the last whole line, so a
reader, a crash or a SIGTERM never sees half a record. Writing happens on the log's own
thread: the pipeline listener only queues the result.

Rotation: before a line would take the file past ``max_bytes`` it becomes ``FILE.1``
(``FILE.1`` becomes ``FILE.2`` ... up to ``backups``) and a new file starts.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path

from edge_app.errors import ConfigError, os_reason
from edge_app.live.sinks import end_worker

log = logging.getLogger(__name__)


def top_label(result) -> str | None:
    return result.top[0].label if result.top else None


class EventLog:
    _END = object()

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mode: str = "changes",
        max_bytes: int = 10_000_000,
        backups: int = 3,
        extra: dict | None = None,
        capacity: int = 2048,
    ):
        if mode not in ("all", "changes"):
            raise ValueError(f"mode must be 'all' or 'changes', not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.max_bytes = max_bytes
        self.backups = backups
        self.extra = dict(extra or {})  # fields added to every record (device_id)
        self.lines = 0
        self.dropped = 0  # results not queued: the disk could not keep up
        self.failed = 0  # lines not written: a disk error
        self._last_label: object = object()  # matches no label: the first result is logged
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._fd: int | None = None
        self._size = 0
        self._open()  # fail now, in one line, if the folder is not writable
        self._thread = threading.Thread(target=self._run, name="edge-app-eventlog", daemon=True)
        self._thread.start()

    # -- the pipeline side -------------------------------------------------------------
    def submit(self, result, frame=None) -> None:
        """Pipeline listener: queue the result when the mode wants it."""
        label = top_label(result)
        if self.mode == "changes":
            if label == self._last_label:
                return
            self._last_label = label
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("event log %s cannot keep up; dropping records", self.path)

    # -- the writer thread ---------------------------------------------------------------
    def _record(self, result) -> bytes:
        record = {**result.to_json(), "label": top_label(result), **self.extra}
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")

    def _run(self) -> None:
        while True:
            result = self._queue.get()
            if result is self._END:
                break
            self.write_line(self._record(result))
        self._close_fd()

    def write_line(self, line: bytes) -> bool:
        """Append one whole line (rotating first when it would not fit)."""
        if self._fd is None:
            return False
        if self._size > 0 and self._size + len(line) > self.max_bytes:
            self._rotate()
            if self._fd is None:
                return False
        start = self._size
        written = 0
        try:
            while written < len(line):
                n = os.write(self._fd, line[written:])
                if n <= 0:
                    raise OSError("short write")
                written += n
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("event log %s: cannot write: %s", self.path, exc)
            if written:
                try:
                    os.ftruncate(self._fd, start)  # never leave half a line
                except OSError:
                    pass
            return False
        self._size += written
        self.lines += 1
        return True

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            # At start (or reload) the path is the config's: the user fixes the config.
            raise ConfigError(f"eventlog.path {self.path}: {os_reason(exc)}") from exc
        self._trim_partial_tail()

    def _trim_partial_tail(self) -> None:
        """A file left by a power cut may end mid-line: cut it back to the last newline."""
        if self._size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(max(0, self._size - 65536))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = self._size - len(tail) + cut + 1 if cut >= 0 else max(0, self._size - len(tail))
        os.ftruncate(self._fd, keep)
        log.warning("event log %s ended mid-line; cut %d bytes", self.path, self._size - keep)
        self._size = keep

    def _rotate(self) -> None:
        self._close_fd()
        try:
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{i}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                os.unlink(self.path)
        except OSError as exc:
            log.warning("event log %s: cannot rotate: %s", self.path, exc)
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self._fd = None
            log.warning("event log %s: cannot reopen after rotating: %s", self.path, exc)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (for at most ``timeout``), then close the file."""
        if not end_worker(self._queue, self._END, self._thread, timeout):
            log.warning(
                "event log %s: %d records not written at exit", self.path, self._queue.qsize()
            )

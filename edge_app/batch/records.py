"""Writing classify records as JSONL, CSV or a table, and reading them back for --resume.

Each record is written as one complete line and flushed, so an interrupted run leaves a
file of whole lines; --resume also drops a trailing partial line defensively.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TextIO

FORMATS = ("table", "jsonl", "csv")


class JsonlWriter:
    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class CsvWriter:
    def __init__(self, stream: TextIO, top_k: int, header: bool = True):
        self.stream = stream
        self.top_k = top_k
        if header:
            columns = ["path", "ok"]
            for rank in range(1, top_k + 1):
                columns += [f"index{rank}", f"label{rank}", f"score{rank}"]
            columns += ["inference_ms", "error"]
            self._line(columns)

    def _line(self, row: list) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(row)
        self.stream.write(buffer.getvalue())
        self.stream.flush()

    def write(self, record: dict) -> None:
        row = [record["path"], "true" if record["ok"] else "false"]
        top = record.get("top", [])
        for rank in range(self.top_k):
            if rank < len(top):
                row += [top[rank]["index"], top[rank]["label"], top[rank]["score"]]
            else:
                row += ["", "", ""]
        row += [record.get("inference_ms", ""), record.get("error", "")]
        self._line(row)

    def close(self) -> None:
        self.stream.flush()


class TableWriter:
    """Human-readable: one line per image with its best predictions."""

    def __init__(self, stream: TextIO, top_k: int):
        self.stream = stream
        self.top_k = top_k

    def write(self, record: dict) -> None:
        if record["ok"]:
            shown = record["top"][: min(self.top_k, 3)]
            text = (
                "   ".join(f"{p['score'] * 100:5.1f}% {p['label'].split(',')[0]}" for p in shown)
                or "(no prediction above threshold)"
            )
            self.stream.write(f"{record['path']}  {text}  [{record['inference_ms']:.1f} ms]\n")
        else:
            self.stream.write(f"{record['path']}  FAILED: {record['error']}\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def make_writer(fmt: str, stream: TextIO, top_k: int, header: bool = True):
    """The writer for ``fmt``; ``top_k`` sizes the CSV columns and the table's lines,
    ``header`` (CSV) is off when appending to an existing file."""
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream, top_k, header=header)
    return TableWriter(stream, top_k)


def done_paths(path: Path, fmt: str) -> set[str]:
    """Paths already recorded in an output file; truncates a trailing partial line."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    text = data.decode("utf-8", errors="replace")
    done: set[str] = set()
    if fmt == "jsonl":
        for line in text.splitlines():
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                continue
    elif fmt == "csv":
        rows = csv.reader(io.StringIO(text))
        next(rows, None)
        done = {row[0] for row in rows if row}
    return done


def open_output(path: Path | None, resume: bool) -> tuple[TextIO, bool]:
    """(stream, existing_content). Appends when resuming, else truncates."""
    if path is None:
        import click

        return click.get_text_stream("stdout"), False
    existing = resume and path.exists() and path.stat().st_size > 0
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a" if existing else "w", encoding="utf-8", newline="")  # noqa: SIM115
    return stream, existing


def fsync_close(stream: TextIO) -> None:
    stream.flush()
    try:
        os.fsync(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass

"""Writing classify records as JSONL, CSV or a table, and reading them back for --resume.

The promise: an output file holds only whole records, and every input appears in it
once, however often a run is interrupted and resumed.

- Each record is encoded to bytes first and handed to the file descriptor in one go
  (``OutputSink``), with SIGINT and SIGTERM held back meanwhile, so a signal never cuts a
  line; if the write fails (disk full, I/O error) the file is cut back to the last whole
  record and the failure is one ``OutputError`` (exit 2).
- File names are str with surrogate escapes for bytes that are not UTF-8 (how Python
  hands out such names). JSONL writes such a record with ``\\udcXX`` escapes (valid JSON
  that decodes to the very str again). CSV keeps its cells UTF-8 with
  ``csv_path_cell()``: a name holding a backslash or such bytes has its backslashes
  doubled and each such byte written as ``\\xNN`` (every other name is as it is).
- --resume reads the file as bytes, splits records on ``\\n`` only (never at U+2028 or
  U+0085 inside a JSON string), cuts a trailing partial record and recognises the paths
  written above.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import stat
from pathlib import Path

from edge_app.errors import ConfigError, OutputError

FORMATS = ("table", "jsonl", "csv")
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class OutputSink:
    """A text stream over a file descriptor that writes each ``write()`` whole or not at
    all: the writers call it once per record."""

    encoding = "utf-8"  # what write() encodes to (a table draws Unicode bars for it)

    def __init__(self, fd: int, name: str, *, errors: str = "strict", owned: bool = True):
        self.fd = fd
        self.name = name
        self.errors = errors  # how str that UTF-8 cannot hold is encoded
        self.owned = owned  # close the descriptor in close() (not for stdout)
        try:
            self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self.regular = False
        self.records = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8", self.errors)
        # A signal waits until the record is on its way: no handler runs mid-record.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            self._write_all(data)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.records += 1

    def _write_all(self, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                n = os.write(self.fd, data[written:])
                if n <= 0:
                    raise OSError(0, "short write")
                written += n
        except OSError as exc:
            self._cut(written)
            raise OutputError(f"cannot write to {self.name}: {exc.strerror or exc}") from None

    def _cut(self, written: int) -> None:
        """Take back the ``written`` bytes of a record that did not fit."""
        if not (written and self.regular):
            return
        try:
            end = os.lseek(self.fd, 0, os.SEEK_CUR)
            os.ftruncate(self.fd, end - written)
            os.lseek(self.fd, end - written, os.SEEK_SET)
        except OSError:
            pass  # --resume cuts a partial last record too

    def flush(self) -> None:
        """Every write already went to the kernel."""

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def close(self) -> None:
        """Make the records durable (files only); a failure here is an OutputError too."""
        try:
            if self.regular:
                os.fsync(self.fd)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.name}: {exc.strerror or exc}") from None
        finally:
            if self.owned:
                fd, self.fd = self.fd, -1
                if fd >= 0:
                    os.close(fd)


def _json_line(record: dict) -> str:
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a name with bytes that are not UTF-8: \udcXX escapes
        line = json.dumps(record, ensure_ascii=True)
    return line + "\n"


def csv_path_cell(path: str) -> str:
    """A path as a UTF-8 CSV cell, one to one (see the module's docstring)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if "\\" not in path:
            return path
    out = []
    for char in path.replace("\\", "\\\\"):
        code = ord(char)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else char)
    text = "".join(out)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonlWriter:
    errors = "strict"  # _json_line never leaves a surrogate

    def __init__(self, stream):
        self.stream = stream

    def write(self, record: dict) -> None:
        self.stream.write(_json_line(record))
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def _csv_row(row: list) -> str:
    # "\r\n" as the writer's terminator makes it quote cells holding \r or \n (it quotes
    # the terminator's characters only); the record then ends in "\n" like the others.
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(row)
    return buffer.getvalue()[:-2] + "\n"


def csv_columns(top_k: int) -> list[str]:
    columns = ["path", "ok"]
    for rank in range(1, top_k + 1):
        columns += [f"index{rank}", f"label{rank}", f"score{rank}"]
    return columns + ["inference_ms", "error"]


class CsvWriter:
    errors = "strict"  # csv_path_cell keeps cells UTF-8

    def __init__(self, stream, top_k: int, header: bool = True):
        self.stream = stream
        self.top_k = top_k
        if header:
            self._line(csv_columns(top_k))

    def _line(self, row: list) -> None:
        self.stream.write(_csv_row(row))
        self.stream.flush()

    def write(self, record: dict) -> None:
        row = [csv_path_cell(record["path"]), "true" if record["ok"] else "false"]
        top = record.get("top", [])
        for rank in range(self.top_k):
            if rank < len(top):
                row += [top[rank]["index"], top[rank]["label"], top[rank]["score"]]
            else:
                row += ["", "", ""]
        error = record.get("error", "")
        row += [record.get("inference_ms", ""), error.encode("utf-8", "backslashreplace").decode()]
        self._line(row)

    def close(self) -> None:
        self.stream.flush()


def make_writer(fmt: str, stream, top_k: int, header: bool = True):
    """The file writer for ``fmt`` (jsonl or csv; the terminal's table is
    ``edge_app.cli.table.ClassifyTable``); ``top_k`` sizes the CSV columns, ``header``
    is off when appending to an existing file."""
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream, top_k, header=header)
    raise ValueError(f"no file writer for {fmt!r}")


# -- reading back for --resume -------------------------------------------------------------
def _read_for_resume(path: Path) -> bytes | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"--resume: {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OutputError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None


def _truncate(path: Path, size: int) -> None:
    try:
        with open(path, "r+b") as handle:
            handle.truncate(size)
    except OSError as exc:
        raise OutputError(f"--resume: cannot repair {path}: {exc.strerror or exc}") from None


def _jsonl_done(data: bytes) -> tuple[set[str], int]:
    """(paths, bytes of whole records): records end at b"\\n" and nowhere else."""
    done: set[str] = set()
    end = data.rfind(b"\n") + 1
    for line in data[:end].split(b"\n"):
        try:
            record = json.loads(line.decode("utf-8"))
            done.add(record["path"])
        except (ValueError, KeyError, TypeError):
            continue  # not a record (a line damaged some other way): redone
    return done, end


def _csv_done(data: bytes) -> tuple[set[str], int]:
    """(path cells, bytes of whole records). A record may span lines inside quotes: it
    ends at the first b"\\n" with an even count of quotes before it (CSV doubles quotes
    inside quoted cells)."""
    cells: list[str] = []
    whole = start = quotes = 0
    while True:
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        quotes += data.count(b'"', start, newline)
        start = newline + 1
        if quotes % 2:
            continue  # inside a quoted cell
        record = data[whole:start].decode("utf-8", "surrogateescape")
        whole, quotes = start, 0
        try:
            row = next(csv.reader([record[:-1]], strict=True), [])
        except csv.Error:
            continue  # not a record we wrote: redone
        if row:
            cells.append(row[0])
    return set(cells[1:]), whole  # the first row is the header


def format_for(path: Path | None) -> str | None:
    """The format an output file's name asks for (``.csv``, ``.jsonl``), else None."""
    suffix = path.suffix.lower() if path is not None else ""
    return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)


def _check_same_kind(path: Path, data: bytes, fmt: str, top_k: int | None) -> None:
    """--resume appends to a file of the same format (and CSV columns), or refuses."""
    first = data.split(b"\n", 1)[0]
    looks_jsonl = first.lstrip().startswith(b"{")
    if fmt == "jsonl" and not looks_jsonl:
        raise ConfigError(f"--resume: {path} does not hold JSONL records (use its --format)")
    if fmt == "csv":
        if looks_jsonl or not first.startswith(b"path,ok"):
            raise ConfigError(f"--resume: {path} does not hold CSV records (use its --format)")
        if top_k is not None and first.decode("utf-8", "replace") != ",".join(csv_columns(top_k)):
            raise ConfigError(
                f"--resume: {path} has other CSV columns; resume with the --top-k it was "
                "written with"
            )


def done_paths(path: Path, fmt: str, top_k: int | None = None) -> set[str]:
    """Paths already recorded in an output file (as the writer writes them: for CSV see
    ``csv_path_cell``); cuts a trailing partial record."""
    data = _read_for_resume(path)
    if not data or not data.strip(b"\n"):
        return set()
    if b"\n" in data:
        _check_same_kind(path, data, fmt, top_k)
    done, whole = _csv_done(data) if fmt == "csv" else _jsonl_done(data)
    if whole < len(data):
        _truncate(path, whole)
    return done


def is_done(item_path: str, done: set[str], fmt: str) -> bool:
    return (csv_path_cell(item_path) if fmt == "csv" else item_path) in done


def open_output(path: Path | None, resume: bool, errors: str = "strict") -> tuple[OutputSink, bool]:
    """(sink, existing_content). Appends when resuming, else truncates. Stdout when
    ``path`` is None."""
    if path is None:
        return OutputSink(1, "stdout", errors=errors, owned=False), False
    try:
        if path.is_dir():
            raise OutputError(f"cannot write to {path}: is a folder")
        existing = resume and path.exists() and path.stat().st_size > 0
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO nobody reads fails at once (ENXIO) instead of blocking
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        flags |= os.O_APPEND if existing else os.O_TRUNC
        fd = os.open(path, flags, 0o644)
        os.set_blocking(fd, True)
    except FileExistsError:
        raise OutputError(f"cannot write to {path}: a parent is not a folder") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OutputError(f"cannot write to {path}: a FIFO nobody reads") from None
        raise OutputError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return OutputSink(fd, str(path), errors=errors), existing


def fsync_close(stream) -> None:
    """Close a sink (kept for callers of the old text-stream API)."""
    stream.close()

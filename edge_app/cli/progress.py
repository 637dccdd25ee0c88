"""A progress bar for long commands: count, rate and an ETA that is sane from the start.

    with Progress(len(items), unit="images", label="classifying") as bar:
        for item in items:
            ...
            bar.advance()

    with Progress(size, unit="bytes", label="fetching model") as bar:   # a download
        bar.advance(len(chunk))

It draws on stderr only when stderr is a terminal and ``-q`` was not given; otherwise it
stays quiet, so logs and pipes get no carriage-return litter.

Why not ``click.progressbar``: its ETA divides the time since the bar appeared by the
items done, so a slow first item (model load, worker start-up) predicts hours for a
16 s job. Here the rate is measured from the first item done (the start-up is not
work), smoothed exponentially over a few seconds, and no ETA is shown until
``min_items`` are done and ``min_seconds`` have passed since the first.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

import click

REDRAW_S = 0.1  # at most ten redraws a second: a terminal write costs ~0.1 ms
RATE_TAU_S = 5.0  # the rate is an exponential average over about this many seconds


def quiet_requested() -> bool:
    """True when the user asked for quiet (``edge-app -q``) or logging is above INFO."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("quiet"):
        return True
    return logging.getLogger().getEffectiveLevel() > logging.INFO


def progress_wanted(stream: TextIO | None = None) -> bool:
    """The default for a bar: on when ``stream`` (stderr) is a terminal and not quiet."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and not quiet_requested()


def format_duration(seconds: float) -> str:
    """``0:07``, ``3:25``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


class RateEstimate:
    """Items per second, measured from the first item done and smoothed exponentially.

    ``update(done, now)`` is called with the running count. Items and seconds are each
    summed with weights that halve every ``tau * ln 2`` seconds, and the rate is their
    ratio: a burst (worker processes hand results back in chunks) counts as its items
    over the time it took, not as an instant of thousands per second, and one slow item
    moves the figure a little, not a lot. The work before the first item (model load,
    worker start-up) is not counted at all.
    """

    def __init__(self, tau: float = RATE_TAU_S, min_span: float = 0.2):
        self.tau = tau
        self.min_span = min_span  # no rate from less time than this
        self.first: tuple[float, float] | None = None  # (count, time) at the first item
        self.last: tuple[float, float] | None = None
        self._items = 0.0  # decayed sums
        self._seconds = 0.0

    def update(self, done: float, now: float) -> None:
        if done <= 0:
            return
        if self.first is None:
            self.first = self.last = (done, now)
            return
        last_done, last_time = self.last
        dt = max(0.0, now - last_time)
        decay = math.exp(-dt / self.tau)
        self._items = self._items * decay + (done - last_done)
        self._seconds = self._seconds * decay + dt
        self.last = (done, now)

    @property
    def rate(self) -> float | None:
        if self._seconds < self.min_span or self._items <= 0:
            return None
        return self._items / self._seconds

    def seconds_since_first(self, now: float) -> float:
        return now - self.first[1] if self.first else 0.0


class Progress:
    """A one-line bar on ``stream``: ``label [####....] 120/1,000 images 42.0 images/s ETA 0:21``.

    ``total`` may be None (unknown: count and rate only). ``unit="bytes"`` shows sizes
    and MB/s (downloads). ``enabled`` None means :func:`progress_wanted`. ``clock`` is
    injectable so the arithmetic can be tested without waiting.
    """

    def __init__(
        self,
        total: int | None,
        unit: str = "items",
        *,
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
        min_items: int = 3,
        min_seconds: float = 2.0,
    ):
        self.total = total
        self.unit = unit
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = progress_wanted(self.stream) if enabled is None else enabled
        self.clock = clock
        self.width = width
        self.min_items = min_items
        self.min_seconds = min_seconds
        self.done = 0
        self.started = clock()
        self.rate = RateEstimate()
        self._drawn_at: float | None = None
        self._visible = False

    # -- the API ------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self.render()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: float = 1) -> None:
        self.done += n
        now = self.clock()
        self.rate.update(self.done, now)
        if self.enabled and (self._drawn_at is None or now - self._drawn_at >= REDRAW_S):
            self.render(now)

    def clear(self) -> None:
        """Erase the bar (before other output goes to the same terminal); the next
        ``advance`` draws it again."""
        if self.enabled and self._visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._visible = False
            self._drawn_at = None

    def close(self) -> None:
        """Erase the bar: the command's own summary line says what was done."""
        self.clear()

    # -- the arithmetic -----------------------------------------------------------------
    @property
    def bytes_mode(self) -> bool:
        return self.unit == "bytes"

    def items_per_second(self) -> float | None:
        return self.rate.rate

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left, or None while there is too little evidence to say."""
        if self.total is None or self.rate.rate is None or self.rate.rate <= 0:
            return None
        now = self.clock() if now is None else now
        if not self.bytes_mode and self.done < self.min_items:
            return None
        if self.rate.seconds_since_first(now) < self.min_seconds and self.done < self.total:
            return None
        return max(0.0, (self.total - self.done) / self.rate.rate)

    def text(self, now: float | None = None, width: int | None = None) -> str:
        """The bar's line, at most ``width`` columns."""
        now = self.clock() if now is None else now
        width = width or self.width or shutil.get_terminal_size((80, 24)).columns
        if self.bytes_mode:
            count = format_bytes(self.done)
            if self.total is not None:
                count += f" / {format_bytes(self.total)}"
        elif self.total is not None:
            noun = self.unit if self.total != 1 else _singular(self.unit)
            count = f"{self.done:,}/{self.total:,} {noun}"
        else:
            noun = self.unit if self.done != 1 else _singular(self.unit)
            count = f"{self.done:,} {noun}"
        rate = self.rate.rate
        if rate is None:
            speed = ""
        elif self.bytes_mode:
            speed = f"{format_bytes(rate)}/s"
        else:
            speed = f"{rate:.1f} {self.unit}/s" if rate < 100 else f"{rate:,.0f} {self.unit}/s"
        eta = self.eta_seconds(now)
        when = f"ETA {format_duration(eta)}" if eta is not None else "ETA --:--"
        if self.total is None:
            when = f"{format_duration(now - self.started)} elapsed"
        tail = "  ".join(part for part in (count, speed, when) if part)
        head = f"{self.label} " if self.label else ""
        room = width - 1 - len(head) - len(tail) - 4  # "[" "]" and two spaces
        if self.total is not None and room >= 10:
            cells = min(room, 40)
            filled = int(cells * min(self.done / self.total, 1.0)) if self.total else cells
            bar = "[" + "#" * filled + "." * (cells - filled) + "]"
            return f"{head}{bar}  {tail}"[: width - 1]
        return f"{head}{tail}"[: width - 1]

    def render(self, now: float | None = None) -> None:
        if not self.enabled:
            return
        now = self.clock() if now is None else now
        self.stream.write("\r\x1b[K" + self.text(now))
        self.stream.flush()
        self._drawn_at = now
        self._visible = True


def _singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") and unit != "bytes" else unit


class ByteProgress:
    """The model store's ``on_progress(done, total)`` callback, drawn as a bytes-mode
    :class:`Progress`: ``start(label)`` begins a transfer (a download, a resumed one),
    ``finish()`` ends its line. Bytes already on disk when a resumed download starts
    count in the total, not in the rate."""

    def __init__(self, stream: TextIO | None = None, *, force: bool = False, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = True if force else progress_wanted(self.stream)
        self.clock = clock
        self.label = ""
        self._bar: Progress | None = None

    def start(self, label: str) -> None:
        self.finish()
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = Progress(
                total or None,
                "bytes",
                label=f"{self.label}:" if self.label else "",
                stream=self.stream,
                enabled=True,
                clock=self.clock,
            )
            self._bar.done = done  # the part already there: not this run's rate
            self._bar.rate.update(done, self.clock())
        self._bar.advance(done - self._bar.done)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

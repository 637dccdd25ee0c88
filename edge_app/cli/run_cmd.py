"""`edge-app run`: live classification of a camera, video file or stream, with overlay."""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import click

from edge_app.cli.options import build_classifier, classifier_options, pop_classifier_kwargs

log = logging.getLogger("edge_app.run")


def _size(ctx, param, value: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 1280x720") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise click.BadParameter("width and height must be even and at least 16")
    return width, height


class JsonLinesWriter:
    """Prints one JSON record per result on its own thread, so a slow reader of stdout
    never holds up inference. ``lossless`` (every frame matters) waits for room instead
    of dropping records when the reader falls far behind."""

    _END = object()

    def __init__(self, stream, lossless: bool, capacity: int = 1024):
        self.stream = stream
        self.lossless = lossless
        self.dropped = 0  # records not queued: the reader was too slow
        self.submitted = 0
        self.written = 0
        self.broken = threading.Event()  # the reader went away (e.g. `| head`)
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._write, name="edge-app-json", daemon=True)
        self._thread.start()

    def __call__(self, result, frame) -> None:
        if self.broken.is_set():
            return
        self.submitted += 1
        try:
            if self.lossless:
                self._queue.put(result, timeout=5.0)
            else:
                self._queue.put_nowait(result)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while True:
            result = self._queue.get()
            if result is self._END:
                return
            try:
                self.stream.write(json.dumps(result.to_json()) + "\n")
                self.stream.flush()
                self.written += 1
            except (BrokenPipeError, ValueError, OSError):
                self.broken.set()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued; give up after ``timeout`` if stdout stays blocked."""
        try:
            self._queue.put(self._END, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    @property
    def unwritten(self) -> int:
        return 0 if self.broken.is_set() else self.submitted - self.written


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the run like Ctrl-C: camera released, summary printed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. some test runners)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary_line(summary: dict, json_unwritten: int = 0) -> str:
    line = (
        f"edge-app: {summary['frames']} frames, {summary['results']} results, "
        f"{summary['dropped']} dropped, {summary['mean_fps']:.1f} FPS mean, "
        f"latency p50 {summary['latency_ms_p50']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms"
    )
    if json_unwritten:
        line += f" ({json_unwritten} JSON records not written: stdout was read too slowly)"
    return line


@click.command("run")
@click.option(
    "-s",
    "--source",
    default="auto",
    show_default=True,
    metavar="SPEC",
    help="auto (a Pi camera, else the first USB/V4L2 camera), picamera2[:N], a camera "
    "number or /dev/videoN, a video file, or an rtsp:// or http:// URL.",
)
@click.option(
    "--size",
    "size",
    default="640x480",
    show_default=True,
    callback=_size,
    metavar="WxH",
    help="Camera picture size (the display stream).",
)
@click.option(
    "--fps",
    type=click.FloatRange(min=1.0, max=240.0),
    default=30.0,
    show_default=True,
    help="Camera frame rate.",
)
@click.option("--hflip", is_flag=True, help="Mirror a Pi camera's picture left-right.")
@click.option("--vflip", is_flag=True, help="Flip a Pi camera's picture upside down.")
@click.option(
    "--buffer-count",
    type=click.IntRange(min=1, max=16),
    default=4,
    show_default=True,
    help="picamera2 buffers.",
)
@click.option(
    "--pace/--no-pace",
    default=True,
    show_default=True,
    help="Play video files at their frame rate like a camera, or classify every frame "
    "in order as fast as possible.",
)
@click.option("--loop", is_flag=True, help="Repeat a video file.")
@click.option("--headless", is_flag=True, help="No window (the default when there is no display).")
@click.option("--fullscreen", is_flag=True, help="Full-screen window.")
@click.option("--json", "json_lines", is_flag=True, help="Print one JSON record per result.")
@click.option("--max-frames", type=click.IntRange(min=1), metavar="N", help="Stop after N results.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0, min_open=True),
    metavar="SECONDS",
    help="Stop after this long.",
)
@click.option(
    "--smooth",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    is_flag=False,
    flag_value=0.7,
    show_default=True,
    help="Average scores over recent results so the label does not flicker "
    "(0: off; --smooth alone: 0.7). --json records then carry the smoothed top-k.",
)
@click.option(
    "--hysteresis",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    metavar="MARGIN",
    help="Keep the shown label until another scores this much higher. "
    "Default: 0.1 with --smooth, else 0.",
)
@click.option(
    "--snapshot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where the `s` key saves snapshots.",
)
@click.option(
    "--gate",
    type=click.Choice(["off", "motion"]),
    default="off",
    show_default=True,
    help="motion: classify only when the picture changes (and every --max-interval s).",
)
@click.option(
    "--max-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="With --gate motion: classify a still scene again after S seconds.",
)
@classifier_options
def run(**kwargs) -> None:
    """Classify live frames from a camera, video file or stream, with an overlay.

    \b
    Keys in the window: q or Esc quit, s snapshot (PNG + JSON), p pause.
    Examples:
      edge-app run                                  (Pi camera or USB camera)
      edge-app run --source demo.mp4 --loop
      edge-app run --source rtsp://cam.local/stream --headless --json
    """
    from edge_app.live.motion import make_gate
    from edge_app.live.pipeline import Pipeline
    from edge_app.sources import make_source
    from edge_app.sources.picamera2_source import Picamera2Source

    classifier_kwargs = pop_classifier_kwargs(kwargs)
    hysteresis = kwargs["hysteresis"]
    if hysteresis is None:
        hysteresis = 0.1 if kwargs["smooth"] > 0 else 0.0

    window_reason = _no_window_reason(kwargs["headless"])
    # The source first: a wrong path or no camera is reported before a model is loaded
    # (or fetched).
    source = make_source(
        kwargs["source"],
        size=kwargs["size"],
        fps=kwargs["fps"],
        hflip=kwargs["hflip"],
        vflip=kwargs["vflip"],
        buffer_count=kwargs["buffer_count"],
        pace=kwargs["pace"],
        loop=kwargs["loop"],
    )
    classifier = build_classifier(**classifier_kwargs)
    if isinstance(source, Picamera2Source):  # let the ISP scale to the model's size
        model_height, model_width = classifier.input_size
        source.model_size = (model_width, model_height)
    pipeline = Pipeline(
        source,
        classifier,
        smooth=kwargs["smooth"],
        hysteresis=hysteresis,
        max_results=kwargs["max_frames"],
        duration=kwargs["duration"],
        gate=make_gate(kwargs["gate"], max_interval=kwargs["max_interval"]),
    )
    writer = None
    if kwargs["json_lines"]:
        writer = JsonLinesWriter(sys.stdout, lossless=source.lossless)
        pipeline.add_listener(writer)

    with _sigterm_as_interrupt():
        try:
            pipeline.start()  # opens the source: a SourceError ends here, in one line
            log.info("classifying %s with %s", source.description, classifier.describe())
            if window_reason:
                log.info("running without a window: %s", window_reason)
                _wait_headless(pipeline, writer)
            else:
                _show_window(pipeline, classifier, source, kwargs)
        except KeyboardInterrupt:
            pass
        finally:
            pipeline.stop()
            if writer is not None:
                writer.close()
    click.echo(summary_line(pipeline.summary(), writer.unwritten if writer else 0), err=True)
    if pipeline.error is not None:
        raise pipeline.error


def _no_window_reason(headless: bool) -> str | None:
    if headless:
        return "--headless"
    from edge_app.live.display import display_problem, has_gui

    problem = display_problem()
    if problem:
        return problem
    if not has_gui():
        return "this OpenCV has no window support (opencv-python-headless?)"
    return None


def _wait_headless(pipeline, writer: JsonLinesWriter | None) -> None:
    while not pipeline.wait(0.2):
        if writer is not None and writer.broken.is_set():
            return


def _show_window(pipeline, classifier, source, kwargs) -> None:
    from edge_app.live.display import LiveDisplay, Window
    from edge_app.live.overlay import Overlay

    window = Window(fullscreen=kwargs["fullscreen"])
    try:
        display = LiveDisplay(
            pipeline,
            Overlay(classifier.model_name, classifier.top_k),
            window,
            snapshot_dir=kwargs["snapshot_dir"],
            snapshot_extra={"source": source.description, "model": classifier.model_name},
        )
        display.run()
    finally:
        window.close()

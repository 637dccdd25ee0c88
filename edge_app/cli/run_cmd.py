"""`edge-app run`: live classification of a camera, video file or stream, with overlay."""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from edge_app.cli.options import (
    classifier_options,
    pipeline_options,
    pop_model_settings,
    settings_from_flags,
    source_options,
)
from edge_app.settings import PipelineSettings, SourceSettings
from edge_app.text import plural

log = logging.getLogger("edge_app.run")


def _size(ctx, param, value: str) -> tuple[int, int]:
    """WIDTHxHEIGHT as two numbers; their bounds are the settings' (source.width...)."""
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 1280x720") from None
    return width, height


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
        f"edge-app: {plural(summary['frames'], 'frame')}, {plural(summary['results'], 'result')}, "
        f"{summary['dropped']} dropped, {summary['mean_fps']:.1f} FPS mean, "
        f"latency p50 {summary['latency_ms_p50']:.1f} ms, p95 {summary['latency_ms_p95']:.1f} ms"
    )
    if json_unwritten:
        line += f" ({json_unwritten} JSON records not written: stdout was read too slowly)"
    return line


@click.command("run")
@source_options
@click.option(
    "--size",
    "size",
    default=f"{SourceSettings.width}x{SourceSettings.height}",
    show_default=True,
    callback=_size,
    metavar="WxH",
    help="Camera picture size (the display stream).",
)
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
@pipeline_options
@click.option(
    "--snapshot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where the `s` key saves snapshots.",
)
@click.option(
    "--teach-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keys 1-9 add the shown frame to DIR/<class>/ (learn it with `edge-app learn DIR`).",
)
@click.option(
    "--teach-classes",
    metavar="A,B,...",
    help="Classes for keys 1-9, in order. Default: the sub-folders of --teach-dir.",
)
@classifier_options
def run(**kwargs) -> None:
    """Classify live frames from a camera, video file or stream, with an overlay.

    \b
    Keys in the window: q or Esc quit, s snapshot (PNG + JSON), p pause,
    c show or hide the outline of the region the model sees; with --teach-dir,
    1-9 add the frame to that class's folder.
    Examples:
      edge-app run                                  (Pi camera or USB camera)
      edge-app run --source demo.mp4 --loop
      edge-app run --source rtsp://cam.local/stream --headless --json
    """
    from edge_app.live.assembly import build_pipeline
    from edge_app.live.sinks import JsonLinesWriter

    width, height = kwargs.pop("size")
    source_settings = settings_from_flags(
        SourceSettings,
        "source",
        kwargs,
        given={"width": (width, "--size"), "height": (height, "--size")},
    )
    model_settings = pop_model_settings(kwargs)
    pipeline_settings = settings_from_flags(PipelineSettings, "pipeline", kwargs)

    window_reason = _no_window_reason(kwargs["headless"])
    pipeline = build_pipeline(
        source_settings,
        model_settings,
        pipeline_settings,
        max_results=kwargs["max_frames"],
        duration=kwargs["duration"],
    )
    source, classifier = pipeline.source, pipeline.classifier
    writer = None
    if kwargs["json_lines"]:
        writer = JsonLinesWriter(sys.stdout, lossless=source.lossless)
        pipeline.add_sink(writer)

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


def _wait_headless(pipeline, writer) -> None:
    from edge_app.cli.progress import quiet_requested
    from edge_app.live.status_line import StatusLine

    # A status line on stderr (live on a terminal, unless JSON lines share that terminal).
    err = click.get_text_stream("stderr")
    live = err.isatty() and not (writer is not None and sys.stdout.isatty())
    status = None if quiet_requested() else StatusLine(pipeline, err, live=live)
    try:
        while not pipeline.wait(0.2):
            if status is not None:
                status.tick()
            if writer is not None and writer.broken.is_set():
                return
    finally:
        if status is not None:
            status.close()


def _show_window(pipeline, classifier, source, kwargs) -> None:
    from edge_app.live.display import LiveDisplay, Window
    from edge_app.live.overlay import Overlay

    teacher = None
    if kwargs["teach_dir"] is not None:
        from edge_app.learn.teach import KeyTeacher, TeachFolder

        names = kwargs["teach_classes"]
        classes = [c for c in names.split(",") if c.strip()] if names else None
        teacher = KeyTeacher(TeachFolder(kwargs["teach_dir"], classes))
    window = Window(fullscreen=kwargs["fullscreen"])
    display = LiveDisplay(
        pipeline,
        Overlay(
            classifier.model_name,
            classifier.top_k,
            crop=classifier.crop,
            model_size=classifier.input_size,
        ),
        window,
        snapshot_dir=kwargs["snapshot_dir"],
        snapshot_extra={"source": source.description, "model": classifier.model_name},
        teacher=teacher,
    )
    pipeline.add_sink(display)
    try:
        display.run()
    finally:
        display.close()

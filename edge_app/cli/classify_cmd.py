"""`edge-app classify`: the headless CLI over image files and folders."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from edge_app.batch.records import (
    FORMATS,
    done_paths,
    format_for,
    is_done,
    make_writer,
    open_output,
)
from edge_app.cli.options import classifier_options, pop_classifier_kwargs
from edge_app.cli.progress import Progress
from edge_app.cli.table import ClassifyTable
from edge_app.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    ConfigError,
    Interrupted,
    OutputError,
    WorkerError,
)
from edge_app.text import plural


@dataclass
class BatchPlan:
    classifier: object | None  # in-process classifier when workers == 1
    classifier_kwargs: dict
    workers: int
    threads: int
    labels: list[str]
    runtime_summary: str = ""


def prepare_classifier(
    classifier_kwargs: dict, workers: int | None, inputs: int | None = None
) -> BatchPlan:
    """Validate the model once in this process (so a bad model is one line, exit 2) and
    plan the worker processes."""
    from edge_app.batch.workers import plan_workers
    from edge_app.inference.classifier import Classifier, resolve_model_path

    model_path = resolve_model_path(classifier_kwargs["model"])
    workers, threads = plan_workers(
        workers, classifier_kwargs.get("threads"), inputs=inputs, model_path=model_path
    )
    classifier_kwargs = dict(classifier_kwargs, threads=threads)
    classifier_kwargs["model"] = str(model_path)
    if workers == 1:
        classifier = Classifier(**classifier_kwargs)
        return BatchPlan(
            classifier, classifier_kwargs, workers, threads, classifier.labels, _banner(classifier)
        )
    # One thread for the check: no interpreter thread pool exists when workers fork.
    probe = Classifier(**dict(classifier_kwargs, threads=1))
    plan = BatchPlan(None, classifier_kwargs, workers, threads, probe.labels, _banner(probe))
    del probe
    return plan


def _banner(classifier) -> str:
    return f"{classifier.runtime.describe()}, {classifier.xnnpack_summary()}"


@contextlib.contextmanager
def signals_raise():
    """SIGINT and SIGTERM raise Interrupted (exit 130 / 143) in the main thread, where the
    run stops at a whole record; the previous handlers come back afterwards."""

    from edge_app.cli import interrupt_handler

    # A worker forked just before its initializer resets this handler (the pool ends
    # workers with SIGTERM) dies of the signal quietly: the handler knows its process.
    on_signal = interrupt_handler()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_signals() -> None:
    """While the output is closed after a stop: a second Ctrl-C must not cut that short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def shown_path(path: str) -> str:
    """A path for a one-line message: control characters and bytes that are not UTF-8
    escaped the way Python writes them."""
    if path.isprintable():
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    return repr(path)[1:-1]


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@classifier_options
@click.option(
    "--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders."
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes, each with its own interpreter. Default: one per core "
    "(with --threads T: cores / T).",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output format. Default: table on a terminal, jsonl otherwise.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write records to FILE instead of stdout.",
)
@click.option(
    "--resume", is_flag=True, help="Skip paths already recorded in --output and append the rest."
)
@click.option(
    "--full-decode",
    is_flag=True,
    help="Decode JPEGs at full resolution (default: libjpeg's 1/2, 1/4, 1/8 scaling "
    "whenever the result still covers the model input).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal and not -q).",
)
def classify(paths, recursive, workers, fmt, output, resume, full_decode, progress, **kwargs):
    """Classify image files, folders and globs (JPEG, PNG, BMP, WebP, TIFF).

    One record per input, in input order. JSONL records are
    {"path", "ok": true, "top": [{"index", "label", "score"}...], "inference_ms"} or
    {"path", "ok": false, "error"}.

    Exit codes: 0 every input classified, 1 some inputs failed, 2 usage, model,
    configuration or output error (disk full, read-only, closed pipe), 130 interrupted
    (Ctrl-C), 143 SIGTERM; the output keeps whole records: rerun with --resume to
    continue. The format follows -o's suffix (.csv, .jsonl) unless --format says.

    \b
    Examples:
      edge-app classify photos/
      edge-app classify 'shots/**/*.jpg' --format csv -o results.csv
      edge-app classify big_folder/ -o out.jsonl --resume
    """
    with signals_raise():
        _classify(paths, recursive, workers, fmt, output, resume, full_decode, progress, kwargs)


def _classify(paths, recursive, workers, fmt, output, resume, full_decode, progress, kwargs):
    from edge_app.batch.workers import discover, run_batch

    classifier_kwargs = pop_classifier_kwargs(kwargs)
    stdout_tty = sys.stdout.isatty()
    fmt = fmt or format_for(output) or ("table" if (output is None and stdout_tty) else "jsonl")
    if resume and output is None:
        raise ConfigError("--resume needs --output FILE (the file to continue)")
    if resume and fmt == "table":
        raise ConfigError("--resume works with --format jsonl or csv")

    items, skipped = discover(paths, recursive)
    top_k = classifier_kwargs.get("top_k")
    already = done_paths(output, fmt, top_k) if resume and output else set()
    todo = [item for item in items if not is_done(item.path, already, fmt)]
    resumed = len(items) - len(todo)

    plan = prepare_classifier(classifier_kwargs, workers, inputs=len(todo))
    classifier, classifier_kwargs = plan.classifier, plan.classifier_kwargs
    workers, threads = plan.workers, plan.threads
    # How the writer's text meets names that UTF-8 cannot hold: the files' writers keep
    # them exact (JSONL escapes, CSV cells); the table for eyes shows them escaped.
    errors = "backslashreplace" if fmt == "table" else "strict"
    stream, existing = open_output(output, resume, errors=errors)
    done = failed = 0
    where = f"; rerun with --resume -o {shlex.quote(str(output))} to continue" if output else ""
    records = None
    err = click.get_text_stream("stderr")
    bar = Progress(len(todo), "images", label="classifying", stream=err, enabled=progress)
    try:
        if fmt == "table":  # aligned columns for a person (cli/table.py); JSONL/CSV for programs
            paths_shown = [item.path for item in todo]
            writer = ClassifyTable(stream, paths, paths_shown, before_line=bar.clear)
        else:
            writer = make_writer(fmt, stream, classifier_kwargs["top_k"], header=not existing)
        note = f"; {resumed} already in {output}" if resumed else ""
        click.echo(
            f"classifying {plural(len(todo), 'image')} with "
            f"{Path(classifier_kwargs['model']).stem}: {plural(workers, 'worker')} x "
            f"{plural(threads, 'thread')}; {plan.runtime_summary}{note}",
            err=True,
        )
        if skipped:
            click.echo(
                f"skipping {plural(skipped, 'file')} that are not images (by suffix)", err=True
            )

        decode_kwargs = {"reduced": not full_decode}
        start = time.perf_counter()
        records = run_batch(todo, classifier_kwargs, workers, decode_kwargs, classifier)
        bar.render()
        for record in records:
            writer.write(record)
            done += 1
            failed += not record["ok"]
            if not record["ok"] and output is not None:
                bar.clear()
                click.echo(f"{shown_path(record['path'])}: {record['error']}", err=True)
            bar.advance()
        bar.close()
        writer.close()
    except Interrupted as exc:
        _ignore_signals()
        bar.close()
        _stop(records, stream)
        what = "interrupted" if exc.signum == signal.SIGINT else "terminated"
        click.echo(
            f"edge-app: {what} after {done} of {plural(len(todo), 'image')}{where}", err=True
        )
        sys.exit(exc.exit_code)
    except (OutputError, WorkerError) as exc:
        _ignore_signals()
        bar.close()
        _stop(records, stream)
        raise type(exc)(
            f"{exc.message} after {done} of {plural(len(todo), 'image')}{where}"
        ) from None
    except BaseException:
        bar.close()
        _stop(records, stream)
        raise
    stream.close()  # durable on disk, or an OutputError
    elapsed = time.perf_counter() - start
    rate = done / elapsed if elapsed > 0 else 0.0
    click.echo(
        f"done: {plural(done, 'image')}, {failed} failed, {elapsed:.1f} s, {rate:.1f} images/s",
        err=True,
    )
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _stop(records, stream) -> None:
    """End the worker processes and close the output after a failure or a signal."""
    if records is not None:
        records.close()  # the pool's finally: terminate and join the workers
    try:
        stream.close()
    except OutputError:
        pass  # the first failure is the one reported

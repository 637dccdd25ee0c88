"""`edge-app classify`: the headless CLI over image files and folders."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from edge_app.batch.records import FORMATS, done_paths, fsync_close, make_writer, open_output
from edge_app.cli.options import classifier_options, pop_classifier_kwargs
from edge_app.cli.progress import Progress
from edge_app.cli.table import ClassifyTable
from edge_app.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError
from edge_app.text import plural


@dataclass
class BatchPlan:
    classifier: object | None  # in-process classifier when workers == 1
    classifier_kwargs: dict
    workers: int
    threads: int
    labels: list[str]
    runtime_summary: str = ""


def prepare_classifier(classifier_kwargs: dict, workers: int | None) -> BatchPlan:
    """Validate the model once in this process (so a bad model is one line, exit 2) and
    plan the worker processes."""
    from edge_app.batch.workers import plan_workers
    from edge_app.inference.classifier import Classifier, resolve_model_path

    workers, threads = plan_workers(workers, classifier_kwargs.get("threads"))
    classifier_kwargs = dict(classifier_kwargs, threads=threads)
    classifier_kwargs["model"] = str(resolve_model_path(classifier_kwargs["model"]))
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
    type=click.Path(dir_okay=False, path_type=Path),
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

    Exit codes: 0 every input classified, 1 some inputs failed, 2 usage, model or
    configuration error, 130 interrupted (rerun with --resume to continue).

    \b
    Examples:
      edge-app classify photos/
      edge-app classify 'shots/**/*.jpg' --format csv -o results.csv
      edge-app classify big_folder/ -o out.jsonl --resume
    """
    from edge_app.batch.workers import discover, run_batch

    classifier_kwargs = pop_classifier_kwargs(kwargs)
    stdout_tty = sys.stdout.isatty()
    fmt = fmt or ("table" if (output is None and stdout_tty) else "jsonl")
    if resume and output is None:
        raise ConfigError("--resume needs --output FILE (the file to continue)")
    if resume and fmt == "table":
        raise ConfigError("--resume works with --format jsonl or csv")

    items, skipped = discover(paths, recursive)
    already = done_paths(output, fmt) if resume and output else set()
    todo = [item for item in items if item.path not in already]

    plan = prepare_classifier(classifier_kwargs, workers)
    classifier, classifier_kwargs = plan.classifier, plan.classifier_kwargs
    workers, threads = plan.workers, plan.threads
    stream, existing = open_output(output, resume)
    err = click.get_text_stream("stderr")
    bar = Progress(len(todo), "images", label="classifying", stream=err, enabled=progress)
    if fmt == "table":  # aligned columns for a person (cli/table.py); JSONL/CSV for programs
        paths_shown = [item.path for item in todo]
        writer = ClassifyTable(stream, paths, paths_shown, before_line=bar.clear)
    else:
        writer = make_writer(fmt, stream, classifier_kwargs["top_k"], header=not existing)
    note = f"; {len(already)} already in {output}" if already else ""
    click.echo(
        f"classifying {plural(len(todo), 'image')} with {Path(classifier_kwargs['model']).stem}: "
        f"{plural(workers, 'worker')} x {plural(threads, 'thread')}; {plan.runtime_summary}{note}",
        err=True,
    )
    if skipped:
        click.echo(f"skipping {plural(skipped, 'file')} that are not images (by suffix)", err=True)

    decode_kwargs = {"reduced": not full_decode}
    failed = done = 0
    start = time.perf_counter()
    records = run_batch(todo, classifier_kwargs, workers, decode_kwargs, classifier)
    try:
        bar.render()
        for record in records:
            writer.write(record)
            done += 1
            failed += not record["ok"]
            if not record["ok"] and output is not None:
                bar.clear()
                click.echo(f"{record['path']}: {record['error']}", err=True)
            bar.advance()
    except KeyboardInterrupt:
        bar.close()
        writer.close()
        if output is not None:
            fsync_close(stream)
        where = f"; rerun with --resume -o {output} to continue" if output else ""
        click.echo(f"interrupted after {done} of {plural(len(todo), 'image')}{where}", err=True)
        sys.exit(130)
    bar.close()
    writer.close()
    if output is not None:
        fsync_close(stream)
    elapsed = time.perf_counter() - start
    rate = done / elapsed if elapsed > 0 else 0.0
    click.echo(
        f"done: {plural(done, 'image')}, {failed} failed, {elapsed:.1f} s, {rate:.1f} images/s",
        err=True,
    )
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)

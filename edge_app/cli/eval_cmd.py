"""`edge-app eval`: top-1/top-5 accuracy of a model on a labelled image folder."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from edge_app.cli.options import classifier_options, pop_classifier_kwargs
from edge_app.errors import ConfigError


@click.command("eval")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@classifier_options
@click.option(
    "--truth",
    default="auto",
    show_default=True,
    metavar="folder|filename|auto|FILE.csv",
    help="Where the true class comes from: the parent folder's name, the file name "
    "(after an optional `<id>_` prefix, underscores as spaces, matched against any "
    "synonym of a label), auto (folder, then file name), or a CSV of path,label.",
)
@click.option("-w", "--workers", type=click.IntRange(min=1), help="Worker processes.")
@click.option("--recursive/--no-recursive", default=True, show_default=True)
@click.option(
    "--worst",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Worst classes and confusions to list.",
)
@click.option(
    "--records",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every classify record (JSONL) to FILE.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_command(paths, truth, workers, recursive, worst, records, as_json, **kwargs):
    """Measure top-1 and top-5 accuracy on labelled images.

    \b
    Example (the 1,000-image ImageNet sample, class in the file name):
      edge-app eval ../shared/images/imagenet-sample --truth filename
    """
    from edge_app.batch.evaluate import TRUTH_MODES, EvalReport, LabelMatcher, TruthSource
    from edge_app.batch.workers import discover, run_batch
    from edge_app.cli.classify_cmd import prepare_classifier

    classifier_kwargs = pop_classifier_kwargs(kwargs)
    classifier_kwargs["top_k"] = max(5, classifier_kwargs["top_k"])
    classifier_kwargs["threshold"] = 0.0
    csv_path = None
    if truth not in TRUTH_MODES:
        csv_path = Path(truth)
        if not csv_path.is_file():
            raise ConfigError(
                f"--truth {truth!r} is neither folder, filename, auto nor an existing CSV file"
            )
    items, _ = discover(paths, recursive)
    plan = prepare_classifier(classifier_kwargs, workers)
    classifier, classifier_kwargs, labels = plan.classifier, plan.classifier_kwargs, plan.labels
    workers, threads = plan.workers, plan.threads
    source = TruthSource(truth if csv_path is None else "csv", LabelMatcher(labels), csv_path)
    report = EvalReport()
    click.echo(
        f"evaluating {len(items)} images with {Path(classifier_kwargs['model']).stem}: "
        f"{workers} worker(s) x {threads} thread(s)",
        err=True,
    )
    sink = open(records, "w", encoding="utf-8") if records else None  # noqa: SIM115
    start = time.perf_counter()
    err = click.get_text_stream("stderr")
    bar = (
        click.progressbar(length=len(items), file=err, label="evaluating") if err.isatty() else None
    )
    try:
        if bar:
            bar.__enter__()
        for record in run_batch(items, classifier_kwargs, workers, {}, classifier):
            name, indices = source.truth(record["path"])
            report.add(record, name, indices, labels)
            if sink:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.__exit__(None, None, None)
        if sink:
            sink.close()
    elapsed = time.perf_counter() - start
    result = report.to_json(worst)
    result["model"] = Path(classifier_kwargs["model"]).stem
    result["crop"] = classifier_kwargs["crop"]
    result["seconds"] = round(elapsed, 2)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_report(result)
    if report.no_truth:
        click.echo(
            f"warning: {report.no_truth} images had no matching label for their truth, "
            f"e.g. {report.unmatched_examples[0]}; see --truth",
            err=True,
        )
    if report.evaluated == 0:
        raise ConfigError("no image could be matched to a ground-truth label; see --truth")
    sys.exit(1 if report.failed else 0)


def _print_report(result: dict) -> None:
    echo = click.echo
    echo(f"model      {result['model']}  (crop {result['crop']})")
    echo(
        f"images     {result['images']}  evaluated {result['evaluated']}  "
        f"failed {result['failed']}  no truth {result['no_truth']}"
    )
    echo(f"top-1      {result['top1']:.2f} %  ({result['top1_correct']}/{result['evaluated']})")
    echo(f"top-5      {result['top5']:.2f} %  ({result['top5_correct']}/{result['evaluated']})")
    if result["worst_classes"]:
        echo("worst classes:")
        for row in result["worst_classes"]:
            echo(f"  {row['accuracy']:5.1f} %  {row['correct']}/{row['images']}  {row['class']}")
    if result["confusions"]:
        echo("most frequent confusions (truth -> predicted):")
        for row in result["confusions"]:
            echo(f"  {row['count']:4d}  {row['truth']} -> {row['predicted']}")

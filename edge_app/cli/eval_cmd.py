"""`edge-app eval`: top-1/top-5 accuracy of a model on a labelled image folder."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from edge_app.cli.options import classifier_options, pop_classifier_kwargs
from edge_app.cli.progress import Progress
from edge_app.cli.table import display_path
from edge_app.errors import ConfigError
from edge_app.text import plural


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
@click.option(
    "--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders."
)
@click.option(
    "--worst",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many worst classes (or, with one photo per class, misclassified photos) "
    "and confusions to list.",
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
        f"evaluating {plural(len(items), 'image')} with {Path(classifier_kwargs['model']).stem}: "
        f"{plural(workers, 'worker')} x {plural(threads, 'thread')}",
        err=True,
    )
    sink = open(records, "w", encoding="utf-8") if records else None  # noqa: SIM115
    start = time.perf_counter()
    bar = Progress(len(items), "images", label="evaluating")
    try:
        bar.render()
        for record in run_batch(items, classifier_kwargs, workers, {}, classifier):
            name, indices = source.truth(record["path"])
            report.add(record, name, indices, labels)
            if sink:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            bar.advance()
    finally:
        bar.close()
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
        _print_report(result, paths)
    if report.no_truth:
        click.echo(
            f"warning: {plural(report.no_truth, 'image')} had no matching label for their truth, "
            f"e.g. {report.unmatched_examples[0]}; see --truth",
            err=True,
        )
    if report.evaluated == 0:
        raise ConfigError("no image could be matched to a ground-truth label; see --truth")
    sys.exit(1 if report.failed else 0)


def _print_report(result: dict, arguments=()) -> None:
    echo = click.echo
    echo(f"model      {result['model']}  (crop {result['crop']})")
    echo(
        f"images     {result['images']}  evaluated {result['evaluated']}  "
        f"failed {result['failed']}  no truth {result['no_truth']}"
    )
    echo(f"top-1      {result['top1']:.2f} %  ({result['top1_correct']}/{result['evaluated']})")
    echo(f"top-5      {result['top5']:.2f} %  ({result['top5_correct']}/{result['evaluated']})")
    if result["one_photo_per_class"] and result["misclassified"]:
        # One photo per class: per-class accuracy is 0 or 100 %; the mistakes themselves
        # (most confident first) are what is worth a look.
        wrong = result["evaluated"] - result["top1_correct"]
        shown = len(result["misclassified"])
        echo(
            f"misclassified: {plural(wrong, 'photo')}; the {shown} most confident mistakes "
            "(truth -> predicted):"
        )
        for row in result["misclassified"]:
            hint = "" if not row["truth_in_top5"] else "  (truth in top-5)"
            path = display_path(row["path"], arguments)
            echo(f"  {path}: {row['truth']} -> {row['predicted']} {row['score'] * 100:.0f} %{hint}")
    elif result["worst_classes"]:
        echo("worst classes (lowest recall; correct/photos, mostly confused with):")
        for row in result["worst_classes"]:
            confused = ", ".join(f"{c['predicted']} x{c['count']}" for c in row["confused_with"])
            echo(
                f"  {row['accuracy']:5.1f} %  {row['correct']:>3}/{row['images']:<3}  "
                f"{row['class']}" + (f"  -> {confused}" if confused else "")
            )
    if result["confusions"] and not result["one_photo_per_class"]:
        echo("most frequent confusions (truth -> predicted):")
        for row in result["confusions"]:
            echo(f"  {row['count']:4d}  {row['truth']} -> {row['predicted']}")

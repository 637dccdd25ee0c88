"""`edge-app learn`: custom classes from a folder of photos, as an ordinary TFLite model."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

import click

from edge_app.cli.options import setting_option
from edge_app.errors import EXIT_OK, EXIT_SOME_FAILED
from edge_app.settings import ModelSettings


def model_setting_option(name: str):
    """The model setting's own flag (choices, default and help from edge_app.settings)."""
    return setting_option(next(f for f in dataclasses.fields(ModelSettings) if f.name == name))


@click.command()
@click.argument("folder", type=click.Path(path_type=Path), metavar="DIR")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .tflite file to write (may be the --from model itself).",
)
@click.option(
    "-m",
    "--model",
    default="mobilenet_v1_1.0_224_int8",
    show_default=True,
    metavar="NAME|PATH",
    help="Base model whose pooled feature the new classes are learned on.",
)
@click.option(
    "--from",
    "from_model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A model made by `learn`: add DIR's new photos and classes to it (photos it "
    "already learned are not decoded again).",
)
@click.option(
    "--keep-imagenet",
    is_flag=True,
    help="Keep the base model's 1,000 classes beside the new ones.",
)
@click.option(
    "--unknown/--no-unknown",
    default=None,
    help="Add an 'unknown' answer, chosen when no class reaches a score calibrated on "
    "the held-out photos. Default: off (with --from: as that model).",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Also learn mirrored and two zoomed views of each photo. "
    "Default: when there are at most 32 new photos.",
)
@click.option("-w", "--workers", type=click.IntRange(min=1), help="Worker processes.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Interpreter threads per worker (default: cores / workers).",
)
@model_setting_option("runtime")
@model_setting_option("crop")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr (default: when stderr is a terminal).",
)
def learn(
    folder,
    output,
    model,
    from_model,
    keep_imagenet,
    unknown,
    augment,
    workers,
    threads,
    runtime,
    crop,
    progress,
):
    """Learn your own classes from DIR (one sub-folder per class, named by its label).

    Any number of photos per class, one allowed. Prints photos per class, a
    cross-validated accuracy estimate with its spread, per-class recall and the most
    confused pairs, then writes an int8 classifier every command takes with --model.

    Exit codes: 0 every photo learned, 1 some photos could not be used (the model is
    still written), 2 the folder or model cannot be used, 130 interrupted.

    \b
    Examples:
      edge-app learn photos/ -o my.tflite
      edge-app learn more_photos/ --from my.tflite -o my.tflite
      edge-app classify new/ --model my.tflite
    """
    from edge_app.cli.progress import Progress
    from edge_app.learn.learner import learn as learn_folder

    err = click.get_text_stream("stderr")

    @contextlib.contextmanager
    def bar(label: str, total: int):
        # The shared bar: count, smoothed rate, an ETA once it means something; only on a
        # terminal and without -q unless --progress says otherwise.
        if total <= 0:
            yield lambda n=1: None
            return
        unit = {"cross-validating": "folds", "training": "steps"}.get(label, "images")
        with Progress(total, unit, label=label, stream=err, enabled=progress) as b:
            yield b.advance

    def problem(item) -> None:
        click.echo(f"edge-app: error: {item.path}: {item.message}", err=True)

    report = learn_folder(
        folder,
        output,
        model=model,
        from_model=from_model,
        keep_imagenet=keep_imagenet,
        unknown=unknown,
        augment=augment,
        workers=workers,
        threads=threads,
        runtime=runtime,
        crop=crop,
        progress=bar,
        on_problem=problem,
    )
    for line in report_lines(report):
        click.echo(line)
    sys.exit(EXIT_SOME_FAILED if report.problems else EXIT_OK)


def report_lines(report) -> list[str]:
    """What `learn` prints on stdout: data, estimate, recall, confusions, the file."""
    lines = []
    width = max(len(c) for c in report.classes)
    reused = f", {report.reused_photos} already in the --from model" if report.reused_photos else ""
    aug = " (with mirrored and zoomed views)" if report.augmented else ""
    lines.append(
        f"learned {len(report.classes)} classes from {sum(report.counts)} photos{aug}: "
        f"{report.new_photos} new{reused}"
    )
    recall = report.cv.recall() if report.cv is not None else None
    for i, (name, count) in enumerate(zip(report.classes, report.counts, strict=True)):
        text = f"  {name:<{width}}  {count:>4} photos"
        if recall is not None:
            text += f"   recall {100 * recall[i]:5.1f} %"
        lines.append(text)
    for name in report.empty_classes:
        lines.append(f"  {name:<{width}}     0 usable photos: left out")
    cv = report.cv
    if cv is None:
        single = [c for c, n in zip(report.classes, report.counts, strict=True) if n < 2]
        why = (
            f"{', '.join(single)} {'has' if len(single) == 1 else 'have'} a single photo"
            if single
            else "one class only"
        )
        lines.append(f"accuracy: not estimated ({why}; add photos to estimate it)")
    else:
        how = "leave-one-out" if cv.folds == min(report.counts) and cv.folds < 5 else ""
        how = how or f"{cv.folds}-fold"
        lines.append(
            f"accuracy (held-out, {how} cross-validation): {100 * cv.balanced_accuracy:.1f} % "
            f"balanced, +/- {100 * cv.spread:.1f} across folds"
        )
        if report.few_photos:
            lines.append(
                f"  rough: fewer than 5 photos in {', '.join(report.few_photos)}; "
                "add photos for a firmer estimate"
            )
        pairs = cv.confused_pairs()
        if pairs:
            names = [*report.classes]
            shown = ", ".join(
                f"{names[t]} -> {names[p] if p >= 0 else 'an ImageNet class'} ({n})"
                for t, p, n in pairs
            )
            lines.append(f"most confused: {shown}")
    if report.unknown_logit is not None:
        lines.append("'unknown' is answered when no class reaches its calibrated score")
    if report.keep_imagenet:
        lines.append("the base model's classes are kept beside the new ones")
    if report.problems:
        lines.append(f"{len(report.problems)} file(s) could not be used (listed above)")
    if report.skipped:
        lines.append(f"skipped {report.skipped} files that are not images (by suffix)")
    lines.append(f"wrote {report.output} in {report.seconds:.1f} s")
    return lines

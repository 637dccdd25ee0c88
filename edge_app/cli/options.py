"""Options shared by every command that loads a classifier."""

from __future__ import annotations

import functools
import math

import click

from edge_app.inference.preprocess import CROP_CHOICES
from edge_app.inference.runtime import RUNTIME_CHOICES


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets NaN through (every comparison with it is false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number) or math.isinf(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def classifier_options(func=None, *, default_crop: str = "central"):
    """Add --model/--labels/--runtime/--threads/--no-xnnpack/--crop/--top-k/--threshold."""

    def decorate(f):
        options = [
            click.option(
                "-m",
                "--model",
                default="mobilenet_v1_1.0_224_int8",
                show_default=True,
                metavar="NAME|PATH",
                help="A model name from `edge-app models list` (fetched when missing) "
                "or a .tflite file.",
            ),
            click.option(
                "--labels",
                type=click.Path(dir_okay=False, path_type=str),
                help="Labels file (one a line, `id label` or `id:label`). "
                "Default: the model's embedded labels, else a sidecar .txt.",
            ),
            click.option(
                "--runtime",
                type=click.Choice(RUNTIME_CHOICES),
                default="auto",
                show_default=True,
                help="TFLite runtime; auto prefers ai_edge_litert, then tflite_runtime, "
                "then tensorflow.",
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                help="Interpreter threads. Default: all cores.",
            ),
            click.option(
                "--xnnpack/--no-xnnpack",
                default=True,
                show_default=True,
                help="Use the XNNPACK delegate (turn off only to compare).",
            ),
            click.option(
                "--crop",
                type=click.Choice(CROP_CHOICES),
                default=default_crop,
                show_default=True,
                help="Region the model sees: central 87.5 % of the shorter side, "
                "a centred square, or the whole frame.",
            ),
            click.option(
                "-k",
                "--top-k",
                type=click.IntRange(min=1),
                default=5,
                show_default=True,
                help="Predictions to report.",
            ),
            click.option(
                "--threshold",
                type=FiniteFloatRange(0.0, 1.0),
                default=0.0,
                show_default=True,
                help="Drop predictions scoring below this.",
            ),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate(func) if func is not None else decorate


CLASSIFIER_KEYS = ("model", "labels", "runtime", "threads", "xnnpack", "crop", "top_k", "threshold")


def pop_classifier_kwargs(kwargs: dict) -> dict:
    """Remove and return the classifier options from a command's kwargs."""
    return {key: kwargs.pop(key) for key in CLASSIFIER_KEYS if key in kwargs}


def build_classifier(**kwargs):
    """A Classifier from the options above (imported lazily: it pulls in OpenCV)."""
    from edge_app.inference.classifier import Classifier

    kwargs = {k: v for k, v in kwargs.items() if k in CLASSIFIER_KEYS}
    return Classifier(**kwargs)


@functools.cache
def stderr_is_terminal() -> bool:
    return click.get_text_stream("stderr").isatty()

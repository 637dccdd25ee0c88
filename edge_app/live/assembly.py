"""One builder for a live pipeline from settings: the source, the classifier, the pipeline.

`edge-app run` and `edge-app serve` both call ``build_pipeline``. The source spec is
resolved first, so a wrong path or a missing camera is reported before a model is
loaded (or fetched); the source is then made knowing the model's input size, which a Pi
camera's ISP scales to for free.

``reconnect=True`` is the service's way: a camera that is busy or absent now does not
fail the build; the pipeline retries it with backoff while the rest stays up.
"""

from __future__ import annotations

import logging

from edge_app.errors import CameraUnavailable
from edge_app.inference.classifier import Classifier
from edge_app.live.motion import make_gate
from edge_app.live.pipeline import Pipeline
from edge_app.settings import ModelSettings, PipelineSettings, SourceSettings
from edge_app.sources import SourcePlan, plan_source

log = logging.getLogger(__name__)


def build_pipeline(
    source: SourceSettings,
    model: ModelSettings,
    pipeline: PipelineSettings,
    *,
    reconnect: bool = False,
    source_options: dict | None = None,
    max_results: int | None = None,
    duration: float | None = None,
) -> Pipeline:
    """A ready (not started) pipeline. Without ``reconnect`` ``start()`` opens the
    source and raises its SourceError; with it the source is opened here to check it
    (a wrong file or URL fails now), and an unavailable camera is retried later.
    ``source_options`` go to ``plan_source`` (tests pass a fake picamera2)."""

    def plan() -> SourcePlan:
        return plan_source(
            source.spec,
            size=source.size,
            fps=source.fps,
            hflip=source.hflip,
            vflip=source.vflip,
            buffer_count=source.buffer_count,
            pace=source.pace,
            loop=source.loop,
            **(source_options or {}),
        )

    try:
        planned: SourcePlan | None = plan()
    except CameraUnavailable as exc:
        if not reconnect:
            raise
        log.warning("%s; retrying with backoff while the web view and API stay up", exc)
        planned = None
    classifier = Classifier(**model.classifier_kwargs())
    model_height, model_width = classifier.input_size
    model_size = (model_width, model_height)
    settings = {
        "smooth": pipeline.smooth,
        "hysteresis": pipeline.effective_hysteresis,
        "max_results": max_results,
        "duration": duration,
        "gate": make_gate(
            pipeline.gate,
            threshold=pipeline.gate_threshold,
            min_area=pipeline.gate_min_area,
            max_interval=pipeline.gate_max_interval,
        ),
    }
    if not reconnect:
        return Pipeline(planned.make(model_size), classifier, **settings)

    def make():
        return plan().make(model_size)

    first = None
    if planned is not None:
        first = planned.make(model_size)
        try:
            first.open()
        except CameraUnavailable as exc:
            log.warning("%s; retrying with backoff while the web view and API stay up", exc)
            first = None
    return Pipeline(first, classifier, reconnect=True, source_factory=make, **settings)

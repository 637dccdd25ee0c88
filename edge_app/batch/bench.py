"""Measuring invoke latency: the figures behind `edge-app bench` and `make bench`."""

from __future__ import annotations

import time

import numpy as np

from edge_app.measure import percentile

__all__ = ["measure_invoke", "percentile", "summarize_ms"]


def summarize_ms(samples_ms: list[float]) -> dict:
    mean = float(np.mean(samples_ms)) if samples_ms else 0.0
    return {
        "runs": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p90_ms": round(percentile(samples_ms, 90), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "mean_ms": round(mean, 3),
        "rate_per_s": round(1000.0 / mean, 2) if mean else 0.0,
    }


def measure_invoke(
    classifier,
    runs: int = 100,
    warmup: int = 10,
    seconds: float | None = None,
    on_invoke=None,
):
    """Invoke latency on a realistic input (a preprocessed synthetic frame).

    Runs ``runs`` invokes, or for ``seconds`` if given (at least 5 invokes).
    ``on_invoke()`` is called after each one (a progress bar), outside the timing.
    """
    tick = on_invoke or (lambda: None)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    classifier.preprocess(frame)
    for _ in range(warmup):
        classifier.invoke()
        tick()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None
    while True:
        samples.append(classifier.invoke())
        tick()
        if deadline is None and len(samples) >= runs:
            break
        if deadline is not None and time.perf_counter() >= deadline and len(samples) >= 5:
            break
    return summarize_ms(samples)

"""Percentiles of measured figures, one helper for the live stats, `bench` and benchmarks."""

from __future__ import annotations

import numpy as np


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``; 0.0 when there are none."""
    values = np.asarray(tuple(values) if not hasattr(values, "__len__") else values, np.float64)
    return float(np.percentile(values, q)) if values.size else 0.0

"""The Prometheus text exposition format (version 0.0.4), written without a dependency.

Each metric family gets one ``# HELP`` and one ``# TYPE`` line followed by its samples;
label values are escaped as the format requires (backslash, double quote, newline).
"""

from __future__ import annotations

import math
import re

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
KINDS = ("counter", "gauge", "untyped")


def _escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class MetricsText:
    """Collects families in order and renders them: ``add(...)`` then ``render()``."""

    def __init__(self, prefix: str = "edge_app_"):
        self.prefix = prefix
        self._families: dict[str, tuple[str, str, list[tuple[dict, float]]]] = {}

    def add(
        self, name: str, kind: str, help_text: str, value: float, labels: dict | None = None
    ) -> None:
        full = self.prefix + name
        if not _NAME.match(full):
            raise ValueError(f"bad metric name {full!r}")
        if kind not in KINDS:
            raise ValueError(f"bad metric type {kind!r}")
        if kind == "counter" and not full.endswith("_total"):
            raise ValueError(f"counter {full!r} must end in _total")
        for key in labels or {}:
            if not _LABEL.match(key):
                raise ValueError(f"bad label name {key!r}")
        family = self._families.setdefault(full, (kind, help_text, []))
        if family[0] != kind:
            raise ValueError(f"{full} added as {family[0]} and {kind}")
        family[2].append((dict(labels or {}), value))

    def render(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                if labels:
                    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                    lines.append(f"{name}{{{inner}}} {_number(value)}")
                else:
                    lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"

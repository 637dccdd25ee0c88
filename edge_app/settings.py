"""Settings for the frame source, the model and the live pipeline, defined once.

Each group is a frozen dataclass whose fields carry their kind, bounds, choices, help
text and command-line flag in ``metadata``. The service's TOML schema uses these classes
as its ``[source]``, ``[model]`` and ``[pipeline]`` sections, and the CLI makes its
click options from them (``edge_app.cli.options``), so a default, a bound or a choice
is written here and nowhere else. ``check_value`` is the one checker: its messages name
the setting neutrally (``pipeline.smooth``) and say where the value came from when that
was not the config file itself (``--smooth``, ``EDGE_APP_PIPELINE_SMOOTH``).

No click, OpenCV or numpy here: the service's config loader and ``config check`` import
this without paying for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from edge_app.errors import ConfigError

DEFAULT_MODEL = "mobilenet_v1_1.0_224_int8"
CROP_CHOICES = ("central", "square", "none")
RUNTIME_CHOICES = ("auto", "litert", "tflite_runtime", "tensorflow")
GATE_CHOICES = ("off", "motion")
AUTO_HYSTERESIS = -1.0  # hysteresis follows smoothing (see PipelineSettings)
SMOOTHED_HYSTERESIS = 0.1  # the margin smoothing brings when hysteresis is automatic
SMOOTH_FLAG_VALUE = 0.7  # what a bare `--smooth` means


def setting(
    default,
    kind: str,
    *,
    lo=None,
    hi=None,
    choices=None,
    doc: str = "",
    flag: tuple[str, ...] | None = (),
):
    """A settings field: ``kind`` is bool/int/float/str; bounds and choices are checked
    by ``check_value``. ``flag`` is the click declaration (``()``: ``--name``; None: no
    flag of its own)."""
    meta = {"kind": kind, "lo": lo, "hi": hi, "choices": choices, "doc": doc, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SourceSettings:
    spec: str = setting(
        "auto",
        "str",
        doc="auto (a Pi camera, else the first USB/V4L2 camera), picamera2[:N], a camera "
        "number or /dev/videoN, a video file, or an rtsp:// or http:// URL",
        flag=("-s", "--source"),
    )
    width: int = setting(640, "int", lo=16, hi=8192, doc="picture width", flag=None)
    height: int = setting(480, "int", lo=16, hi=8192, doc="picture height", flag=None)
    fps: float = setting(30.0, "float", lo=1.0, hi=240.0, doc="camera frame rate")
    pace: bool = setting(
        True,
        "bool",
        doc="play video files at their frame rate like a camera (off: classify every "
        "frame in order as fast as possible)",
    )
    loop: bool = setting(False, "bool", doc="repeat a video file")
    hflip: bool = setting(False, "bool", doc="mirror a Pi camera's picture left-right")
    vflip: bool = setting(False, "bool", doc="flip a Pi camera's picture upside down")
    buffer_count: int = setting(4, "int", lo=1, hi=16, doc="picamera2 buffers")

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class ModelSettings:
    model: str = setting(
        DEFAULT_MODEL,
        "str",
        doc="a model name from `edge-app models list` (fetched when missing) or a .tflite file",
        flag=("-m", "--model"),
    )
    labels: str = setting(
        "",
        "str",
        doc="labels file (one a line, `id label` or `id:label`); empty: the model's "
        "embedded labels, else a sidecar .txt",
    )
    runtime: str = setting(
        "auto",
        "str",
        choices=RUNTIME_CHOICES,
        doc="TFLite runtime; auto prefers ai_edge_litert, then tflite_runtime, then tensorflow",
    )
    threads: int = setting(0, "int", lo=0, hi=64, doc="interpreter threads; 0: all cores")
    xnnpack: bool = setting(True, "bool", doc="use the XNNPACK delegate (turn off only to compare)")
    crop: str = setting(
        "central",
        "str",
        choices=CROP_CHOICES,
        doc="region the model sees: central 87.5 % of the shorter side, a centred "
        "square, or the whole frame",
    )
    top_k: int = setting(5, "int", lo=1, hi=1001, doc="predictions to report", flag=("-k",))
    threshold: float = setting(
        0.0,
        "float",
        lo=0.0,
        hi=1.0,
        doc="drop predictions scoring below this (machine formats otherwise keep exactly "
        "top-k; views for people always hide scores under 1 %)",
    )
    keep_background: bool = setting(
        False,
        "bool",
        doc="report the model's `background` class (index 0 of 1001-class models) like any "
        "other; by default it is never a prediction",
    )

    def classifier_kwargs(self) -> dict:
        """Keyword arguments for ``Classifier`` (plain data: it crosses to workers)."""
        return {
            "model": self.model,
            "labels": self.labels or None,
            "runtime": self.runtime,
            "threads": self.threads or None,
            "xnnpack": self.xnnpack,
            "crop": self.crop,
            "top_k": self.top_k,
            "threshold": self.threshold,
            "keep_background": self.keep_background,
        }


@dataclass(frozen=True)
class PipelineSettings:
    smooth: float = setting(
        0.0,
        "float",
        lo=0.0,
        hi=0.99,
        doc="average scores over recent results so the label does not flicker (0: off)",
    )
    hysteresis: float = setting(
        AUTO_HYSTERESIS,
        "float",
        lo=-1.0,
        hi=1.0,
        doc="keep the shown label until another scores this much higher; "
        f"-1: {SMOOTHED_HYSTERESIS} with smoothing, else 0",
    )

    gate: str = setting(
        "off",
        "str",
        choices=GATE_CHOICES,
        doc="motion: classify only when the picture changes (and a still scene every "
        "gate_max_interval seconds)",
    )
    gate_threshold: float = setting(
        12.0, "float", lo=1.0, hi=254.0, doc="grey levels a pixel must change by to count"
    )
    gate_min_area: float = setting(
        0.005, "float", lo=0.0, hi=1.0, doc="share of the picture that must change"
    )
    gate_max_interval: float = setting(
        10.0,
        "float",
        lo=0.1,
        hi=3600.0,
        doc="with the motion gate: classify a still scene again after this many seconds",
        flag=("--max-interval",),
    )

    @property
    def effective_hysteresis(self) -> float:
        if self.hysteresis >= 0:
            return self.hysteresis
        return SMOOTHED_HYSTERESIS if self.smooth > 0 else 0.0


# The live groups by section name: the TOML sections and the CLI's option groups.
LIVE_SECTIONS: dict[str, type] = {
    "source": SourceSettings,
    "model": ModelSettings,
    "pipeline": PipelineSettings,
}


def type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a table",
        list: "an array",
    }.get(type(value), type(value).__name__)


ENV_PREFIX = "EDGE_APP_"


def check_value(key: str, value: Any, meta: dict, origin: str = "") -> Any:
    """``value`` checked against a field's ``meta``, or a ConfigError naming ``key``
    (``source.fps``) and, when given, where the value came from (``--fps``)."""
    try:
        return _checked(key, value, meta)
    except ConfigError as exc:
        if not origin:
            raise
        if origin.startswith(ENV_PREFIX):
            # The variable is to blame, not the config file it overrides: the file's name
            # is left out (``from_environment``) so the line points at the right place.
            error = ConfigError(f"environment variable {origin}={value!r}: {exc.message}")
            error.from_environment = True
            raise error from None
        raise ConfigError(f"{exc.message} (from {origin})") from None


def _checked(key: str, value: Any, meta: dict) -> Any:
    kind = meta["kind"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type_name(value)} {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            choices = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type_name(value)} {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {type_name(value)} {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        value = float(value)
    lo, hi = meta["lo"], meta["hi"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key} must be from {lo} to {hi}, got {value!r}")
    return value


def make_settings(cls: type, section: str, values: dict, origins: dict | None = None):
    """A checked ``cls`` from ``values`` (field name -> value); ``origins`` names where
    a value came from (field name -> ``--flag`` or ``EDGE_APP_...``) for messages."""
    origins = origins or {}
    known = {f.name: f for f in fields(cls)}
    checked = {}
    for name, value in values.items():
        checked[name] = check_value(
            f"{section}.{name}", value, known[name].metadata, origins.get(name, "")
        )
    result = cls(**checked)
    check_live_together(result, section, origins)
    return result


def check_live_together(settings, section: str, origins: dict | None = None) -> None:
    """Checks of a live group that involve the value itself beyond its bounds."""
    origins = origins or {}

    def where(name: str) -> str:
        origin = origins.get(name)
        return f" (from {origin})" if origin else ""

    if isinstance(settings, SourceSettings):
        if not settings.spec.strip():
            raise ConfigError(
                f"{section}.spec must not be empty (use 'auto' for the camera){where('spec')}"
            )
        if settings.width % 2 or settings.height % 2:
            raise ConfigError(
                f"{section}.width and {section}.height must be even, got "
                f"{settings.width}x{settings.height}{where('width')}"
            )
    elif isinstance(settings, ModelSettings):
        if not settings.model.strip():
            raise ConfigError(f"{section}.model must not be empty{where('model')}")


def describe_field(section: str, f, default: Any = dataclasses.MISSING) -> str:
    """One line for ``config check --explain``: key, default (the field's unless given),
    bounds or choices, help."""
    meta = f.metadata
    default = f.default if default is dataclasses.MISSING else default
    text = f"{section}.{f.name} = {default!r}" if meta["kind"] == "str" else None
    if text is None:
        shown = str(default).lower() if meta["kind"] == "bool" else default
        text = f"{section}.{f.name} = {shown}"
    if meta["choices"]:
        text += f"  (one of {', '.join(meta['choices'])})"
    elif meta["lo"] is not None or meta["hi"] is not None:
        text += f"  ({meta['lo']} to {meta['hi']})"
    if meta["doc"]:
        text += f": {meta['doc']}"
    return text

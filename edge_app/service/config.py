"""The service's TOML configuration: schema, checks and ``EDGE_APP_*`` overrides.

Each section is a frozen dataclass whose fields carry their checks in ``metadata``; one
small checker walks them, so every error names the file and the key and the service can
compare sections on reload (``old.web != new.web``). No pydantic: a Pi Zero has 512 MB.

Environment variables override file values: ``EDGE_APP_<SECTION>_<KEY>`` (e.g.
``EDGE_APP_WEB_PORT=8081``, ``EDGE_APP_MQTT_TLS_CA=/etc/ssl/ca.pem``). Variables naming
no section (``EDGE_APP_SHARED``, ``EDGE_APP_CONFIG``) belong to other parts of the app
and are left alone; a known section with an unknown key is an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edge_app.errors import ConfigError

ENV_PREFIX = "EDGE_APP_"
# Variables other parts of the app read, even where they look like a section's key.
OTHER_VARIABLES = {
    "EDGE_APP_MODEL_MANIFEST",
    "EDGE_APP_MODEL_MIRROR",
    "EDGE_APP_MODELS_DIR",
    "EDGE_APP_SHARED",
    "EDGE_APP_CONFIG",
}
DEFAULT_STATE_DIR = "/var/lib/edge-app"
CROP_CHOICES = ("central", "square", "none")  # edge_app.inference.preprocess, without importing cv2
RUNTIME_CHOICES = ("auto", "litert", "tflite_runtime", "tensorflow")


def opt(default, kind: str, *, lo=None, hi=None, lo_open=False, choices=None, doc=""):
    """A config field: ``kind`` is bool/int/float/str; bounds and choices are checked."""
    meta = {"kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices}
    meta["doc"] = doc
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SourceConfig:
    spec: str = opt("auto", "str", doc="auto, picamera2[:N], 0, /dev/videoN, a file or a URL")
    width: int = opt(640, "int", lo=16, hi=8192)
    height: int = opt(480, "int", lo=16, hi=8192)
    fps: float = opt(30.0, "float", lo=1.0, hi=240.0)
    pace: bool = opt(True, "bool", doc="play files at their frame rate, like a camera")
    loop: bool = opt(False, "bool")
    hflip: bool = opt(False, "bool")
    vflip: bool = opt(False, "bool")
    buffer_count: int = opt(4, "int", lo=1, hi=16)


@dataclass(frozen=True)
class ModelConfig:
    model: str = opt("mobilenet_v1_1.0_224_int8", "str")
    labels: str = opt("", "str", doc="empty: the model's embedded labels")
    runtime: str = opt("auto", "str", choices=RUNTIME_CHOICES)
    threads: int = opt(0, "int", lo=0, hi=64, doc="0: all cores")
    xnnpack: bool = opt(True, "bool")
    crop: str = opt("central", "str", choices=CROP_CHOICES)
    top_k: int = opt(5, "int", lo=1, hi=1001)
    threshold: float = opt(0.0, "float", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class PipelineConfig:
    smooth: float = opt(0.0, "float", lo=0.0, hi=0.99)
    hysteresis: float = opt(-1.0, "float", lo=-1.0, hi=1.0, doc="-1: 0.1 with smooth, else 0")

    @property
    def effective_hysteresis(self) -> float:
        if self.hysteresis >= 0:
            return self.hysteresis
        return 0.1 if self.smooth > 0 else 0.0


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = opt(True, "bool")
    host: str = opt("127.0.0.1", "str")
    port: int = opt(8080, "int", lo=0, hi=65535, doc="0: any free port (tests)")
    token: str = opt("", "str", doc="required when host is not loopback")
    max_fps: float = opt(10.0, "float", lo=0.1, hi=60.0)
    jpeg_quality: int = opt(80, "int", lo=10, hi=100)
    max_clients: int = opt(32, "int", lo=1, hi=1000, doc="streams and event feeds at once")
    allowed_hosts: str = opt("", "str", doc="more Host names accepted without a token")


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = opt(False, "bool")
    ca: str = opt("", "str", doc="CA bundle; empty: the system's")
    cert: str = opt("", "str")
    key: str = opt("", "str")
    insecure: bool = opt(False, "bool", doc="skip the broker host name check")


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = opt(False, "bool")
    host: str = opt("localhost", "str")
    port: int = opt(1883, "int", lo=1, hi=65535)
    prefix: str = opt("edge-app", "str")
    device_id: str = opt("", "str", doc="empty: the host name")
    qos: int = opt(0, "int", lo=0, hi=2)
    retain: bool = opt(True, "bool")
    interval: float = opt(30.0, "float", lo=0.5, hi=86400.0, doc="seconds between states")
    keepalive: int = opt(30, "int", lo=5, hi=3600)
    username: str = opt("", "str")
    password: str = opt("", "str")
    client_id: str = opt("", "str", doc="empty: edge-app-<device_id>")
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class EventLogConfig:
    path: str = opt("", "str", doc="empty: no log; relative paths are in state_dir")
    mode: str = opt("changes", "str", choices=("all", "changes"))
    max_bytes: int = opt(10_000_000, "int", lo=1024, hi=1 << 40)
    backups: int = opt(3, "int", lo=0, hi=100)


@dataclass(frozen=True)
class TriggerConfig:
    pattern: str = opt("", "str", doc="regular expression searched in the label")
    name: str = opt("", "str", doc="empty: trigger<N>")
    min_score: float = opt(0.5, "float", lo=0.0, hi=1.0)
    cooldown_s: float = opt(10.0, "float", lo=0.0, hi=86400.0)
    dir: str = opt("snapshots", "str", doc="relative paths are in state_dir")
    max_mb: float = opt(100.0, "float", lo=0.1, hi=1e6, lo_open=False)


@dataclass(frozen=True)
class ServiceSection:
    state_dir: str = opt("", "str", doc="empty: $STATE_DIRECTORY, else /var/lib/edge-app")
    watchdog: bool = opt(True, "bool")
    stall_s: float = opt(15.0, "float", lo=1.0, hi=3600.0, doc="no frames this long: stalled")
    status_interval: float = opt(2.0, "float", lo=0.2, hi=3600.0)


@dataclass(frozen=True)
class ServiceConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    web: WebConfig = field(default_factory=WebConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    eventlog: EventLogConfig = field(default_factory=EventLogConfig)
    trigger: tuple[TriggerConfig, ...] = ()
    service: ServiceSection = field(default_factory=ServiceSection)
    path: str = field(default="", compare=False)  # where it was read from, for messages

    # -- derived values ----------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(
            self.service.state_dir
            or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
            or DEFAULT_STATE_DIR
        )

    def in_state_dir(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.state_dir / path

    @property
    def device_id(self) -> str:
        return self.mqtt.device_id or _topic_safe(socket.gethostname()) or "edge-app"

    def trigger_name(self, index: int) -> str:
        return self.trigger[index].name or f"trigger{index + 1}"


SECTIONS: dict[str, type] = {
    "source": SourceConfig,
    "model": ModelConfig,
    "pipeline": PipelineConfig,
    "web": WebConfig,
    "mqtt": MqttConfig,
    "eventlog": EventLogConfig,
    "service": ServiceSection,
}
ARRAY_SECTIONS: dict[str, type] = {"trigger": TriggerConfig}
SUBTABLES: dict[tuple[str, str], type] = {("mqtt", "tls"): TlsConfig}


def _topic_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a table",
        list: "an array",
    }.get(type(value), type(value).__name__)


def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(key: str, value: Any, meta: dict) -> Any:
    """``value`` for a field with ``meta``, or a ConfigError message naming ``key``."""
    kind = meta["kind"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_type_name(value)} {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            choices = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_type_name(value)} {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {_type_name(value)} {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        value = float(value)
    lo, hi = meta["lo"], meta["hi"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key} must be from {lo} to {hi}, got {value!r}")
    return value


def _build(cls: type, table: Any, where: str) -> Any:
    """A ``cls`` from a TOML table; ``where`` is the dotted key prefix for messages."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table ([{where}]), got {_type_name(table)}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"unknown key '{where}.{name}'{_suggest(name, known)}")
        sub = known[name]
        if "kind" not in sub.metadata:  # a nested table such as mqtt.tls
            values[name] = _build(SUBTABLES[(where, name)], value, f"{where}.{name}")
        else:
            values[name] = _check_value(f"{where}.{name}", value, sub.metadata)
    return cls(**values)


def _env_value(text: str, kind: str) -> Any:
    """An environment string converted to a field's kind (checked later like TOML)."""
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    try:
        if kind == "int":
            return int(text.strip())
        if kind == "float":
            return float(text.strip())
    except ValueError:
        return text
    return text


def env_overrides(environ: dict[str, str]) -> dict[str, dict]:
    """``EDGE_APP_*`` variables as a TOML-like document of overrides."""
    document: dict[str, dict] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS or not key:
            continue  # another part of the app's variable (EDGE_APP_SHARED, ...)
        cls = SECTIONS[section]
        table = document.setdefault(section, {})
        for (sec, sub), sub_cls in SUBTABLES.items():
            if sec == section and key.startswith(sub + "_"):
                cls, key = sub_cls, key[len(sub) + 1 :]
                table = table.setdefault(sub, {})
                break
        meta = {f.name: f.metadata for f in fields(cls) if "kind" in f.metadata}
        if key not in meta:
            raise ConfigError(
                f"environment variable {name}: unknown key '{key}' in [{section}]"
                f"{_suggest(key, meta)}"
            )
        table[key] = _env_value(environ[name], meta[key]["kind"])
    return document


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_document(document: dict, *, origin: str = "") -> ServiceConfig:
    """A checked ServiceConfig from a parsed TOML document (env overrides merged in)."""
    values: dict[str, Any] = {}
    for name, table in document.items():
        if name in SECTIONS:
            values[name] = _build(SECTIONS[name], table, name)
        elif name in ARRAY_SECTIONS:
            if isinstance(table, dict):
                table = [table]
            if not isinstance(table, list):
                raise ConfigError(f"{name} must be an array of tables ([[{name}]])")
            values[name] = tuple(
                _build(ARRAY_SECTIONS[name], item, f"{name}[{i + 1}]")
                for i, item in enumerate(table)
            )
        else:
            known = [*SECTIONS, *ARRAY_SECTIONS]
            raise ConfigError(f"unknown section '{name}'{_suggest(name, known)}")
    config = ServiceConfig(**values, path=origin)
    _check_together(config)
    return config


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or "": may resolve beyond loopback


def _check_together(config: ServiceConfig) -> None:
    """Checks involving more than one value."""
    web = config.web
    if web.enabled and not _is_loopback(web.host) and not web.token:
        raise ConfigError(
            f"web.host {web.host!r} listens beyond loopback: set web.token "
            "(clients then send 'Authorization: Bearer TOKEN' or ?token=TOKEN)"
        )
    if web.token and len(web.token) < 8:
        raise ConfigError("web.token must be at least 8 characters")
    if not config.source.spec.strip():
        raise ConfigError("source.spec must not be empty (use 'auto' for the camera)")
    if not config.model.model.strip():
        raise ConfigError("model.model must not be empty")
    mqtt = config.mqtt
    for key in ("prefix", "device_id"):
        value = getattr(mqtt, key)
        if any(c in value for c in "+#") or value != value.strip("/"):
            raise ConfigError(
                f"mqtt.{key} {value!r} must not contain + or # or start or end with /"
            )
    if not mqtt.prefix:
        raise ConfigError("mqtt.prefix must not be empty")
    if bool(mqtt.tls.cert) != bool(mqtt.tls.key):
        raise ConfigError("mqtt.tls.cert and mqtt.tls.key must be set together")
    if mqtt.password and not mqtt.username:
        raise ConfigError("mqtt.password is set without mqtt.username")
    names = set()
    for i, trigger in enumerate(config.trigger):
        where = f"trigger[{i + 1}]"
        if not trigger.pattern:
            raise ConfigError(f"{where}.pattern is required (a regular expression)")
        try:
            re.compile(trigger.pattern)
        except re.error as exc:
            raise ConfigError(f"{where}.pattern {trigger.pattern!r}: {exc}") from None
        name = config.trigger_name(i)
        if name in names:
            raise ConfigError(f"{where}.name {name!r} is used twice")
        if _topic_safe(name) != name:
            raise ConfigError(f"{where}.name {name!r}: use letters, digits, '-', '_' or '.'")
        names.add(name)


def _resolve_beside(config: ServiceConfig, base: Path) -> ServiceConfig:
    """Relative file paths in the config are looked up beside the config file first."""

    def beside(value: str) -> str:
        if not value or Path(value).is_absolute():
            return value
        candidate = base / Path(value).expanduser()
        return str(candidate) if candidate.exists() else value

    tls = config.mqtt.tls
    tls = replace(tls, ca=beside(tls.ca), cert=beside(tls.cert), key=beside(tls.key))
    return replace(
        config,
        source=replace(config.source, spec=beside(config.source.spec)),
        model=replace(
            config.model, model=beside(config.model.model), labels=beside(config.model.labels)
        ),
        mqtt=replace(config.mqtt, tls=tls),
    )


def _check_files(config: ServiceConfig) -> None:
    """Files the config names that must exist (a missing model name is fetched later)."""
    model = config.model.model
    if ("/" in model or model.endswith(".tflite")) and not Path(model).expanduser().exists():
        raise ConfigError(f"model.model: no such file: {model}")
    for key, value in (
        ("model.labels", config.model.labels),
        ("mqtt.tls.ca", config.mqtt.tls.ca),
        ("mqtt.tls.cert", config.mqtt.tls.cert),
        ("mqtt.tls.key", config.mqtt.tls.key),
    ):
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"{key}: no such file: {value}")


def load_config(
    path: str | os.PathLike | None, environ: dict[str, str] | None = None
) -> ServiceConfig:
    """Read, merge the environment into, and check a config file (None: defaults only).

    Every error is a ConfigError whose one-line message starts with the file name.
    """
    environ = dict(os.environ) if environ is None else environ
    origin = str(path) if path is not None else "<defaults>"
    document: dict = {}
    if path is not None:
        file = Path(path).expanduser()
        try:
            if file.exists() and not (file.is_file() or file.is_dir()):
                raise ConfigError(f"{origin}: not a regular file")  # a FIFO would block
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{origin}: no such config file") from None
        except IsADirectoryError:
            raise ConfigError(f"{origin}: is a folder, not a config file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read: {exc.strerror or exc}") from None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: invalid TOML: {exc}") from None
    try:
        overrides = env_overrides(environ)
    except ConfigError as exc:
        overrides, env_error = {}, exc.message
    else:
        env_error = None
    # The file is checked on its own too: a variable must not hide an error in it (the
    # service would break the day the variable goes).
    file_error = None
    if overrides or env_error:
        try:
            _checked(document, path, origin)
        except ConfigError as exc:
            file_error = exc.message
    try:
        config = _checked(_merge(document, overrides), path, origin)
    except ConfigError as exc:
        if not (overrides or env_error):
            file_error = exc.message  # no variable involved
        elif exc.message != file_error:
            env_error = env_error or exc.message
    if file_error and env_error:
        raise ConfigError(f"{origin}: {file_error}; with EDGE_APP_* variables: {env_error}")
    if file_error:
        raise ConfigError(f"{origin}: {file_error}")
    if env_error:
        raise ConfigError(f"{origin}: with EDGE_APP_* variables: {env_error}")
    return config


def _checked(document: dict, path, origin: str) -> ServiceConfig:
    config = from_document(document, origin=origin)
    if path is not None:
        config = _resolve_beside(config, Path(path).expanduser().resolve().parent)
    _check_files(config)
    return config


def describe(config: ServiceConfig) -> list[str]:
    """A short human summary (``config check``)."""
    lines = [
        f"source: {config.source.spec} ({config.source.width}x{config.source.height}"
        f"{', loop' if config.source.loop else ''})",
        f"model: {config.model.model} (runtime {config.model.runtime}, crop {config.model.crop},"
        f" top {config.model.top_k})",
    ]
    web = config.web
    if web.enabled:
        auth = "token required" if web.token else "no token"
        lines.append(f"web: http://{web.host}:{web.port}/ ({auth}, {web.max_fps:g} FPS stream)")
    else:
        lines.append("web: off")
    mqtt = config.mqtt
    if mqtt.enabled:
        lines.append(
            f"mqtt: {mqtt.host}:{mqtt.port} topic {mqtt.prefix}/{config.device_id}/state "
            f"(qos {mqtt.qos}{', tls' if mqtt.tls.enabled else ''})"
        )
    else:
        lines.append("mqtt: off")
    if config.eventlog.path:
        log = config.eventlog
        lines.append(
            f"eventlog: {config.in_state_dir(log.path)} ({log.mode}, "
            f"{log.max_bytes} bytes x {log.backups + 1} files)"
        )
    else:
        lines.append("eventlog: off")
    for i, trigger in enumerate(config.trigger):
        lines.append(
            f"trigger {config.trigger_name(i)}: /{trigger.pattern}/ >= {trigger.min_score:g} "
            f"-> {config.in_state_dir(trigger.dir)} (every {trigger.cooldown_s:g} s at most, "
            f"{trigger.max_mb:g} MB cap)"
        )
    lines.append(f"state_dir: {config.state_dir}")
    return lines

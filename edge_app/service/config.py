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
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edge_app.errors import ConfigError, os_reason, translate
from edge_app.settings import (
    ENV_PREFIX,
    LIVE_SECTIONS,
    ModelSettings,
    PipelineSettings,
    SourceSettings,
    check_live_together,
    check_value,
    describe_field,
    setting,
    type_name,
)

# Variables other parts of the app read, even where they look like a section's key.
OTHER_VARIABLES = {
    "EDGE_APP_MODEL_MANIFEST",
    "EDGE_APP_MODEL_MIRROR",
    "EDGE_APP_MODELS_DIR",
    "EDGE_APP_SHARED",
    "EDGE_APP_CONFIG",
}
DEFAULT_STATE_DIR = "/var/lib/edge-app"
opt = setting  # the service's own sections are declared like the live ones

# The live sections are the settings classes themselves: one schema for run and serve.
SourceConfig = SourceSettings
ModelConfig = ModelSettings
PipelineConfig = PipelineSettings
# Where the service's default differs from `run`'s. Smoothing is on for a service: it logs
# and publishes label changes, which should be real changes, not a flicker between two
# close classes (with smoothing, the hysteresis becomes 0.1).
SERVICE_DEFAULTS: dict[str, dict[str, Any]] = {"pipeline": {"smooth": 0.6}}


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
    device_id: str = opt("", "str", doc="empty: <host name>-<hash of /etc/machine-id>")
    qos: int = opt(0, "int", lo=0, hi=2)
    retain: bool = opt(True, "bool")
    interval: float = opt(30.0, "float", lo=0.5, hi=86400.0, doc="seconds between states")
    keepalive: int = opt(30, "int", lo=5, hi=3600)
    username: str = opt("", "str")
    password: str = opt("", "str")
    client_id: str = opt("", "str", doc="empty: edge-app-<device_id>")
    discovery: bool = opt(True, "bool", doc="Home Assistant MQTT discovery")
    discovery_prefix: str = opt("homeassistant", "str")
    commands: bool = opt(False, "bool", doc="accept commands on <prefix>/<device_id>/set/...")
    command_secret: str = opt("", "str", doc="when set, commands must carry it")
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
    max_mb: float = opt(100.0, "float", lo=0.1, hi=1e6)


@dataclass(frozen=True)
class EventsConfig:
    dir: str = opt("events", "str", doc="index and media; relative paths are in state_dir")
    pre_roll_s: float = opt(3.0, "float", lo=0.0, hi=60.0)
    post_roll_s: float = opt(3.0, "float", lo=0.0, hi=60.0)
    clip_fps: float = opt(10.0, "float", lo=1.0, hi=60.0)
    clip_width: int = opt(640, "int", lo=64, hi=4096, doc="clips are downscaled to this")
    codec: str = opt("auto", "str", choices=("auto", "h264", "vp8", "mjpeg"))
    buffer_mb: float = opt(32.0, "float", lo=1.0, hi=4096.0, doc="pre-roll memory cap")
    snapshot_overlay: bool = opt(False, "bool", doc="draw the predictions on snapshots")
    jpeg_quality: int = opt(85, "int", lo=10, hi=100)
    max_age_days: float = opt(30.0, "float", lo=0.0, hi=36500.0, doc="0: keep forever")
    max_mb: float = opt(1000.0, "float", lo=1.0, hi=1e7, doc="disk cap for all media")
    max_s: float = opt(300.0, "float", lo=1.0, hi=86400.0, doc="longest clip")
    log: str = opt("", "str", doc="JSONL of ended events; empty: none")


@dataclass(frozen=True)
class EventConfig:
    pattern: str = opt("", "str", doc="regular expression searched in the label")
    name: str = opt("", "str", doc="empty: event<N>")
    min_score: float = opt(0.5, "float", lo=0.0, hi=1.0)
    consensus: int = opt(3, "int", lo=1, hi=1000, doc="results in a row before it starts")
    end_after_s: float = opt(3.0, "float", lo=0.0, hi=86400.0)


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
    pipeline: PipelineConfig = field(
        default_factory=lambda: PipelineConfig(**SERVICE_DEFAULTS["pipeline"])
    )
    web: WebConfig = field(default_factory=WebConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    eventlog: EventLogConfig = field(default_factory=EventLogConfig)
    trigger: tuple[TriggerConfig, ...] = ()
    events: EventsConfig = field(default_factory=EventsConfig)
    event: tuple[EventConfig, ...] = ()
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
        from edge_app.service.device_info import default_device_id

        return self.mqtt.device_id or default_device_id()

    def trigger_name(self, index: int) -> str:
        return self.trigger[index].name or f"trigger{index + 1}"

    def event_name(self, index: int) -> str:
        return self.event[index].name or f"event{index + 1}"


SECTIONS: dict[str, type] = {
    **LIVE_SECTIONS,
    "web": WebConfig,
    "mqtt": MqttConfig,
    "eventlog": EventLogConfig,
    "events": EventsConfig,
    "service": ServiceSection,
}
ARRAY_SECTIONS: dict[str, type] = {"trigger": TriggerConfig, "event": EventConfig}
SUBTABLES: dict[tuple[str, str], type] = {("mqtt", "tls"): TlsConfig}


def _topic_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, table: Any, where: str, origins: dict[str, str]) -> Any:
    """A ``cls`` from a TOML table; ``where`` is the dotted key prefix for messages and
    ``origins`` names the variables that set a dotted key (``web.port``)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table ([{where}]), got {type_name(table)}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"unknown key '{where}.{name}'{_suggest(name, known)}")
        sub = known[name]
        key = f"{where}.{name}"
        if "kind" not in sub.metadata:  # a nested table such as mqtt.tls
            values[name] = _build(SUBTABLES[(where, name)], value, key, origins)
        else:
            values[name] = check_value(key, value, sub.metadata, origins.get(key, ""))
    built = cls(**values)
    if cls in LIVE_SECTIONS.values():
        mine = {k[len(where) + 1 :]: v for k, v in origins.items() if k.startswith(where + ".")}
        check_live_together(built, where, mine)
    return built


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


def env_overrides(environ: dict[str, str], origins: dict | None = None) -> dict[str, dict]:
    """``EDGE_APP_*`` variables as a TOML-like document of overrides; ``origins`` (when
    given) gets the variable's name for each dotted key it sets, for messages."""
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
        dotted = section
        for (sec, sub), sub_cls in SUBTABLES.items():
            if sec == section and key.startswith(sub + "_"):
                cls, key = sub_cls, key[len(sub) + 1 :]
                table = table.setdefault(sub, {})
                dotted = f"{section}.{sub}"
                break
        meta = {f.name: f.metadata for f in fields(cls) if "kind" in f.metadata}
        if key not in meta:
            raise ConfigError(
                f"environment variable {name}: unknown key '{key}' in [{section}]"
                f"{_suggest(key, meta)}"
            )
        table[key] = _env_value(environ[name], meta[key]["kind"])
        if origins is not None:
            origins[f"{dotted}.{key}"] = name
    return document


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_document(
    document: dict, *, origin: str = "", origins: dict[str, str] | None = None
) -> ServiceConfig:
    """A checked ServiceConfig from a parsed TOML document (env overrides merged in;
    ``origins`` names the variable behind each overridden dotted key)."""
    origins = origins or {}
    values: dict[str, Any] = {}
    for name, table in document.items():
        if name in SECTIONS:
            if name in SERVICE_DEFAULTS and isinstance(table, dict):
                table = {**SERVICE_DEFAULTS[name], **table}
            values[name] = _build(SECTIONS[name], table, name, origins)
        elif name in ARRAY_SECTIONS:
            if isinstance(table, dict):
                table = [table]
            if not isinstance(table, list):
                raise ConfigError(f"{name} must be an array of tables ([[{name}]])")
            values[name] = tuple(
                _build(ARRAY_SECTIONS[name], item, f"{name}[{i + 1}]", origins)
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


def _check_watches(section: str, entries, name_of) -> None:
    """``[[trigger]]`` and ``[[event]]`` entries: a pattern that compiles, names unique
    and safe in an MQTT topic."""
    names = set()
    for i, entry in enumerate(entries):
        where = f"{section}[{i + 1}]"
        if not entry.pattern:
            raise ConfigError(f"{where}.pattern is required (a regular expression)")
        try:
            re.compile(entry.pattern)
        except re.error as exc:
            raise ConfigError(f"{where}.pattern {entry.pattern!r}: {exc}") from None
        name = name_of(i)
        if name in names:
            raise ConfigError(f"{where}.name {name!r} is used twice")
        if _topic_safe(name) != name:
            raise ConfigError(f"{where}.name {name!r}: use letters, digits, '-', '_' or '.'")
        names.add(name)


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
    mqtt = config.mqtt
    for key in ("prefix", "device_id", "discovery_prefix"):
        value = getattr(mqtt, key)
        if any(c in value for c in "+#") or value != value.strip("/"):
            raise ConfigError(
                f"mqtt.{key} {value!r} must not contain + or # or start or end with /"
            )
    if not mqtt.prefix:
        raise ConfigError("mqtt.prefix must not be empty")
    if mqtt.discovery and not mqtt.discovery_prefix:
        raise ConfigError(
            "mqtt.discovery_prefix must not be empty (Home Assistant's: homeassistant)"
        )
    if mqtt.command_secret and len(mqtt.command_secret) < 8:
        raise ConfigError("mqtt.command_secret must be at least 8 characters")
    if bool(mqtt.tls.cert) != bool(mqtt.tls.key):
        raise ConfigError("mqtt.tls.cert and mqtt.tls.key must be set together")
    if mqtt.password and not mqtt.username:
        raise ConfigError("mqtt.password is set without mqtt.username")
    for section, entries, name_of in (
        ("trigger", config.trigger, config.trigger_name),
        ("event", config.event, config.event_name),
    ):
        _check_watches(section, entries, name_of)


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
        with translate(
            {
                FileNotFoundError: lambda e: ConfigError(f"{origin}: no such config file"),
                IsADirectoryError: lambda e: ConfigError(
                    f"{origin}: is a folder, not a config file"
                ),
                UnicodeDecodeError: lambda e: ConfigError(f"{origin}: not UTF-8 text"),
                OSError: lambda e: ConfigError(f"{origin}: cannot read: {os_reason(e)}"),
                tomllib.TOMLDecodeError: lambda e: ConfigError(f"{origin}: invalid TOML: {e}"),
            }
        ):
            if file.exists() and not (file.is_file() or file.is_dir()):
                raise ConfigError(f"{origin}: not a regular file")  # a FIFO would block
            document = tomllib.loads(file.read_text(encoding="utf-8"))
    origins: dict[str, str] = {}
    env_error: ConfigError | None = None
    try:
        overrides = env_overrides(environ, origins)
    except ConfigError as exc:
        overrides, env_error = {}, exc
    # The file is checked on its own too: a variable must not hide an error in it (the
    # service would break the day the variable goes).
    file_error: ConfigError | None = None
    if overrides or env_error:
        try:
            _checked(document, path, origin, {})
        except ConfigError as exc:
            file_error = exc
    config = None
    try:
        config = _checked(_merge(document, overrides), path, origin, origins)
    except ConfigError as exc:
        if not (overrides or env_error):
            file_error = exc  # no variable involved
        elif file_error is None or exc.message != file_error.message:
            env_error = env_error or exc

    def blamed(exc: ConfigError) -> str:
        # A value a variable set names that variable (settings.check_value); anything
        # else the variables caused is said to come with them.
        if getattr(exc, "from_environment", False) or exc.message.startswith("environment"):
            return exc.message
        return f"with EDGE_APP_* variables: {exc.message}"

    if file_error and env_error:
        raise ConfigError(f"{origin}: {file_error.message}; {blamed(env_error)}")
    if file_error:
        raise ConfigError(f"{origin}: {file_error.message}")
    if env_error:
        message = blamed(env_error)
        error = ConfigError(
            message if message.startswith("environment") else f"{origin}: {message}"
        )
        error.from_environment = True
        raise error
    return config


def _checked(document: dict, path, origin: str, origins: dict[str, str]) -> ServiceConfig:
    config = from_document(document, origin=origin, origins=origins)
    if path is not None:
        config = _resolve_beside(config, Path(path).expanduser().resolve().parent)
    _check_files(config)
    return config


def explain() -> list[str]:
    """Every key with its default, bounds or choices and help (``config check --explain``)."""
    tables = [
        *SECTIONS.items(),
        *((f"{sec}.{sub}", cls) for (sec, sub), cls in SUBTABLES.items()),
        *((f"[{name}]", cls) for name, cls in ARRAY_SECTIONS.items()),
    ]
    lines = []
    for section, cls in tables:
        lines.append(f"[{section}]")
        defaults = SERVICE_DEFAULTS.get(section, {})
        lines.extend(
            "  " + describe_field(section, f, defaults.get(f.name, f.default))
            for f in fields(cls)
            if "kind" in f.metadata
        )
    return lines


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
            f"(qos {mqtt.qos}{', tls' if mqtt.tls.enabled else ''}"
            f"{', discovery ' + mqtt.discovery_prefix if mqtt.discovery else ''}"
            f"{', commands' if mqtt.commands else ''})"
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
    for i, event in enumerate(config.event):
        lines.append(
            f"event {config.event_name(i)}: /{event.pattern}/ >= {event.min_score:g} for "
            f"{event.consensus} results, ends {event.end_after_s:g} s after -> "
            f"{config.in_state_dir(config.events.dir)}"
        )
    if config.pipeline.gate != "off":
        p = config.pipeline
        lines.append(
            f"gate: {p.gate} (threshold {p.gate_threshold:g}, area {p.gate_min_area:g}, "
            f"refresh every {p.gate_max_interval:g} s)"
        )
    lines.append(f"state_dir: {config.state_dir}")
    return lines

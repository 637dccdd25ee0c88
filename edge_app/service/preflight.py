"""What the service checks before it binds a port or opens the camera, and what
`edge-app config check` runs too: every place an output writes can be written, every
file it reads parses, the model name is known.

All checks only read: nothing is created, so `config check` leaves no trace. Each failure
is a ConfigError (or ModelError) naming the key.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from edge_app.errors import ConfigError, EdgeAppError, ModelError
from edge_app.service.config import ServiceConfig


def _first_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: Path, key: str, target: Path | None = None) -> None:
    """``path`` is a folder this process may write in, or could be created as one;
    ``target`` is what will be written there (for the message)."""
    shown = target or path
    existing = _first_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"{key} {shown}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {shown}: cannot write in {existing}")


def check_writable_file(path: Path, key: str) -> None:
    """``path`` can be appended to, or created in a writable folder."""
    if os.path.lexists(path):
        if not path.is_file():  # a folder, or a FIFO that would block the open
            raise ConfigError(f"{key} {path} is not a regular file")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{key} {path}: not writable")
        return
    check_writable_dir(path.parent, key, path)


def _in_file(config: ServiceConfig, check, *args):
    """Run ``check``; its error starts with the config file's name, like load_config's."""
    try:
        return check(*args)
    except EdgeAppError as exc:
        prefix = f"{config.path}: " if config.path and config.path != "<defaults>" else ""
        raise type(exc)(f"{prefix}{exc.message}") from None


def check_outputs(config: ServiceConfig) -> None:
    """The event log, trigger folders and MQTT TLS files, as the outputs will use them."""
    _in_file(config, _check_outputs, config)


def _check_outputs(config: ServiceConfig) -> None:
    if config.eventlog.path:
        check_writable_file(config.in_state_dir(config.eventlog.path), "eventlog.path")
    for index, trigger in enumerate(config.trigger):
        check_writable_dir(config.in_state_dir(trigger.dir), f"trigger[{index + 1}].dir")
    mqtt = config.mqtt
    if mqtt.enabled and mqtt.tls.enabled:
        check_tls_files(mqtt.tls)


def check_tls_files(tls) -> None:
    """Parse the CA bundle and the client certificate and key as paho will."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca:
        try:
            context.load_verify_locations(cafile=tls.ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"mqtt.tls.ca {tls.ca}: not a PEM CA bundle ({exc})") from None
    if tls.cert:
        try:
            context.load_cert_chain(tls.cert, tls.key or None)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"mqtt.tls.cert/key {tls.cert}: not a PEM certificate and key ({exc})"
            ) from None


def model_status(config: ServiceConfig) -> tuple[Path | None, str]:
    """(model file, note): a path must exist; a name must be in the model store's
    manifest (file None when it is known but not fetched yet: serve fetches it)."""
    model = config.model.model
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_file():
            raise ModelError(f"model.model {model}: not a file")
        return path, str(path)
    if "/" in model or os.sep in model or model.endswith(".tflite") or model.startswith("~"):
        raise ModelError(f"model.model: no such file: {model}")
    from edge_app.inference import model_store

    manifest = model_store.load_manifest()
    entry = manifest.get(model) or next((e for e in manifest.values() if e.file == model), None)
    if entry is None or entry.kind != "model":
        known = ", ".join(e.name for e in manifest.values() if e.kind == "model")
        raise ModelError(f"model.model: unknown model {model!r}; known models: {known}")
    if entry.present:
        return entry.path, f"{entry.name} ({entry.path})"
    return None, f"{entry.name} (not fetched yet: serve fetches it to {entry.path})"


def check_model(config: ServiceConfig) -> str:
    """Load the model and labels as the service will (when the file is here); a note."""
    path, note = model_status(config)
    if path is None:
        return note
    from dataclasses import replace

    from edge_app.inference.classifier import Classifier

    # As the service's assembly loads it, with one thread: a check needs no thread pool.
    Classifier(**replace(config.model, model=str(path), threads=1).classifier_kwargs())
    return note


def check_video_file(config: ServiceConfig) -> str | None:
    """Open and close a video file source as serve will (cameras and streams are left
    alone: a camera may be busy with the running service, a stream may be down now)."""
    spec = config.source.spec.strip()
    if spec == "auto" or spec.isdigit() or spec.startswith(("picamera2", "/dev/video")):
        return None
    if "://" in spec and not spec.startswith("file://"):
        return None
    from edge_app.sources import make_source

    source = make_source(spec, pace=False, loop=False)
    source.open()
    try:
        return f"video file: {source.description}"
    finally:
        source.close()


def check_all(config: ServiceConfig) -> list[str]:
    """Everything serve does at start-up short of opening the camera and binding ports;
    notes for the summary."""
    check_outputs(config)
    notes = [f"model file: {_in_file(config, check_model, config)}"]
    video = _in_file(config, check_video_file, config)
    return notes + ([video] if video else [])

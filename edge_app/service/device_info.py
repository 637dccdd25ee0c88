"""Who this machine is, for MQTT: a stable default device id and a model string.

Many Pis on one broker often share a host name (Raspberry Pi OS names them all
``raspberrypi``), so the default device id adds a short hash of ``/etc/machine-id``
(unique per installed system, stable across reboots): ``raspberrypi-3f9a2c``. The hash,
not the id itself, goes on the broker: systemd asks that the machine id not be exposed.
"""

from __future__ import annotations

import hashlib
import platform
import re
import socket
from pathlib import Path

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
MODEL_FILE = Path("/proc/device-tree/model")


def _topic_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def machine_hash(files=MACHINE_ID_FILES) -> str:
    """Six hex digits from the machine id, or "" when there is none."""
    for path in files:
        try:
            machine_id = path.read_text().strip()
        except OSError:
            continue
        if machine_id:
            return hashlib.sha256(f"edge-app:{machine_id}".encode()).hexdigest()[:6]
    return ""


def default_device_id(files=MACHINE_ID_FILES) -> str:
    """``<host name>-<machine hash>``; the host name alone without a machine id."""
    host = _topic_safe(socket.gethostname()) or "edge-app"
    suffix = machine_hash(files)
    return f"{host}-{suffix}" if suffix else host


def device_model(model_file: Path = MODEL_FILE) -> str:
    """The board's model string (``Raspberry Pi 4 Model B Rev 1.4``), else the machine
    type (``x86_64``)."""
    try:
        text = model_file.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or platform.machine() or "unknown"

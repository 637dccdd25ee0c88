"""`edge-app serve`: the background service (web view, JSON API, MQTT; for systemd)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

# logging level -> syslog priority, which journald reads from a "<N>" line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        return f"<{priority}>" + super().format(record)


def stderr_is_journal() -> bool:
    """True when stderr is journald's stream (systemd sets JOURNAL_STREAM=dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def _log_for_journal() -> None:
    """Under systemd: no program prefix (journald adds the unit) and levels as priorities."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JournalFormatter("%(levelname)s: %(message)s"))


@click.command("serve")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),  # a folder: load_config says so in one line
    envvar="EDGE_APP_CONFIG",
    metavar="FILE",
    help="TOML configuration (see config/edge-app.example.toml). Without it: defaults "
    "(the camera, web view on 127.0.0.1:8080). EDGE_APP_<SECTION>_<KEY> variables "
    "override it.",
)
def serve(config_path: Path | None) -> None:
    """Run as a service: live classification with a web view, JSON API, MQTT, an event
    log and snapshot triggers, until SIGTERM (SIGHUP reloads the configuration).

    \b
    Under systemd (Type=notify) it reports READY=1, WATCHDOG=1 and STATUS=.
    Web: /, /stream.mjpg, /snapshot.jpg, /api/latest, /api/stats, /api/events,
         /healthz, /metrics
    """
    from edge_app.service.config import load_config
    from edge_app.service.service import Service

    if stderr_is_journal():
        _log_for_journal()
    # A reload asked for before the service listens for it must not kill it (SIGHUP's
    # default): the config is read just below anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load_config(config_path)
    code = Service(config, config_path=config_path).run()
    sys.exit(code)

"""`edge-app mqtt`: look at a fleet on a broker, or take this device off it."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import click

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGE_APP_CONFIG",
    metavar="FILE",
    help="The service's TOML config: broker, credentials, TLS, prefix and device id.",
)


def _load(config_path: Path | None, host: str | None, port: int | None, prefix: str | None):
    from edge_app.service.config import load_config

    config = load_config(config_path)
    changes = {k: v for k, v in (("host", host), ("port", port), ("prefix", prefix)) if v}
    if changes:
        config = replace(config, mqtt=replace(config.mqtt, **changes))
    return config


@click.group("mqtt")
def mqtt() -> None:
    """Fleets on an MQTT broker: watch every edge-app device, or unpublish this one."""


@mqtt.command("watch")
@CONFIG_OPTION
@click.option("--host", help="Broker host (default: the config's mqtt.host, else localhost).")
@click.option("--port", type=click.IntRange(1, 65535), help="Broker port (default 1883).")
@click.option("--prefix", help="Topic prefix the devices use (default: mqtt.prefix, edge-app).")
@click.option("--once", is_flag=True, help="Print the table once and exit (for scripts).")
@click.option(
    "--json", "as_json", is_flag=True, help="JSON: one array (--once) or a line per change."
)
@click.option("--wait", "wait_s", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="With --once: longest wait for the broker's retained messages, seconds.")  # fmt: skip
def watch(config_path, host, port, prefix, once, as_json, wait_s) -> None:
    """A live table of every edge-app device on a broker: availability, state, label,
    score, inference FPS and the age of its last state. Refreshes in place on a
    terminal until Ctrl-C. Exit 1 when --once finds no device."""
    from edge_app.service.mqtt_fleet import BrokerSession, Fleet, fleet_filters

    config = _load(config_path, host, port, prefix)
    fleet = Fleet(config.mqtt.prefix)
    lock = threading.Lock()
    changed = threading.Event()

    def on_message(topic: str, payload: bytes, retain: bool) -> None:
        with lock:
            if fleet.handle(topic, payload):
                changed.set()

    session = BrokerSession(config.mqtt, on_message, fleet_filters(config.mqtt.prefix))
    session.open()
    where = f"{config.mqtt.host}:{config.mqtt.port}"
    try:
        if once:
            session.settle(limit_s=wait_s)
            with lock:
                rows, table = fleet.rows(), fleet.table()
            click.echo(json.dumps(rows) if as_json else table)
            if not rows:
                click.echo(f"edge-app: no devices under {config.mqtt.prefix}/ on {where}", err=True)
                sys.exit(1)
            return
        live = sys.stdout.isatty() and not as_json
        session.settle(limit_s=wait_s)
        changed.set()  # the first table at once, even an empty one
        while True:
            changed.wait(1.0)
            if not (changed.is_set() or live):
                continue  # a pipe or a file gets a table per change, a terminal a clock
            changed.clear()
            with lock:
                rows, table = fleet.rows(), fleet.table()
            if as_json:
                click.echo(json.dumps(rows))
            elif live:  # home, clear, redraw: the table refreshes in place
                stamp = time.strftime("%H:%M:%S")
                click.echo(f"\x1b[H\x1b[J{where} {config.mqtt.prefix}/  {stamp}\n{table}")
            else:
                click.echo(table + "\n")
    finally:
        session.close()


@mqtt.command("unpublish")
@CONFIG_OPTION
@click.option("--host", help="Broker host (default: the config's mqtt.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Broker port.")
@click.option("--if-enabled", is_flag=True, help="Do nothing when the config has MQTT off.")
def unpublish(config_path, host, port, if_enabled) -> None:
    """Remove this device from the broker and Home Assistant: empty retained messages on
    its discovery configs and on every topic it left retained (state, availability,
    snapshots). Stop the service first, or it publishes them again."""
    from edge_app.service.mqtt_fleet import unpublish as clear

    config = _load(config_path, host, port, None)
    if if_enabled and not config.mqtt.enabled:
        click.echo("mqtt is off in the config: nothing to unpublish")
        return
    topics, online = clear(config)
    click.echo(f"cleared {len(topics)} retained topics of {config.device_id}")
    if online:
        click.echo(
            f"edge-app: warning: {config.device_id} said it was online; a running service "
            "publishes its entities again (stop it first)",
            err=True,
        )

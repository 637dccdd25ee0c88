"""`edge-app config`: check the service's configuration before (re)starting it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click


@click.group("config")
def config() -> None:
    """Check or show the service configuration (`edge-app serve --config FILE`)."""


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="No summary: only errors and the exit code.")
@click.option(
    "--explain", is_flag=True, help="Also list every key with its default, range and meaning."
)
def check(file: Path, quiet: bool, explain: bool) -> None:
    """Check FILE (with EDGE_APP_* overrides applied) as `serve` does at start-up, short
    of opening the camera and binding ports: values, files readable and parseable (model,
    labels, TLS), the model name known, the event log and snapshot folders writable.
    Exit 0 when the service would start with it, else one line naming the file and the
    key, and exit 2."""
    from edge_app.service.config import describe, load_config
    from edge_app.service.config import explain as explain_keys
    from edge_app.service.preflight import check_all

    cfg = load_config(file)
    notes = check_all(cfg)
    if not quiet:
        click.echo(f"{file}: OK")
        for line in [*describe(cfg), *notes]:
            click.echo(f"  {line}")
    if explain:
        click.echo("keys:")
        for line in explain_keys():
            click.echo(f"  {line}")


@config.command("show")
@click.argument("file", type=click.Path(path_type=Path), required=False)
def show(file: Path | None) -> None:
    """Print the effective configuration (FILE, defaults and EDGE_APP_* overrides) as
    JSON, with secrets masked."""
    from edge_app.service.config import load_config

    cfg = load_config(file)
    data = asdict(cfg)
    data.pop("path", None)
    for section, key in (("web", "token"), ("mqtt", "password"), ("mqtt", "command_secret")):
        if data[section][key]:
            data[section][key] = "***"
    data["derived"] = {"state_dir": str(cfg.state_dir), "device_id": cfg.device_id}
    click.echo(json.dumps(data, indent=2))

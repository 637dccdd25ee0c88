"""`edge-app models list | info | fetch`: the known models, what one costs, getting them."""

from __future__ import annotations

import json
import os

import click

from edge_app.errors import EXIT_USAGE, EdgeAppError
from edge_app.settings import DEFAULT_MODEL, RUNTIME_CHOICES


@click.group()
def models() -> None:
    """List, inspect and fetch models.

    \b
    A model is named as in `edge-app models list` or given as a .tflite path.
    Files live in $EDGE_APP_MODELS_DIR, else the checkout's models/ folder, else
    ~/.cache/edge-app/models. Fetching copies from the folder in
    $EDGE_APP_MODEL_MIRROR when set, else downloads the official file, and keeps it
    only if its sha256 matches the manifest.
    """


@models.command("list", short_help="Known models, their size and source.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_models(as_json: bool) -> None:
    """Known models: size, input, type, whether present here, and where they come from.

    The default model is marked with *. "mirror only" means no official download of
    exactly that file exists: fetch it from a mirror folder (EDGE_APP_MODEL_MIRROR).
    """
    from edge_app.inference.model_store import (
        MIRROR_ENV,
        load_manifest,
        models_dir,
    )

    entries = [e for e in load_manifest().values() if e.kind == "model"]
    if as_json:
        rows = [
            {
                "name": e.name,
                "default": e.name == DEFAULT_MODEL,
                "file": e.file,
                "size_bytes": e.size,
                "input_size": list(e.input_size) if e.input_size else None,
                "dtype": e.dtype,
                "present": e.present,
                "path": str(e.path),
                "url": e.url,
                "sha256": e.sha256,
                "description": e.description,
            }
            for e in entries
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(e.name) for e in entries) + 2
    click.echo(f"  {'name':<{width}}{'size':>8}  {'input':<9}{'type':<9}{'here':<6}source")
    for e in entries:
        mark = "*" if e.name == DEFAULT_MODEL else " "
        size = f"{e.size / 1e6:.1f} MB"
        shape = f"{e.input_size[0]}x{e.input_size[1]}" if e.input_size else "?"
        click.echo(
            f"{mark} {e.name:<{width}}{size:>8}  {shape:<9}{e.dtype:<9}"
            f"{'yes' if e.present else 'no':<6}{e.url or 'mirror only'}"
        )
    mirror = os.environ.get(MIRROR_ENV)
    click.echo(f"\nmodels folder: {models_dir()}")
    click.echo(f"mirror folder: {mirror}" if mirror else f"mirror folder: ({MIRROR_ENV} not set)")


@models.command("info", short_help="I/O, labels, XNNPACK coverage, per-layer cost.")
@click.argument("model", metavar="NAME|PATH", default=DEFAULT_MODEL)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option(
    "--runtime",
    type=click.Choice(RUNTIME_CHOICES),
    default="auto",
    show_default=True,
    help="TFLite runtime that loads the model.",
)
def info(model: str, as_json: bool, runtime: str) -> None:
    """Inputs, outputs, labels, metadata, XNNPACK coverage and per-layer cost of a model.

    \b
    Parameters count the elements of constant weight and bias tensors; MACs are
    multiply-accumulates per inference (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED).
    XNNPACK coverage: graph nodes the delegate runs, and the op types left on TFLite's
    reference kernels. NAME|PATH defaults to the default model; a named model is not
    fetched here: run `edge-app models fetch NAME` first.

    \b
    Examples:
      edge-app models info
      edge-app models info mobilenet_v1_0.25_128_quant --json
      edge-app models info ./my_model.tflite
    """
    from edge_app.inference.model_report import model_info
    from edge_app.inference.model_store import resolve_model

    data = model_info(resolve_model(model, fetch=False), runtime)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for line in format_info(data):
        click.echo(line)


def _tensor_line(tensor: dict) -> str:
    quant = tensor["quantization"]
    if quant is None:
        q = "not quantized"
    elif "scale" in quant:
        q = f"scale {quant['scale']:.8g}, zero point {quant['zero_point']}"
    else:
        q = f"per-channel ({quant['per_channel']} scales, axis {quant['axis']})"
    label = f" ({tensor['metadata_name']})" if tensor["metadata_name"] else ""
    return f"{tensor['name']}{label}: {tensor['dtype']} {tensor['shape']}, {q}"


def format_info(data: dict) -> list[str]:
    """The text report of ``model_info`` data, one string a line."""
    m, meta, cov, totals = data["model"], data["metadata"], data["xnnpack"], data["totals"]
    lines = [
        f"model:          {m['name']}",
        f"file:           {m['path']} ({m['size_bytes'] / 1e6:.2f} MB)",
        f"sha256:         {m['sha256']}",
    ]
    if meta:
        lines.append(f"metadata:       {meta['name']}: {meta['description']}")
        extra = [f"{k} {meta[k]}" for k in ("version", "author", "license") if meta[k]]
        if extra:
            lines.append(f"                {', '.join(extra)}")
    else:
        lines.append("metadata:       none")
    runtime = f"{data['runtime']['name']} {data['runtime']['version']}"
    if data["min_runtime_version"]:
        runtime += f" (model needs TFLite >= {data['min_runtime_version']})"
    lines.append(f"runtime:        {runtime}")
    for tensor in data["inputs"]:
        lines.append(f"input:          {_tensor_line(tensor)}")
    for tensor in data["outputs"]:
        lines.append(f"output:         {_tensor_line(tensor)}")
    norm = data["normalization"]
    if norm:
        lines.append(
            f"normalization:  (pixel - {_floats(norm['mean'])}) / {_floats(norm['std'])} (metadata)"
        )
    else:
        lines.append("normalization:  none in metadata")
    labels = data["labels"]
    if labels["error"]:
        lines.append(f"labels:         none ({labels['error']})")
    else:
        lines.append(
            f"labels:         {labels['count']} from {labels['source']} "
            f"(index 0: {labels['first']!r})"
        )
    cpu = ", ".join(cov["cpu_ops"]) or "none"
    share = f", {100 * cov['delegated_mac_share']:.1f} % of MACs" if totals["macs"] else ""
    lines.append(
        f"xnnpack:        {cov['delegated_nodes']} of {cov['total_nodes']} nodes in "
        f"{cov['partitions']} partition(s){share}; on reference kernels: {cpu}"
    )
    lines.append("")
    lines.append(f"{'#':>3}  {'op':<18}{'output':<20}{'act':<7}{'params':>10}{'MACs':>13}")
    for layer in data["layers"]:
        shape = "x".join(str(d) for d in layer["output_shape"]) or "scalar"
        lines.append(
            f"{layer['index']:>3}  {layer['op']:<18}{shape:<20}{layer['activation']:<7}"
            f"{layer['params']:>10,}{layer['macs']:>13,}"
        )
    lines.append("")
    lines.append(
        f"totals:         {totals['params'] / 1e6:.2f} M params, "
        f"{totals['macs'] / 1e6:.1f} M MACs, "
        f"{totals['separable_blocks']} depthwise-separable blocks"
    )
    return lines


def _floats(values: list[float]) -> str:
    text = [f"{v:g}" for v in values]
    return text[0] if len(set(text)) == 1 else "[" + ", ".join(text) + "]"


@models.command("fetch", short_help="Fetch models (mirror or URL), checking sha256.")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every model and the labels file.")
@click.option("--force", is_flag=True, help="Fetch again even if a good copy is present.")
@click.pass_context
def fetch_command(ctx: click.Context, names: tuple[str, ...], fetch_all: bool, force: bool):
    """Put models into the models folder, checking each file's sha256.

    \b
    Default: the default model (mobilenet_v1_1.0_224_int8). Sources, in order:
      1. the folder in EDGE_APP_MODEL_MIRROR (a copy), e.g.
         EDGE_APP_MODEL_MIRROR=/media/usb/models edge-app models fetch --all
      2. the official download URL, where one exists (`edge-app models list`).
    A file whose checksum does not match is not kept.
    """
    from edge_app.inference.model_store import fetch, load_manifest

    if fetch_all and names:
        raise click.UsageError("give model names or --all, not both")
    if fetch_all:
        names = tuple(load_manifest())
    names = names or (DEFAULT_MODEL,)
    manifest = load_manifest()
    failures = 0
    for name in names:
        entry = manifest.get(name)
        before = _stamp(entry.path) if entry else None
        try:
            path = fetch(name, force=force)
        except EdgeAppError as exc:
            if len(names) == 1:
                raise
            click.echo(f"edge-app: error: {exc.message}", err=True)
            failures += 1
            continue
        state = "already present" if before and before == _stamp(path) else "fetched"
        click.echo(f"{name}: {state}: {path}")
    if failures:
        ctx.exit(EXIT_USAGE)


def _stamp(path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns

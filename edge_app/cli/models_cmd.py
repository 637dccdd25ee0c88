"""`edge-app models list | info | fetch | convert-int8`: the known models, what one costs,
getting them, and making a full-int8 model from a uint8 one."""

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
    $EDGE_APP_MODEL_MIRROR when set, else downloads the official file or archive
    (checked against its sha256); int8 models are derived on this device from their
    uint8 source.
    """


@models.command("list", short_help="Known models, their size and source.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_models(as_json: bool) -> None:
    """Known models: size, input, type, whether present here, and where they come from.

    The default model is marked with *. "mirror only" means no official download of
    exactly that file exists: fetch it from a mirror folder (EDGE_APP_MODEL_MIRROR).
    "derived int8 from NAME" is made on this device from the uint8 model NAME.
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
                "archive_url": e.archive_url,
                "archive_sha256": e.archive_sha256,
                "member": e.member,
                "derived_from": e.source if e.derive else "",
                "source": e.official,
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
            f"{'yes' if e.present else 'no':<6}{e.official}"
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


@models.command("fetch", short_help="Fetch models (mirror, download or derived), verified.")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every model and the labels file.")
@click.option("--force", is_flag=True, help="Fetch again even if a good copy is present.")
@click.pass_context
def fetch_command(ctx: click.Context, names: tuple[str, ...], fetch_all: bool, force: bool):
    """Put models into the models folder, verified.

    \b
    Default: the default model (mobilenet_v1_1.0_224_int8). Sources, in order:
      1. the folder in EDGE_APP_MODEL_MIRROR: the file itself, or what it is made
         from (the official .tgz archive, or the uint8 model), e.g.
         EDGE_APP_MODEL_MIRROR=/media/usb/models edge-app models fetch --all
      2. int8 models: derived here from their uint8 source, then self-checked;
      3. the official download (`edge-app models list`); a partial download is
         resumed. EDGE_APP_MODEL_BASE_URL=http://cache.lan:8080 fetches the same
         paths from a LAN cache instead; HTTPS_PROXY / HTTP_PROXY are honoured.
    A file whose checksum does not match is not kept.
    """
    from edge_app.cli.progress import ByteProgress
    from edge_app.inference.model_store import fetch, load_manifest

    if fetch_all and names:
        raise click.UsageError("give model names or --all, not both")
    manifest = load_manifest()
    if fetch_all:
        names = tuple(manifest)
    names = names or (DEFAULT_MODEL,)
    bar = ByteProgress()

    def step(text: str) -> None:
        bar.finish()
        click.echo(f"edge-app: {text}", err=True)
        bar.start(text.split(" from ")[0])

    failures = 0
    for name in names:
        entry = manifest.get(name)
        before = _stamp(entry.path) if entry else None
        try:
            path = fetch(name, force=force, on_progress=bar, on_step=step)
        except EdgeAppError as exc:
            bar.finish()
            if len(names) == 1:
                raise
            click.echo(f"edge-app: error: {exc.message}", err=True)
            failures += 1
            continue
        finally:
            bar.finish()
        state = "already present" if before and before == _stamp(path) else "fetched"
        click.echo(f"{name}: {state}: {path}")
    if failures:
        ctx.exit(EXIT_USAGE)


@models.command("convert-int8", short_help="Make a full-int8 model from a uint8 one.")
@click.argument("source", metavar="IN.tflite", type=click.Path(dir_okay=False))
@click.argument("dest", metavar="OUT.tflite", type=click.Path(dir_okay=False))
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="Labels file to embed (default: the labels IN.tflite embeds, if any).",
)
@click.option("--force", is_flag=True, help="Replace OUT.tflite if it exists.")
def convert_int8(source: str, dest: str, labels: str | None, force: bool) -> None:
    """Convert a uint8 quantized classifier into a full-int8 one, exactly.

    \b
    For uint8 quantization-aware-trained models (MobileNet V1 quant and the like): the
    activations keep their learned ranges (zero point - 128), weights become symmetric
    int8 per output channel, biases are rescaled. No TensorFlow, no calibration data.
    The result carries TFLite metadata and the labels zip, and is checked against
    IN.tflite on fixed test images; a model with operators or types that cannot be
    converted exactly is refused, saying why.

    \b
    Example:
      edge-app models convert-int8 my_quant.tflite my_int8.tflite --labels labels.txt
    """
    from pathlib import Path

    from edge_app.errors import ConfigError, ModelError
    from edge_app.inference import int8_convert

    src, out = Path(source), Path(dest)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    try:
        data = src.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"model file not found: {src}") from exc
    except OSError as exc:
        raise ModelError(f"cannot read model {src}: {exc.strerror or exc}") from exc
    label_bytes = None
    if labels:
        try:
            label_bytes = Path(labels).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read labels {labels}: {exc.strerror or exc}") from exc
    conversion = int8_convert.convert(
        data,
        labels=label_bytes,
        labels_name=Path(labels).name if labels else "",
        where=str(src),
    )
    check = int8_convert.self_check(data, conversion.model)
    if not check.passed:
        raise ModelError(
            f"the int8 model made from {src} disagrees with it ({check.describe()}); "
            "nothing was written"
        )
    _write_atomically(out, conversion.model)
    embedded = conversion.labels_name or "no labels (pass --labels FILE)"
    click.echo(
        f"{out}: int8, {conversion.weighted_ops} weighted layers requantized, "
        f"embeds {embedded}; self-check: {check.describe()}"
    )


def _write_atomically(path, data: bytes) -> None:
    import tempfile

    from edge_app.errors import ConfigError

    folder = path.parent if str(path.parent) else None
    try:
        with tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{path.name}.", suffix=".part", delete=False
        ) as handle:
            handle.write(data)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except OSError as exc:
        try:
            os.unlink(handle.name)
        except (OSError, UnboundLocalError):
            pass
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _stamp(path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns

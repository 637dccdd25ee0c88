"""`edge-app bench`: invoke latency and rate per model, thread count and XNNPACK setting."""

from __future__ import annotations

import json

import click

from edge_app.cli.progress import Progress
from edge_app.inference.runtime import default_threads
from edge_app.settings import DEFAULT_MODEL, RUNTIME_CHOICES


def parse_threads(value: str | None) -> list[int]:
    if not value:
        return [default_threads()]
    out = []
    for part in value.split(","):
        part = part.strip()
        if part in ("all", "max"):
            out.append(default_threads())
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a thread count", param_hint="--threads")
    return out


@click.command()
@click.option(
    "-m",
    "--model",
    "models",
    multiple=True,
    metavar="NAME|PATH",
    help=f"Model(s) to measure; repeat the option. Default: {DEFAULT_MODEL}.",
)
@click.option(
    "--threads",
    metavar="LIST",
    help="Comma-separated thread counts to sweep, e.g. 1,2,4 or 1,all. Default: all cores.",
)
@click.option(
    "--xnnpack/--no-xnnpack",
    default=True,
    show_default=True,
    help="Measure with or without the XNNPACK delegate.",
)
@click.option(
    "--compare-xnnpack", is_flag=True, help="Measure both with and without XNNPACK, side by side."
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIME_CHOICES),
    default="auto",
    show_default=True,
    help="TFLite runtime; auto prefers ai_edge_litert, then tflite_runtime, then tensorflow.",
)
@click.option(
    "-n",
    "--runs",
    type=click.IntRange(min=5),
    default=100,
    show_default=True,
    help="Timed invokes per configuration (the percentiles come from these).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Untimed invokes first, per configuration (caches, thread pool, delegate set-up).",
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def bench(models, threads, xnnpack, compare_xnnpack, runtime, runs, warmup, as_json):
    """Measure model invoke latency (p50/p90/p99) and rate.

    Every configuration runs in this one process, one after another, so the ratios
    between rows are the figures to trust on a busy machine.

    \b
    Examples:
      edge-app bench --threads 1,2,4
      edge-app bench --compare-xnnpack
      edge-app bench -m mobilenet_v1_1.0_224_int8 -m mobilenet_v1_1.0_224_quant --json
    """
    from edge_app.batch.bench import measure_invoke
    from edge_app.inference.classifier import Classifier

    thread_list = parse_threads(threads)
    delegate_settings = [True, False] if compare_xnnpack else [xnnpack]
    rows = []
    model_list = models or (DEFAULT_MODEL,)
    configurations = len(model_list) * len(thread_list) * len(delegate_settings)
    bar = Progress(configurations * (warmup + runs), "invokes", label="measuring")
    for model in model_list:
        for count in thread_list:
            for use_xnnpack in delegate_settings:
                classifier = Classifier(model, runtime=runtime, threads=count, xnnpack=use_xnnpack)
                figures = measure_invoke(
                    classifier, runs=runs, warmup=warmup, on_invoke=bar.advance
                )
                bar.clear()
                rows.append(
                    {
                        "model": classifier.model_name,
                        "runtime": classifier.runtime.describe(),
                        "threads": count,
                        "xnnpack": use_xnnpack,
                        **figures,
                    }
                )
                del classifier
                if not as_json:
                    _print_row(rows[-1], rows[0])
    bar.close()
    if as_json:
        base = rows[0]["rate_per_s"] or 1.0
        for row in rows:
            row["rate_vs_first"] = round(row["rate_per_s"] / base, 3)
        click.echo(json.dumps({"results": rows}, indent=2))


def _print_row(row: dict, first: dict) -> None:
    if row is first:
        click.echo(
            f"{'model':34} {'runtime':14} {'thr':>3} {'xnn':>4} {'p50 ms':>8} "
            f"{'p90 ms':>8} {'p99 ms':>8} {'rate/s':>8} {'ratio':>6}"
        )
    ratio = row["rate_per_s"] / first["rate_per_s"] if first["rate_per_s"] else 0.0
    click.echo(
        f"{row['model']:34} {row['runtime']:14} {row['threads']:>3} "
        f"{'on' if row['xnnpack'] else 'off':>4} {row['p50_ms']:8.2f} {row['p90_ms']:8.2f} "
        f"{row['p99_ms']:8.2f} {row['rate_per_s']:8.1f} {ratio:6.2f}"
    )

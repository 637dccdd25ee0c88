"""The benchmark suite: every figure side by side in one run -> docs/PERFORMANCE.md.

    python -m benchmarks.run_all [--quick] [--output docs/PERFORMANCE.md] [--only NAME,...]

Absolute times on a shared machine are noisy; the ratios (measured in the same run,
interleaved where it matters) are the figures that count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from edge_app.inference.runtime import default_threads, select_runtime

    versions = {}
    for dist in ("numpy", "opencv-python", "opencv-python-headless", "ai-edge-litert", "paho-mqtt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": default_threads(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "runtime": select_runtime().describe(),
        "versions": versions,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def forget_cached_libraries() -> int:
    """Drop this environment's shared libraries from the page cache, as after a reboot.

    Peak RSS counts the library pages a process maps, and how many it maps depends on
    how the kernel holds them: right after `pip install` the freshly written libraries
    are mapped in large chunks (here the same `run` peaked at 155 MB, against 103 MB
    once they had been read back from disk; the private part was 47 MB both times).
    Doing this first, before this process loads any of them, makes the memory figures
    those of a device in service. Returns the number of files dropped.
    """
    import os
    import sysconfig

    dropped = 0
    for root in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for folder, _, names in os.walk(root):
            for name in names:
                if ".so" not in name:
                    continue
                try:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fsync(fd)  # written moments ago by pip: dirty pages are not dropped
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    dropped += 1
                finally:
                    os.close(fd)
    return dropped


def verdict(ok: bool, miss: str = "") -> str:
    return "**met**" if ok else f"**missed** {miss}".rstrip()


# -- sections: (key, title, module:function, renderer) ------------------------------------
def render_models(r: dict) -> list[str]:
    out = [
        f"Interleaved rounds: {r['rounds']} x {r['invokes_per_round']} invokes per configuration.",
        "",
        "| model | threads | XNNPACK | p50 ms | p90 ms | rate /s | speed vs int8 1 thread | XNNPACK speed-up (noise) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        speedup = (
            f"{row['xnnpack_speedup']:.2f}x (±{100 * row['xnnpack_speedup_noise']:.0f} %)"
            if row["xnnpack"]
            else ""
        )
        out.append(
            f"| {row['model']} | {row['threads']} | {'on' if row['xnnpack'] else 'off'} | "
            f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['rate_per_s']:.1f} | "
            f"{row['speed_vs_int8_1thread']:.2f} | {speedup} |"
        )
    return out


def render_frame_cost(r: dict) -> list[str]:
    out = [
        f"int8 invoke at {r['threads']} threads: {r['invoke_ms']:.2f} ms (median).",
        "",
        "| frame | preprocess ms | postprocess ms | overlay ms | total ms | share of invoke |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        out.append(
            f"| {row['frame']} | {row['preprocess_ms']:.3f} | {row['postprocess_ms']:.3f} | "
            f"{row['overlay_ms']:.3f} | {row['total_ms']:.3f} | {100 * row['share_of_invoke']:.1f} % |"
        )
    share = r["rows"][0]["share_of_invoke"]
    out += [
        "",
        f"Target: at most {100 * r['target_share']:.0f} % at 640x480: "
        + verdict(share <= r["target_share"], f"({100 * share:.1f} %)"),
    ]
    return out


def render_folders(r: dict) -> list[str]:
    out = [
        f"Single-thread int8 invoke rate: {r['single_thread_invoke_per_s']:.1f} /s (median of "
        f"{r['single_thread_samples']} samples taken between the runs, noise ±"
        f"{100 * r['single_thread_noise']:.0f} %). Ideal = workers x that rate; each "
        f"images/s is the best of {r['rounds']} run(s).",
        "",
        "| workers | images | images/s | ideal /s | ratio | noise | top-1 % |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        out.append(
            f"| {row['workers']} | {row['images']} | {row['images_per_s']:.1f} | "
            f"{row['ideal_per_s']:.1f} | {row['ratio']:.2f} | ±{100 * row['noise']:.0f} % | "
            f"{row['top1']:.1f} |"
        )
    last = r["rows"][-1]["ratio"]
    out += [
        "",
        f"Target: at least {r['target']} with all workers: "
        + verdict(last >= r["target"], f"({last:.2f})"),
    ]
    return out


def render_large(r: dict) -> list[str]:
    top1_delta = r["top1_reduced"] - r["top1_full"]
    out = [
        f"{r['images']} JPEGs of {r['size']} made from the sample; `classify` with all "
        f"workers, best of {r['rounds']} interleaved run(s) each, then the parts per photo "
        "on one thread.",
        "",
        "| decoding | classify images/s | decode + resize ms | top-1 % |",
        "|---|---:|---:|---:|",
        f"| reduced (DCT scaling) | {r['reduced_per_s']:.2f} | {r['prepare_reduced_ms']:.1f} | "
        f"{r['top1_reduced']:.1f} |",
        f"| full | {r['full_per_s']:.2f} | {r['prepare_full_ms']:.1f} | {r['top1_full']:.1f} |",
        "",
        f"Speed-up: classify {r['speedup']:.2f}x (±{100 * r['speedup_noise']:.0f} %); "
        f"decode + resize {r['prepare_speedup']:.1f}x. "
        f"Top-1 changed on {r['top1_changed_images']} of {r['images']} images "
        f"(net {top1_delta:+.1f} points).",
        f"Both paths also pay the invoke ({r['invoke_ms']:.1f} ms on one thread), so the parts "
        f"predict a classify speed-up of ({r['prepare_full_ms']:.0f} + {r['invoke_ms']:.0f}) / "
        f"({r['prepare_reduced_ms']:.0f} + {r['invoke_ms']:.0f}) = {r['expected_speedup']:.2f}x: "
        "a 1/8 decode still entropy-decodes the whole file.",
        "Target: at least 3x faster with top-1 within 0.3 points: "
        + verdict(
            r["speedup"] >= 3.0 and abs(top1_delta) <= 0.3,
            f"({r['speedup']:.2f}x, {top1_delta:+.1f} points)",
        ),
    ]
    return out


def render_startup(r: dict) -> list[str]:
    out = ["| command | start to first result, s |", "|---|---:|"]
    for row in r["rows"]:
        out.append(f"| {row['command']} | {row['first_result_s']:.2f} |")
    worst = max(row["first_result_s"] for row in r["rows"])
    out += [
        "",
        f"Peak RSS: `run` {r['run_peak_rss_mb']:.0f} MB (300 frames), of which private "
        f"{r['run_private_mb']:.0f} MB; one `classify` worker "
        f"{r['classify_worker_peak_rss_mb']:.0f} MB, private {r['classify_worker_private_mb']:.0f} MB. "
        "The rest is shared library code. Measured with the libraries read from disk, as "
        "on a device after a reboot (right after `pip install` the kernel maps freshly "
        "written libraries in larger chunks, which inflates RSS).",
        "",
        "Targets: first result under 1.0 s: "
        + verdict(worst < 1.0, f"({worst:.2f} s)")
        + "; `run` under 150 MB: "
        + verdict(r["run_peak_rss_mb"] < 150, f"({r['run_peak_rss_mb']:.0f} MB)"),
    ]
    return out


def render_generic(r: dict) -> list[str]:
    """Sections from other modules render themselves when they provide `markdown`."""
    if "markdown" in r:
        return r["markdown"].splitlines()
    return ["```json", json.dumps(r, indent=2), "```"]


SECTIONS = [
    ("models", "Model invoke latency", "benchmarks.core_bench:bench_models", render_models),
    (
        "frame_cost",
        "Our per-frame cost",
        "benchmarks.core_bench:bench_frame_cost",
        render_frame_cost,
    ),
    (
        "int8",
        "Derived int8 models vs TensorFlow's int8 and uint8",
        "benchmarks.int8_bench:run",
        render_generic,
    ),
    ("pipeline", "Live pipeline", "benchmarks.pipeline_bench:run", render_generic),
    (
        "folders",
        "Folders: classify on the 1,000-image sample",
        "benchmarks.core_bench:bench_folders",
        render_folders,
    ),
    (
        "large",
        "Large photos: reduced vs full JPEG decoding",
        "benchmarks.core_bench:bench_large_photos",
        render_large,
    ),
    (
        "startup",
        "Start-up and memory",
        "benchmarks.core_bench:bench_startup_memory",
        render_startup,
    ),
    (
        "service",
        "Service: MJPEG viewers vs inference",
        "benchmarks.service_bench:run",
        render_generic,
    ),
    (
        "learn",
        "Learned classes: invoke rate and learn time",
        "benchmarks.learn_bench:run",
        render_generic,
    ),
    (
        "events",
        "Events and motion gating",
        "benchmarks.events_bench:run",
        render_generic,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples; under two minutes")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument(
        "--only", help="comma-separated section keys: " + ", ".join(k for k, *_ in SECTIONS)
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None

    started = time.perf_counter()
    if wanted is None or "startup" in wanted:
        forget_cached_libraries()
    info = machine()
    results: dict[str, dict] = {"machine": info}
    lines = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m benchmarks.run_all"
        + (" --quick" if args.quick else "")
        + "`). Every figure below comes from one run, "
        "side by side; absolute times on a shared machine are noisy, the ratios count.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']} ({info['arch']}), {info['cores']} cores",
        f"- Python {info['python']}; runtime {info['runtime']}",
        "- " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- Measured {info['date']}" + (" (quick mode)" if args.quick else ""),
        "",
    ]
    failures = 0
    for number, (key, title, target, render) in enumerate(SECTIONS, start=2):
        if wanted and key not in wanted:
            continue
        print(f"[bench] {title} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        module_name, func_name = target.split(":")
        lines += [f"## {number}. {title}", ""]
        try:
            func = getattr(importlib.import_module(module_name), func_name)
            result = func(args.quick)
            results[key] = result
            lines += render(result)
        except Exception as exc:  # a failed section is reported, the others still run
            failures += 1
            traceback.print_exc()
            lines.append(f"Not measured: {type(exc).__name__}: {exc}")
        lines += ["", f"_({time.perf_counter() - t0:.0f} s)_", ""]
        print(f"[bench] {title}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    lines.append(f"Total benchmark time: {total:.0f} s.")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"[bench] wrote {args.output} in {total:.0f} s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

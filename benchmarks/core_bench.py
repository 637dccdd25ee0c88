"""Benchmarks of the classifier core: model invoke, our per-frame cost, folders,
large photos, start-up and memory. Each function returns a dict of figures; the suite
(benchmarks/run_all.py) runs them side by side and writes docs/PERFORMANCE.md.

Ratios are measured in interleaved rounds (A, B, A, B, ...) so that load from other
processes hits both sides alike; the spread of the per-round ratios is the noise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_app.inference.classifier import Classifier
from edge_app.inference.runtime import default_threads
from edge_app.measure import percentile

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_APP_SHARED", ROOT.parent / "shared")).resolve()
MODELS = SHARED / "models"
CACHE = ROOT / ".cache" / "bench"
MODEL_FILES = {
    "int8": "mobilenet_v1_1.0_224_int8.tflite",
    "uint8": "mobilenet_v1_1.0_224_quant.tflite",
    "float": "mobilenet_v1_1.0_224_float.tflite",
}


def model_path(kind: str = "int8") -> Path:
    return MODELS / MODEL_FILES[kind]


def thread_counts() -> list[int]:
    return sorted({1, 2, default_threads()})


def spread(values: list[float]) -> float:
    """Half the range of per-round values relative to their median: the noise."""
    if len(values) < 2:
        return 0.0
    mid = float(np.median(values))
    return (max(values) - min(values)) / 2 / mid if mid else 0.0


def _invoke_samples(classifier: Classifier, n: int) -> list[float]:
    return [classifier.invoke() for _ in range(n)]


# -- 2. model -----------------------------------------------------------------------------
def bench_models(quick: bool) -> dict:
    rounds, per_round = (3, 15) if quick else (5, 40)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    configs = []
    for kind in MODEL_FILES:
        for threads in thread_counts():
            for xnnpack in (True, False):
                classifier = Classifier(model_path(kind), threads=threads, xnnpack=xnnpack)
                classifier.preprocess(frame)
                _invoke_samples(classifier, 3)
                configs.append(
                    {
                        "model": kind,
                        "threads": threads,
                        "xnnpack": xnnpack,
                        "clf": classifier,
                        "samples": [],
                        "round_medians": [],
                    }
                )
    for _ in range(rounds):
        for config in configs:
            samples = _invoke_samples(config["clf"], per_round)
            config["samples"] += samples
            config["round_medians"].append(float(np.median(samples)))
    rows = []
    base = next(c for c in configs if c["model"] == "int8" and c["threads"] == 1 and c["xnnpack"])
    for config in configs:
        off = next(
            c
            for c in configs
            if c["model"] == config["model"]
            and c["threads"] == config["threads"]
            and not c["xnnpack"]
        )
        ratios = [o / s for s, o in zip(config["round_medians"], off["round_medians"], strict=True)]
        rows.append(
            {
                "model": config["model"],
                "threads": config["threads"],
                "xnnpack": config["xnnpack"],
                "p50_ms": round(percentile(config["samples"], 50), 2),
                "p90_ms": round(percentile(config["samples"], 90), 2),
                "rate_per_s": round(1000 / float(np.median(config["samples"])), 1),
                "speed_vs_int8_1thread": round(
                    float(np.median(base["samples"])) / float(np.median(config["samples"])), 2
                ),
                "xnnpack_speedup": round(float(np.median(ratios)), 2)
                if config["xnnpack"]
                else None,
                "xnnpack_speedup_noise": round(spread(ratios), 3) if config["xnnpack"] else None,
            }
        )
    for config in configs:
        del config["clf"]
    return {"rows": rows, "rounds": rounds, "invokes_per_round": per_round}


# -- 3. our per-frame cost ----------------------------------------------------------------
def _time_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))


def bench_frame_cost(quick: bool) -> dict:
    from edge_app.live.overlay import Overlay
    from edge_app.results import LiveResult

    repeats = 100 if quick else 400
    classifier = Classifier(model_path("int8"))
    photo = cv2.imread(str(SHARED / "images" / "test" / "cat_1080p.jpg"))
    frames = {
        "640x480": cv2.resize(photo[:, 240:1680], (640, 480), interpolation=cv2.INTER_AREA),
        "1920x1080": photo,
    }
    classifier.preprocess(frames["640x480"])
    invoke = float(np.median(_invoke_samples(classifier, 30 if quick else 100)))
    classifier.invoke()
    post = _time_ms(lambda: classifier.top(classifier.scores()), repeats)
    result = classifier.classify(frames["640x480"])
    live = LiveResult(
        frame=1,
        time=time.time(),
        top=result.top,
        inference_ms=invoke,
        latency_ms=invoke + 3,
        fps=100.0,
        camera_fps=30.0,
    )
    overlay = Overlay(classifier.model_name, classifier.top_k)
    rows = []
    for size, frame in frames.items():
        pre = _time_ms(lambda frame=frame: classifier.preprocess(frame), repeats)
        canvas = frame.copy()
        overlay.draw(canvas, live)  # the layout is cached per frame size, as in a live run
        draw = _time_ms(lambda canvas=canvas: overlay.draw(canvas, live), repeats)
        total = pre + post + draw
        rows.append(
            {
                "frame": size,
                "preprocess_ms": round(pre, 3),
                "postprocess_ms": round(post, 3),
                "overlay_ms": round(draw, 3),
                "total_ms": round(total, 3),
                "share_of_invoke": round(total / invoke, 3),
            }
        )
    return {
        "invoke_ms": round(invoke, 2),
        "threads": classifier.threads,
        "rows": rows,
        "target_share": 0.10,
    }


# -- 5. folders -----------------------------------------------------------------------------
def _classify_rate(args: list[str]) -> tuple[float, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_app", "classify", *args, "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    match = re.search(r"done: (\d+) images, (\d+) failed, ([\d.]+) s", proc.stderr)
    if not match:
        raise RuntimeError(f"classify failed: {proc.stderr.strip()[-400:]}")
    images, seconds = int(match.group(1)), float(match.group(3))
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return images / seconds, rows


def top1(rows: list[dict]) -> float:
    correct = 0
    for row in rows:
        truth = Path(row["path"]).stem.split("_", 1)[1].replace("_", " ").lower()
        if row["ok"] and row["top"][0]["label"].split(",")[0].strip().lower() == truth:
            correct += 1
    return 100.0 * correct / len(rows) if rows else 0.0


def _sample_paths(quick: bool) -> list[str]:
    files = sorted((SHARED / "images" / "imagenet-sample").iterdir())
    return [str(p) for p in (files[::4] if quick else files)]


def bench_folders(quick: bool) -> dict:
    """classify on the sample with 1..all workers against workers x the single-thread
    invoke rate. An invoke-rate sample (~2 s) is taken before every classify run and
    after the last; the ideal uses their median (the typical rate over the same
    minutes), and each worker count its best run."""
    paths = _sample_paths(quick)
    rounds = 1 if quick else 2
    single = Classifier(model_path("int8"), threads=1)
    single.preprocess(np.zeros((480, 640, 3), np.uint8))
    single_rates: list[float] = []
    runs: dict[int, list[tuple[float, list[dict]]]] = {}
    for _ in range(rounds):
        for workers in range(1, default_threads() + 1):
            single_rates.append(1000 / float(np.median(_invoke_samples(single, 100))))
            runs.setdefault(workers, []).append(
                _classify_rate(
                    [*paths, "-m", str(model_path()), "--workers", str(workers), "--threads", "1"]
                )
            )
    single_rates.append(1000 / float(np.median(_invoke_samples(single, 100))))
    del single
    single_rate = float(np.median(single_rates))
    rows = []
    for workers, results in runs.items():
        rate, records = max(results, key=lambda result: result[0])
        ideal = workers * single_rate
        rows.append(
            {
                "workers": workers,
                "images": len(records),
                "images_per_s": round(rate, 1),
                "ideal_per_s": round(ideal, 1),
                "ratio": round(rate / ideal, 3),
                # the ratio carries the noise of both its sides
                "noise": round(
                    float(np.hypot(spread([r for r, _ in results]), spread(single_rates))), 3
                ),
                "top1": round(top1(records), 1),
            }
        )
    return {
        "single_thread_invoke_per_s": round(single_rate, 1),
        "single_thread_noise": round(spread(single_rates), 3),
        "single_thread_samples": len(single_rates),
        "rounds": rounds,
        "rows": rows,
        "target": 0.8,
    }


def make_large_photos(count: int) -> list[Path]:
    """12 MP (4000x3000) JPEGs made from the sample photos, cached between runs."""
    folder = CACHE / "12mp"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((SHARED / "images" / "imagenet-sample").iterdir())
    step = max(1, len(sources) // count)
    out = []
    for src in sources[::step][:count]:
        dst = folder / (src.stem + ".jpg")
        if not dst.exists():
            image = cv2.imread(str(src))
            big = cv2.resize(image, (4000, 3000), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(dst), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(dst)
    return out


def bench_large_photos(quick: bool) -> dict:
    photos = [str(p) for p in make_large_photos(100 if quick else 1000)]
    common = ["-m", str(model_path())]
    rounds = 1 if quick else 2
    reduced_runs, full_runs = [], []
    for _ in range(rounds):  # interleaved: reduced, full, reduced, full
        reduced_runs.append(_classify_rate([*photos, *common]))
        full_runs.append(_classify_rate([*photos, *common, "--full-decode"]))
    speedups = [r[0] / f[0] for r, f in zip(reduced_runs, full_runs, strict=True)]
    reduced_rate, reduced_rows = max(reduced_runs, key=lambda run: run[0])
    full_rate, full_rows = max(full_runs, key=lambda run: run[0])
    differing = sum(
        a["top"][0]["index"] != b["top"][0]["index"]
        for a, b in zip(reduced_rows, full_rows, strict=True)
        if a["ok"] and b["ok"]
    )
    # Per photo in this process, one thread: decoding plus the resize to the model
    # input (the part the reduced path changes) and the invoke both paths pay.
    from edge_app.batch.decode import decode_image

    classifier = Classifier(model_path("int8"), threads=1)

    def prepare_ms(reduced: bool) -> float:
        sample = photos[:30]
        start = time.perf_counter()
        for photo in sample:
            decoded = decode_image(photo, model_size=classifier.input_size, reduced=reduced)
            classifier.preprocess(decoded.image)
        return (time.perf_counter() - start) * 1000 / len(sample)

    prepare_reduced, prepare_full = prepare_ms(True), prepare_ms(False)
    invoke = float(np.median(_invoke_samples(classifier, 50)))
    return {
        "prepare_reduced_ms": round(prepare_reduced, 1),
        "prepare_full_ms": round(prepare_full, 1),
        "prepare_speedup": round(prepare_full / prepare_reduced, 2),
        "invoke_ms": round(invoke, 1),
        # What the parts predict for whole photos: both pay the invoke.
        "expected_speedup": round((prepare_full + invoke) / (prepare_reduced + invoke), 2),
        "images": len(photos),
        "size": "4000x3000",
        "reduced_per_s": round(reduced_rate, 2),
        "full_per_s": round(full_rate, 2),
        "speedup": round(reduced_rate / full_rate, 2),
        "speedup_noise": round(spread(speedups), 3),
        "rounds": rounds,
        "top1_reduced": round(top1(reduced_rows), 1),
        "top1_full": round(top1(full_rows), 1),
        "top1_changed_images": differing,
        "target_speedup": 3.0,
    }


# -- 6. start-up and memory -----------------------------------------------------------------
# The command runs under a small launcher process: a child forked straight from this
# (large) benchmark process would count this process's memory in its own ru_maxrss.
# Besides the kernel's peak RSS it samples the peak of the private (anonymous) part,
# the memory the run really takes: the rest is shared library code, clean and shared.
_LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "anon = 0\n"
    "while True:\n"
    "    pid, status, usage = os.wait4(p.pid, os.WNOHANG)\n"
    "    if pid:\n"
    "        break\n"
    "    try:\n"
    "        for line in open(f'/proc/{p.pid}/status'):\n"
    "            if line.startswith('RssAnon:'):\n"
    "                anon = max(anon, int(line.split()[1]))\n"
    "    except OSError:\n"
    "        pass\n"
    "    time.sleep(0.01)\n"
    "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {anon}')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _first_line_time(cmd: list[str]) -> tuple[float, int, int]:
    """Seconds from start to the first stdout line, and the command's peak RSS and peak
    private (anonymous) memory, in kB."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, rss_file.name, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        first = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.stdout.read()
        proc.wait()
        peak_kb, anon_kb = (int(v) for v in (open(rss_file.name).read() or "0 0").split())
    if not first:
        raise RuntimeError(f"no output from {' '.join(cmd)}")
    return elapsed, peak_kb, anon_kb


def bench_startup_memory(quick: bool) -> dict:
    repeats = 3 if quick else 5
    video = SHARED / "videos" / "demo_640x480.mp4"
    photo = SHARED / "images" / "test" / "parrot.jpg"
    app = [sys.executable, "-m", "edge_app"]
    commands = {
        "classify (1 photo, 1 worker)": [
            *app,
            "classify",
            str(photo),
            "-m",
            str(model_path()),
            "--workers",
            "1",
            "--format",
            "jsonl",
        ],
        "run (video, headless, json)": [
            *app,
            "run",
            "--source",
            str(video),
            "--headless",
            "--json",
            "-m",
            str(model_path()),
            "--max-frames",
            "1",
        ],
    }
    rows = []
    for name, cmd in commands.items():
        times = []
        for _ in range(repeats):
            elapsed, _, _ = _first_line_time(cmd)
            times.append(elapsed)
        rows.append({"command": name, "first_result_s": round(float(np.median(times)), 3)})
    # Peak memory over a longer run (300 frames as fast as possible; classify workers
    # over a 100-image folder, one worker = one process).
    _, run_rss, run_anon = _first_line_time(
        [
            *app,
            "run",
            "--source",
            str(video),
            "--headless",
            "--json",
            "--no-pace",
            "-m",
            str(model_path()),
            "--max-frames",
            "300",
        ]
    )
    _, worker_rss, worker_anon = _first_line_time(
        [
            *app,
            "classify",
            *_sample_paths(True)[:100],
            "-m",
            str(model_path()),
            "--workers",
            "1",
            "--format",
            "jsonl",
        ]
    )
    return {
        "rows": rows,
        "run_peak_rss_mb": round(run_rss / 1024, 1),
        "classify_worker_peak_rss_mb": round(worker_rss / 1024, 1),
        "run_private_mb": round(run_anon / 1024, 1),
        "classify_worker_private_mb": round(worker_anon / 1024, 1),
        "targets": {"first_result_s": 1.0, "run_peak_rss_mb": 150},
    }

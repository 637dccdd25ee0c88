"""How close the live pipeline comes to the model's raw speed.

Measured side by side in one run, at one thread count:

- raw: ``interpreter.invoke()`` back to back on a ready input: the ceiling;
- pipeline, frames in memory: capture hands over already-decoded frames (a model-sized
  picture per frame, as a Pi camera's ISP-scaled lores stream delivers) and inference
  never waits for one. Target: at least 0.95 of raw;
- pipeline, video file: capture decodes the demo video (--no-pace) while inference runs;
- sequential: read, preprocess, invoke, draw one frame after another, as the TFLite
  Raspberry Pi classification example does, for the same two sources;
- the overlay's drawing time.

Run: ``python benchmarks/pipeline_bench.py [--seconds S] [--rounds R] [--threads N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.core_bench import spread  # noqa: E402
from edge_app.inference.classifier import Classifier  # noqa: E402
from edge_app.live.overlay import Overlay  # noqa: E402
from edge_app.live.pipeline import Pipeline  # noqa: E402
from edge_app.results import LiveResult  # noqa: E402
from edge_app.sources import MemorySource, open_source  # noqa: E402

SHARED = Path(os.environ.get("EDGE_APP_SHARED", ROOT.parent / "shared")).resolve()
DEFAULT_MODEL = SHARED / "models" / "mobilenet_v1_1.0_224_int8.tflite"
DEFAULT_VIDEO = SHARED / "videos" / "demo_640x480.mp4"


def _frames_in_memory(video: Path, count: int, model_size: tuple[int, int]):
    """Decoded display frames and their model-sized versions (the camera's two streams)."""
    cap = cv2.VideoCapture(str(video))
    images, model_images = [], []
    while len(images) < count:
        ok, frame = cap.read()
        if not ok:
            break
        images.append(frame)
        model_images.append(cv2.resize(frame, model_size, interpolation=cv2.INTER_AREA))
    cap.release()
    return images, model_images


def raw_invoke_rate(classifier: Classifier, seconds: float) -> dict:
    classifier.preprocess(np.zeros((*classifier.input_size, 3), np.uint8), crop="none")
    for _ in range(5):
        classifier.invoke()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.invoke()
        n += 1
    elapsed = time.perf_counter() - start
    return {"fps": n / elapsed, "invoke_ms": elapsed / n * 1000.0, "frames": n}


def pipeline_rate(classifier: Classifier, source, seconds: float) -> dict:
    """Inference rate over the middle of a run: first results (warm-up) not counted."""
    times: list[float] = []
    pipeline = Pipeline(source, classifier, duration=seconds + 0.5)
    pipeline.add_listener(lambda result, frame: times.append(time.perf_counter()))
    pipeline.start()
    pipeline.wait(seconds + 30)
    pipeline.stop()
    summary = pipeline.summary()
    steady = times[len(times) // 10 :]
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    return {
        "fps": fps,
        "frames": summary["results"],
        "dropped": summary["dropped"],
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p95": summary["latency_ms_p95"],
    }


def sequential_rate(classifier: Classifier, read, seconds: float, model_input: bool) -> dict:
    """One frame at a time: read, classify, draw (the TFLite Raspberry Pi example loop)."""
    overlay = Overlay(classifier.model_name, classifier.top_k)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        image, model_image = read()
        t0 = time.perf_counter()
        if model_input:
            classification = classifier.classify(model_image, crop="none")
        else:
            classification = classifier.classify(image)
        result = LiveResult(
            n, time.time(), classification.top, classification.inference_ms,
            (time.perf_counter() - t0) * 1000, 0.0, 0.0,
        )  # fmt: skip
        overlay.draw(image.copy(), result)
        n += 1
    return {"fps": n / (time.perf_counter() - start), "frames": n}


def overlay_cost_us(classifier: Classifier, image: np.ndarray, repeats: int = 300) -> dict:
    result = LiveResult(0, 0.0, classifier.classify(image).top, 9.8, 14.2, 61.0, 30.0)
    figures = {}
    for height, width in ((480, 640), (1080, 1920)):
        overlay = Overlay(classifier.model_name, classifier.top_k)
        frame = cv2.resize(image, (width, height))
        overlay.draw(frame, result)  # layout cached from here on
        start = time.perf_counter()
        for _ in range(repeats):
            overlay.draw(frame, result)
        figures[f"{width}x{height}"] = (time.perf_counter() - start) / repeats * 1e6
    return figures


def run_benchmark(
    model: Path = DEFAULT_MODEL,
    video: Path = DEFAULT_VIDEO,
    threads: int | None = None,
    seconds: float = 1.5,
    rounds: int = 12,
) -> dict:
    """All figures as a dict (rates in results per second), measured in ``rounds``
    interleaved rounds."""
    classifier = Classifier(model, threads=threads)
    height, width = classifier.input_size
    images, model_images = _frames_in_memory(video, 120, (width, height))
    index = [0]

    def read_memory():
        i = index[0] = (index[0] + 1) % len(images)
        return images[i], model_images[i]

    def read_video_factory():
        capture = open_source(str(video), pace=False, loop=True)
        return lambda: (capture.read().image, None)

    measurements = {
        "raw": lambda: raw_invoke_rate(classifier, seconds),
        "pipeline_memory": lambda: pipeline_rate(
            classifier,
            MemorySource(images, model_images=model_images, live=False, name="memory"),
            seconds,
        ),
        "pipeline_video": lambda: pipeline_rate(
            classifier, open_source(str(video), pace=False, loop=True), seconds
        ),
        "pipeline_camera_30fps": lambda: pipeline_rate(
            classifier,
            MemorySource(images, model_images=model_images, live=True, fps=30.0, name="cam"),
            seconds,
        ),
        "sequential_memory": lambda: sequential_rate(classifier, read_memory, seconds, True),
        "sequential_video": lambda: sequential_rate(
            classifier, read_video_factory(), seconds, False
        ),
    }
    # Rounds interleave every measurement; each figure is the median over rounds and
    # each ratio the median of per-round ratios (a measurement against the raw rate
    # taken in the same round), so slow drifts in the machine's load cancel out.
    per_round: dict[str, list[dict]] = {name: [] for name in measurements}
    for _ in range(rounds):
        for name, measure in measurements.items():
            per_round[name].append(measure())
    figures: dict = {
        "model": classifier.model_name,
        "runtime": classifier.runtime.describe(),
        "threads": classifier.threads,
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "seconds": seconds,
        "load_average": os.getloadavg()[0],
        "overlay_us": overlay_cost_us(classifier, images[0]),
    }
    for name, results in per_round.items():
        middle = sorted(results, key=lambda r: r["fps"])[len(results) // 2]
        figures[name] = {**middle, "fps": float(np.median([r["fps"] for r in results]))}
    raws = [r["fps"] for r in per_round["raw"]]
    for name, results in per_round.items():
        if name != "raw":
            ratios = [r["fps"] / raw for r, raw in zip(results, raws, strict=True)]
            figures[f"ratio_{name}_to_raw"] = float(np.median(ratios))
            figures[f"noise_{name}"] = median_interval(ratios)
    return figures


def median_interval(values: list[float]) -> float:
    """How far the median of per-round values may be off, relative to it: the half-width
    of its ~95 % interval (1.57 IQR / sqrt(n), as box-plot notches); with fewer than four
    rounds, half their range. Single rounds swing by 10-20 % on a shared machine; the
    median of a dozen is good to a few per cent."""
    middle = float(np.median(values))
    if len(values) < 4 or not middle:
        return spread(values)
    q1, q3 = np.percentile(values, [25, 75])
    return float(1.57 * (q3 - q1) / np.sqrt(len(values)) / middle)


def report(figures: dict) -> str:
    raw = figures["raw"]["fps"]
    lines = [
        f"model {figures['model']}, {figures['runtime']}, {figures['threads']} threads, "
        f"{figures['cpus']} CPUs, load average {figures['load_average']:.1f}; medians of "
        f"{figures['rounds']} interleaved rounds of {figures['seconds']:g} s, ratios per round "
        "against that round's raw rate (± is the 95 % interval of the median ratio)",
        f"  raw invoke                    {raw:7.1f} /s  ({figures['raw']['invoke_ms']:.2f} ms)",
    ]
    for key, name in (
        ("pipeline_memory", "pipeline, frames in memory"),
        ("pipeline_video", "pipeline, video file"),
        ("pipeline_camera_30fps", "pipeline, 30 fps camera-like"),
        ("sequential_memory", "sequential, frames in memory"),
        ("sequential_video", "sequential, video file"),
    ):
        entry = figures[key]
        ratio, noise = figures[f"ratio_{key}_to_raw"], figures[f"noise_{key}"]
        line = f"  {name:<29} {entry['fps']:7.1f} /s  {ratio:5.2f} x raw (±{100 * noise:2.0f} %)"
        if "latency_ms_p50" in entry:
            line += (
                f"  latency p50 {entry['latency_ms_p50']:.1f} ms p95 "
                f"{entry['latency_ms_p95']:.1f} ms, {entry['dropped']} dropped"
            )
        lines.append(line)
    overlay = figures["overlay_us"]
    lines.append(
        "  overlay draw                  "
        + ", ".join(f"{size}: {us:.0f} us" for size, us in overlay.items())
    )
    target = figures["ratio_pipeline_memory_to_raw"]
    lines.append(
        f"  target pipeline/raw >= 0.95: {target:.3f} {'ok' if target >= 0.95 else 'MISSED'}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run_benchmark(args.model, args.video, args.threads, args.seconds, args.rounds)
    print(json.dumps(figures, indent=2) if args.json else report(figures))


def run(quick: bool = False) -> dict:
    """Entry point for the suite (benchmarks/run_all.py): figures plus a markdown block."""
    # Many short rounds rather than a few long ones: the host's load changes by the
    # second, and a median over a dozen pairs settles where five did not.
    figures = run_benchmark(seconds=1.0 if quick else 1.5, rounds=4 if quick else 12)
    figures["markdown"] = "```\n" + report(figures) + "\n```"
    return figures


if __name__ == "__main__":
    main()

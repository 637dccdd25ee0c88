"""Events and motion gating: what the gate saves, how fast it reacts, what recording costs.

1. CPU seconds per minute of a still scene, gate off against gate motion: a 30 FPS
   camera (frames in memory with sensor-like noise, so capture itself costs next to
   nothing, as with a Pi camera) watching a still photo; the process's CPU time
   (``time.process_time``, all threads) over interleaved rounds of each mode.
2. Delay from a change to its first result under the gate: the camera's picture is
   switched to another photo at a known moment; the time until the first result with
   trigger "motion" for a frame of the new picture, against one camera frame plus one
   invoke (the target).
3. Inference FPS with the event recorder on against off: the demo video unpaced (every
   frame classified as fast as it goes), the recorder watching the demo's labels so
   events with snapshots and clips are being written, interleaved rounds.

    python -m benchmarks.events_bench [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_APP_SHARED", ROOT.parent / "shared"))
VIDEO = SHARED / "videos" / "demo_640x480.mp4"
MODEL = SHARED / "models" / "mobilenet_v1_1.0_224_int8.tflite"
PHOTOS = SHARED / "images" / "test"
CAMERA_FPS = 30.0
TARGET_CPU_RATIO = 5.0
TARGET_RECORDER_DROP_PCT = 5.0


def _noisy(photo: str, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    picture = cv2.resize(cv2.imread(str(PHOTOS / photo)), (640, 480)).astype(np.int16)
    rng = np.random.default_rng(seed)
    return [
        np.clip(picture + rng.normal(0, 3, picture.shape).astype(np.int16), 0, 255).astype(np.uint8)
        for _ in range(count)
    ]


def _classifier(threads: int = 1):
    from edge_app.inference.classifier import Classifier

    return Classifier(MODEL, threads=threads)


def _camera(images):
    from edge_app.sources.memory import MemorySource

    class SwitchingCamera(MemorySource):
        """Notes the number of the first frame read after ``images`` is replaced."""

        first_new: int | None = None
        _current = None

        def read(self):
            if self._pacer is not None:
                self._pacer.wait()  # like a camera's frame interval
            images = self.images
            if images is not self._current:
                self._current = images
                self.first_new = self._number
            return self._frame(images[self._number % len(images)])

    return SwitchingCamera(images, fps=CAMERA_FPS, live=True, name="still camera")


def _gate(mode: str):
    from edge_app.live.motion import make_gate

    return make_gate(mode, max_interval=10.0)


def cpu_per_minute(classifier, seconds: float, rounds: int) -> dict:
    """CPU s/min of a still scene with the gate off and on, interleaved rounds."""
    from edge_app.live.pipeline import Pipeline

    scene = _noisy("grace_hopper.bmp")
    figures: dict[str, list[float]] = {"off": [], "motion": []}
    results: dict[str, list[int]] = {"off": [], "motion": []}
    for _ in range(rounds):
        for mode in ("off", "motion"):
            pipeline = Pipeline(_camera(scene), classifier, gate=_gate(mode))
            pipeline.start()
            time.sleep(1.0)  # started and settled
            first = pipeline.stats()["results"]
            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(seconds)
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            results[mode].append(pipeline.stats()["results"] - first)
            pipeline.stop()
            figures[mode].append(cpu / wall * 60.0)
    off, on = statistics.median(figures["off"]), statistics.median(figures["motion"])
    return {
        "seconds": seconds,
        "rounds": rounds,
        "cpu_s_per_min_off": round(off, 2),
        "cpu_s_per_min_motion": round(on, 2),
        "cpu_ratio": round(off / on, 1) if on > 0 else float("inf"),
        "results_off": results["off"],
        "results_motion": results["motion"],
    }


def change_delay(classifier, changes: int) -> dict:
    """Milliseconds from switching the camera's picture to the first result of it."""
    from edge_app.live.pipeline import Pipeline

    scenes = [_noisy("grace_hopper.bmp", 4, 1), _noisy("parrot.jpg", 4, 2)]
    camera = _camera(scenes[0])
    pipeline = Pipeline(camera, classifier, gate=_gate("motion"))
    switched = {"at": None}
    delays: list[float] = []
    seen = threading.Event()

    def listener(result, frame):
        at, number = switched["at"], camera.first_new
        if at is not None and number is not None and frame.number >= number:
            if result.trigger == "motion" and not seen.is_set():
                delays.append((time.monotonic() - at) * 1000.0)
                seen.set()

    pipeline.add_listener(listener)
    pipeline.start()
    time.sleep(2.0)
    invokes = []
    try:
        for i in range(changes):
            time.sleep(1.5)  # the gate settles on the still picture
            seen.clear()
            switched["at"] = None
            camera.first_new = None
            switched["at"] = time.monotonic()
            camera.images = scenes[(i + 1) % 2]  # the picture changes now
            if not seen.wait(5.0):
                delays.append(float("nan"))
            invokes.append(pipeline.stats()["invoke_ms"])
    finally:
        pipeline.stop()
    frame_ms = 1000.0 / CAMERA_FPS
    invoke_ms = statistics.median(invokes)
    valid = [d for d in delays if d == d]
    median = statistics.median(valid) if valid else float("nan")
    return {
        "changes": changes,
        "delay_ms_median": round(median, 1),
        "delay_ms_max": round(max(valid), 1) if valid else None,
        "missed": len(delays) - len(valid),
        "frame_ms": round(frame_ms, 1),
        "invoke_ms": round(invoke_ms, 1),
        "target_ms": round(frame_ms + invoke_ms, 1),
    }


def recorder_cost(classifier, seconds: float, rounds: int) -> dict:
    """Inference FPS on the unpaced demo video with the event recorder off and on."""
    from edge_app.live.pipeline import Pipeline
    from edge_app.service.clips import probe_codec
    from edge_app.service.event_store import EventStore
    from edge_app.service.events import Watch
    from edge_app.service.recorder import EventRecorder
    from edge_app.sources import make_source

    watches = [
        Watch(name, pattern, 0.4, 3, 1.0)
        for name, pattern in (
            ("parrot", "macaw"),
            ("hotdog", "hotdog"),
            ("dragonfly", "dragonfly"),
            ("bird", "chickadee"),
            ("cat", "cat"),
        )
    ]
    codec = probe_codec("auto")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    events = 0
    with tempfile.TemporaryDirectory(prefix="edge-app-events-bench-") as folder:
        for mode in ["off", "on"] * rounds + ["off"]:  # off, on, off, ... off
            source = make_source(str(VIDEO), pace=False, loop=True)
            pipeline = Pipeline(source, classifier)
            recorder = None
            if mode == "on":
                recorder = EventRecorder(watches, EventStore(Path(folder)), codec)
                pipeline.add_listener(recorder.submit)
            pipeline.start()
            time.sleep(1.0)
            first, t0 = pipeline.stats()["results"], time.monotonic()
            time.sleep(seconds)
            rates[mode].append((pipeline.stats()["results"] - first) / (time.monotonic() - t0))
            pipeline.stop()
            if recorder is not None:
                recorder.close(5.0)
                events += recorder.started
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    # Each "on" round against the mean of the "off" rounds on either side of it (drift on
    # a shared machine largely cancels), then the median of those.
    drops = []
    for i, rate in enumerate(rates["on"]):
        around = rates["off"][i : i + 2]
        drops.append(100.0 * (1 - rate / statistics.mean(around)))
    return {
        "seconds": seconds,
        "rounds": rounds,
        "codec": codec.name,
        "fps_off": round(off, 1),
        "fps_on": round(on, 1),
        "drop_pct": round(statistics.median(drops), 1),
        "drop_pct_rounds": [round(d, 1) for d in drops],
        "fps_off_rounds": [round(r, 1) for r in rates["off"]],
        "fps_on_rounds": [round(r, 1) for r in rates["on"]],
        "events_recorded": events,
    }


def markdown(r: dict) -> str:
    cpu, delay, rec = r["cpu"], r["delay"], r["recorder"]

    def verdict(ok: bool, miss: str) -> str:
        return "**met**" if ok else f"**missed** ({miss})"

    return "\n".join(
        [
            f"A 30 FPS camera (frames in memory, sensor-like noise) watching a still photo, "
            f"{cpu['rounds']} interleaved rounds of {cpu['seconds']:.0f} s per mode; one "
            "inference thread.",
            "",
            "| gate | CPU s per minute | results in a round |",
            "|---|---:|---:|",
            f"| off | {cpu['cpu_s_per_min_off']:.1f} | {statistics.median(cpu['results_off']):.0f} |",
            f"| motion | {cpu['cpu_s_per_min_motion']:.1f} "
            f"| {statistics.median(cpu['results_motion']):.0f} |",
            "",
            f"Gating uses {cpu['cpu_ratio']:.1f}x less CPU. Target at least "
            f"{TARGET_CPU_RATIO:.0f}x: "
            + verdict(cpu["cpu_ratio"] >= TARGET_CPU_RATIO, f"{cpu['cpu_ratio']:.1f}x"),
            "",
            f"Change to first result, {delay['changes']} picture changes under the gate: "
            f"median {delay['delay_ms_median']:.0f} ms, worst {delay['delay_ms_max']} ms "
            f"({delay['missed']} missed); one camera frame ({delay['frame_ms']:.0f} ms) plus "
            f"one invoke ({delay['invoke_ms']:.0f} ms) is {delay['target_ms']:.0f} ms: "
            + verdict(
                delay["delay_ms_median"] <= delay["target_ms"] and not delay["missed"],
                f"{delay['delay_ms_median']:.0f} ms",
            ),
            "",
            f"Event recorder on the demo video, unpaced, {rec['rounds']} interleaved rounds of "
            f"{rec['seconds']:.0f} s: {rec['fps_off']:.1f} FPS off, {rec['fps_on']:.1f} FPS on "
            f"({rec['events_recorded']} events recorded, {rec['codec']} clips); "
            f"{rec['drop_pct']:.1f} % lower (median over the rounds, each against the off "
            "rounds around it: "
            + ", ".join(f"{x:.1f} %" for x in rec["drop_pct_rounds"])
            + "; FPS off "
            + ", ".join(f"{x:.1f}" for x in rec["fps_off_rounds"])
            + ", on "
            + ", ".join(f"{x:.1f}" for x in rec["fps_on_rounds"])
            + f"). Target under {TARGET_RECORDER_DROP_PCT:.0f} %: "
            + verdict(rec["drop_pct"] < TARGET_RECORDER_DROP_PCT, f"{rec['drop_pct']:.1f} %"),
        ]
    )


def run(quick: bool = False) -> dict:
    """The benchmarks.run_all entry point."""
    classifier = _classifier()
    seconds, rounds = (4.0, 3) if quick else (15.0, 4)
    result = {
        "cpu": cpu_per_minute(classifier, seconds, rounds),
        "delay": change_delay(classifier, 6 if quick else 20),
        "recorder": recorder_cost(classifier, seconds, rounds),
    }
    result["markdown"] = markdown(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = run(args.quick)
    print(json.dumps(result, indent=2, default=str) if args.json else result["markdown"])


if __name__ == "__main__":
    main()

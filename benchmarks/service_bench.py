"""Service: do many MJPEG viewers slow inference down?

The service runs in this process on the demo video, unpaced (every frame classified as
fast as the machine allows), so any CPU the viewers take shows up as lost inference FPS;
a paced camera at 30 FPS would hide it on a fast machine. Phases alternate idle, loaded,
idle (``rounds`` times) and the loaded rate is compared with the mean of the idle phases
around it, so drift from other work on a shared machine largely cancels.

Viewers are loopback sockets reading /stream.mjpg, bounded in number and time.

    python -m benchmarks.service_bench [--viewers 20] [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_APP_SHARED", ROOT.parent / "shared"))
VIDEO = SHARED / "videos" / "demo_640x480.mp4"
MODEL = SHARED / "models" / "mobilenet_v1_1.0_224_int8.tflite"
TARGET_DROP_PCT = 10.0


class Viewer(threading.Thread):
    """Reads /stream.mjpg until ``deadline``, counting JPEG parts and bytes."""

    def __init__(self, port: int, deadline: float):
        super().__init__(daemon=True)
        self.port = port
        self.deadline = deadline
        self.frames = 0
        self.bytes = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                conn.sendall(
                    f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
                )
                tail = b""
                while time.monotonic() < self.deadline:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    if not self.bytes and chunk.split(b" ", 2)[1:2] != [b"200"]:
                        # A refused viewer (Host check, client cap) must not pass for one
                        # that costs nothing.
                        self.error = chunk.split(b"\r\n", 1)[0].decode("latin-1")
                        break
                    self.bytes += len(chunk)
                    data = tail + chunk
                    self.frames += data.count(b"Content-Type: image/jpeg")
                    tail = data[-40:]
        except OSError as exc:
            self.error = str(exc)


def _results(service) -> int:
    return service.pipeline.stats()["results"]


def _rate(service, seconds: float) -> float:
    start_n, start_t = _results(service), time.monotonic()
    time.sleep(seconds)
    return (_results(service) - start_n) / (time.monotonic() - start_t)


def measure(
    viewers: int = 20,
    seconds: float = 10.0,
    rounds: int = 2,
    *,
    pace: bool = False,
    threads: int | None = None,
    video: Path = VIDEO,
    model: Path = MODEL,
) -> dict:
    """Inference FPS with no viewers and with ``viewers`` MJPEG viewers."""
    from edge_app.service.config import from_document
    from edge_app.service.notify import Notifier
    from edge_app.service.service import Service

    document = {
        "source": {"spec": str(video), "loop": True, "pace": pace},
        "model": {"model": str(model), "threads": threads or 0},
        "web": {"port": 0, "max_clients": max(32, viewers + 4)},
        "service": {"state_dir": "/tmp/edge-app-service-bench"},
    }
    service = Service(from_document(document), notifier=Notifier({}))
    service.start()
    try:
        port = service.web.port
        deadline = time.monotonic() + 60
        while _results(service) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # warm-up
        idle, loaded, drops, frames, megabits, errors = [], [], [], [], [], []
        before = _rate(service, seconds)
        idle.append(before)
        for _ in range(rounds):
            jpeg_start = service.clean_feed.encoded  # the page's stream: no overlay
            started = time.monotonic()
            group = [Viewer(port, started + seconds + 1.0) for _ in range(viewers)]
            for viewer in group:
                viewer.start()
            time.sleep(0.5)  # all connected and streaming
            rate = _rate(service, seconds)
            for viewer in group:
                viewer.join(seconds + 5)
            elapsed = time.monotonic() - started
            after = _rate(service, seconds)
            idle.append(after)
            loaded.append(rate)
            drops.append(100.0 * (1.0 - rate / ((before + after) / 2)))
            frames.append(statistics.mean(v.frames for v in group) / elapsed)
            megabits.append(sum(v.bytes for v in group) * 8 / elapsed / 1e6)
            errors += [v.error for v in group if v.error]
            jpeg_fps = (service.clean_feed.encoded - jpeg_start) / elapsed
            before = after
    finally:
        service.request_stop()
        service.shutdown()
    drop = statistics.mean(drops)
    return {
        "viewers": viewers,
        "seconds": seconds,
        "rounds": rounds,
        "paced": pace,
        "threads": threads or "all cores",
        "idle_fps": round(statistics.mean(idle), 2),
        "loaded_fps": round(statistics.mean(loaded), 2),
        "drop_pct": round(drop, 2),
        "drop_pct_per_round": [round(d, 2) for d in drops],
        "viewer_fps": round(statistics.mean(frames), 2),
        "jpeg_encoded_fps": round(jpeg_fps, 2),
        "stream_mbit_s": round(statistics.mean(megabits), 1),
        "viewer_errors": errors[:3],
        "target_met": drop < TARGET_DROP_PCT,
    }


def markdown(r: dict) -> str:
    verdict = "**met**" if r["target_met"] else f"**missed** ({r['drop_pct']:.1f} %)"
    return "\n".join(
        [
            f"The service on the demo video, unpaced (inference as fast as it goes), "
            f"{r['rounds']} rounds of {r['seconds']:.0f} s with {r['viewers']} MJPEG viewers "
            "on loopback, each between idle phases.",
            "",
            "| | inference FPS |",
            "|---|---:|",
            f"| no viewers | {r['idle_fps']:.1f} |",
            f"| {r['viewers']} viewers | {r['loaded_fps']:.1f} |",
            "",
            f"Drop {r['drop_pct']:.1f} % (per round: "
            + ", ".join(f"{d:.1f} %" for d in r["drop_pct_per_round"])
            + f"). Each viewer got {r['viewer_fps']:.1f} frames/s from one encoder running at "
            f"{r['jpeg_encoded_fps']:.1f} JPEG/s ({r['stream_mbit_s']:.0f} Mbit/s in all).",
            "",
            f"Target: under {TARGET_DROP_PCT:.0f} % lower: {verdict}",
        ]
    )


def run(quick: bool = False) -> dict:
    """The benchmarks.run_all entry point."""
    result = measure(20, 5.0 if quick else 10.0, 1 if quick else 2)
    result["markdown"] = markdown(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paced", action="store_true", help="play the video at 30 FPS")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="one round of 5 s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 5.0, 1
    if not 1 <= args.viewers <= 200:
        parser.error("--viewers must be from 1 to 200")
    result = measure(args.viewers, args.seconds, args.rounds, pace=args.paced, threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()

"""The int8 models edge-app derives on the device, beside TensorFlow's int8 and their uint8
sources: invoke rate at 1 and all threads, and top-1 on the ImageNet sample.

The derived models are made here exactly as `edge-app models fetch` makes them
(``int8_convert.convert`` with the packaged labels). Rates are measured interleaved, one
invoke of each model in turn (A, B, C, A, B, C, ...), so load from other processes hits every model alike; the
ratios' spread over rounds is the noise.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.core_bench import MODELS, SHARED, spread
from edge_app.batch.decode import decode_image
from edge_app.inference import int8_convert
from edge_app.inference.classifier import Classifier
from edge_app.inference.model_store import IMAGENET_LABELS
from edge_app.inference.runtime import default_threads

SAMPLE = SHARED / "images" / "imagenet-sample"
WIDTHS = ["1.0_224", "0.75_192", "0.5_160", "0.25_128"]


def _derive(source: Path, folder: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    conversion = int8_convert.convert(
        source.read_bytes(), labels=IMAGENET_LABELS.read_bytes(), labels_name=IMAGENET_LABELS.name
    )
    seconds = time.perf_counter() - start
    path = folder / source.name.replace("_quant", "_int8")
    path.write_bytes(conversion.model)
    return path, seconds


def _rates(models: dict[str, Path], threads: int, rounds: int, per_round: int) -> dict:
    """Invokes per second of each model (median over all invokes) and per-round medians."""
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    classifiers = {}
    for name, path in models.items():
        classifier = Classifier(path, threads=threads)
        classifier.preprocess(frame)
        for _ in range(3):
            classifier.invoke()
        classifiers[name] = classifier
    samples: dict[str, list[float]] = {name: [] for name in models}
    medians: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(per_round):  # one invoke of each in turn: load hits all alike
            for name, classifier in classifiers.items():
                times[name].append(classifier.invoke())
        for name in models:
            samples[name] += times[name]
            medians[name].append(float(np.median(times[name])))
    return {
        name: {"rate_per_s": 1000.0 / float(np.median(samples[name])), "round_ms": medians[name]}
        for name in models
    }


def _ratio(rates: dict, fast: str, slow: str) -> tuple[float, float]:
    per_round = [
        s / f for f, s in zip(rates[fast]["round_ms"], rates[slow]["round_ms"], strict=True)
    ]
    return float(np.median(per_round)), spread(per_round)


def _top1(models: dict[str, Path], images: list[tuple[int, Path]]) -> dict[str, float]:
    """Top-1 % on (class index, photo) pairs."""
    classifiers = {
        name: Classifier(path, threads=default_threads()) for name, path in models.items()
    }
    sizes = {c.input_size for c in classifiers.values()}
    hits = dict.fromkeys(models, 0)
    for truth, path in images:
        decoded = {size: decode_image(path, model_size=size).image for size in sizes}
        for name, classifier in classifiers.items():
            result = classifier.classify(decoded[classifier.input_size])
            hits[name] += int(result.top[0].index == truth)
    return {name: 100.0 * hits[name] / len(images) for name in models}


def run(quick: bool) -> dict:
    rounds, per_round = (3, 15) if quick else (5, 40)
    # Sorted by name, sample file k is class index k + 1 (see ../shared/README.md).
    all_images = [(k + 1, path) for k, path in enumerate(sorted(SAMPLE.iterdir()))]
    images = all_images[::5] if quick else all_images  # quick: every 5th photo, 200
    thread_set = sorted({1, default_threads()})
    result: dict = {"rounds": rounds, "invokes_per_round": per_round, "images": len(images)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        derived: dict[str, Path] = {}
        derive_s: dict[str, float] = {}
        for width in WIDTHS:
            derived[width], derive_s[width] = _derive(
                MODELS / f"mobilenet_v1_{width}_quant.tflite", folder
            )
        main = {
            "derived int8": derived["1.0_224"],
            "TensorFlow int8": MODELS / "mobilenet_v1_1.0_224_int8.tflite",
            "uint8 source": MODELS / "mobilenet_v1_1.0_224_quant.tflite",
        }
        main_rows = []
        for threads in thread_set:
            rates = _rates(main, threads, rounds, per_round)
            vs_tf, vs_tf_noise = _ratio(rates, "derived int8", "TensorFlow int8")
            vs_u8, vs_u8_noise = _ratio(rates, "derived int8", "uint8 source")
            main_rows.append(
                {
                    "threads": threads,
                    "rates": {n: round(r["rate_per_s"], 1) for n, r in rates.items()},
                    "derived_vs_tf": round(vs_tf, 3),
                    "derived_vs_tf_noise": round(vs_tf_noise, 3),
                    "derived_vs_uint8": round(vs_u8, 3),
                    "derived_vs_uint8_noise": round(vs_u8_noise, 3),
                }
            )
        top1_models = dict(main)
        for width in WIDTHS[1:]:
            top1_models[f"{width} int8"] = derived[width]
            top1_models[f"{width} uint8"] = MODELS / f"mobilenet_v1_{width}_quant.tflite"
        top1 = _top1(top1_models, images)
        width_rows = []
        for width in WIDTHS[1:]:
            pair = {
                "int8": derived[width],
                "uint8": MODELS / f"mobilenet_v1_{width}_quant.tflite",
            }
            for threads in thread_set:
                rates = _rates(pair, threads, rounds, per_round)
                speedup, noise = _ratio(rates, "int8", "uint8")
                width_rows.append(
                    {
                        "width": width,
                        "threads": threads,
                        "int8_per_s": round(rates["int8"]["rate_per_s"], 1),
                        "uint8_per_s": round(rates["uint8"]["rate_per_s"], 1),
                        "int8_vs_uint8": round(speedup, 3),
                        "noise": round(noise, 3),
                        "top1_int8": round(top1[f"{width} int8"], 1),
                        "top1_uint8": round(top1[f"{width} uint8"], 1),
                    }
                )
    result.update(
        main=main_rows,
        top1={name: round(top1[name], 1) for name in main},
        widths=width_rows,
        derive_seconds={w: round(s, 2) for w, s in derive_s.items()},
    )
    result["markdown"] = "\n".join(render(result))
    return result


def render(r: dict) -> list[str]:
    out = [
        "MobileNet V1 1.0/224: the full-int8 model edge-app derives on the device from the "
        "uint8 QAT model, TensorFlow's int8 (post-training, calibrated) and the uint8 source; "
        f"XNNPACK on, {r['rounds']} interleaved rounds of {r['invokes_per_round']} invokes; "
        f"top-1 on {r['images']} photos of the ImageNet sample.",
        "",
        "| threads | derived int8 /s | TensorFlow int8 /s | uint8 source /s "
        "| derived vs TF | derived vs uint8 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["main"]:
        rates = row["rates"]
        out.append(
            f"| {row['threads']} | {rates['derived int8']:.1f} | {rates['TensorFlow int8']:.1f} "
            f"| {rates['uint8 source']:.1f} | {row['derived_vs_tf']:.2f}x "
            f"(±{100 * row['derived_vs_tf_noise']:.0f} %) | {row['derived_vs_uint8']:.2f}x "
            f"(±{100 * row['derived_vs_uint8_noise']:.0f} %) |"
        )
    t = r["top1"]
    out += [
        "",
        f"Top-1: derived int8 {t['derived int8']:.1f} %, TensorFlow int8 "
        f"{t['TensorFlow int8']:.1f} %, uint8 source {t['uint8 source']:.1f} %. "
        "Deriving took "
        + ", ".join(f"{w} {s:.2f} s" for w, s in r["derive_seconds"].items())
        + ".",
        "",
        "Width variants, derived int8 against their uint8 source:",
        "",
        "| model | threads | int8 /s | uint8 /s | int8 vs uint8 | top-1 int8 % | top-1 uint8 % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["widths"]:
        out.append(
            f"| {row['width']} | {row['threads']} | {row['int8_per_s']:.1f} | "
            f"{row['uint8_per_s']:.1f} | {row['int8_vs_uint8']:.2f}x (±{100 * row['noise']:.0f} %) "
            f"| {row['top1_int8']:.1f} | {row['top1_uint8']:.1f} |"
        )
    return out

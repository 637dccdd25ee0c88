"""`learn`: the custom model's invoke rate against the base's, and `learn` against
`classify` on the same 100 photos; all side by side, interleaved, in one run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.core_bench import SHARED, model_path, spread
from edge_app.inference.runtime import default_threads

CLASSES = 10
PER_CLASS = 10  # 100 photos


def _photo_folder(root: Path) -> Path:
    """100 photos of the ImageNet sample in 10 class folders (symlinks)."""
    photos = sorted((SHARED / "images" / "imagenet-sample").glob("*.JPEG"))
    step = len(photos) // CLASSES
    for c in range(CLASSES):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for photo in photos[c * step : c * step + PER_CLASS]:
            (folder / photo.name).symlink_to(photo)
    return root


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[3]} failed: {proc.stderr.strip()[-400:]}")
    return elapsed


def _invoke_rates(paths: dict[str, Path], rounds: int, per_round: int) -> dict[str, list[float]]:
    from edge_app.inference.runtime import select_runtime

    runtime = select_runtime()
    threads = default_threads()
    interpreters = {}
    for name, path in paths.items():
        interpreter = runtime.make_interpreter(path, num_threads=threads)
        detail = interpreter.get_input_details()[0]
        frame = np.random.default_rng(0).integers(0, 256, detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], frame)
        interpreter.invoke()  # warm
        interpreters[name] = interpreter
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, interpreter in interpreters.items():  # interleaved within each round
            start = time.perf_counter()
            for _ in range(per_round):
                interpreter.invoke()
            rates[name].append(per_round / (time.perf_counter() - start))
    return rates


def run(quick: bool) -> dict:
    saved = os.environ.get("EDGE_APP_MODELS_DIR")
    try:
        return _run(quick)
    finally:  # the scratch models folder was for this section only
        if saved is None:
            os.environ.pop("EDGE_APP_MODELS_DIR", None)
        else:
            os.environ["EDGE_APP_MODELS_DIR"] = saved


def _run(quick: bool) -> dict:
    rounds, per_round, learn_rounds = (3, 15, 1) if quick else (7, 40, 3)
    base = model_path("int8")
    python = [sys.executable, "-m", "edge_app"]
    with tempfile.TemporaryDirectory(prefix="learn-bench-") as tmp:
        folder = _photo_folder(Path(tmp) / "photos")
        custom = Path(tmp) / "custom.tflite"
        # The embedding model goes to a scratch models folder, made by the first learn.
        os.environ["EDGE_APP_MODELS_DIR"] = str(Path(tmp) / "models")
        learn_cmd = [*python, "learn", str(folder), "-m", str(base), "-o", str(custom)]
        classify_cmd = [
            *python,
            "classify",
            str(folder),
            "-m",
            str(base),
            "-o",
            str(Path(tmp) / "c.jsonl"),
        ]
        _wall(learn_cmd)  # makes the embedding model once, as a first run on a device does
        learn_s, classify_s = [], []
        for _ in range(learn_rounds):
            classify_s.append(_wall(classify_cmd))
            learn_s.append(_wall(learn_cmd))
        from edge_app.learn.embed import embedding_model_path

        embedding = embedding_model_path(base, base.read_bytes())
        rates = _invoke_rates(
            {"base": base, "custom": custom, "embedding": embedding}, rounds, per_round
        )
    ratios = {
        name: [r / b for r, b in zip(rates[name], rates["base"], strict=True)]
        for name in ("custom", "embedding")
    }
    median = {name: float(np.median(v)) for name, v in rates.items()}
    learn_ratio = [a / b for a, b in zip(learn_s, classify_s, strict=True)]
    result = {
        "invoke_rate_per_s": median,
        "custom_vs_base": float(np.median(ratios["custom"])),
        "custom_vs_base_noise": spread(ratios["custom"]),
        "embedding_vs_base": float(np.median(ratios["embedding"])),
        "embedding_vs_base_noise": spread(ratios["embedding"]),
        "learn_s": learn_s,
        "classify_s": classify_s,
        "learn_vs_classify": float(np.median(learn_ratio)),
        "rounds": rounds,
        "invokes_per_round": per_round,
    }
    r = result
    result["markdown"] = "\n".join(
        [
            f"Invoke rate, {default_threads()} threads, {rounds} interleaved rounds of "
            f"{per_round} invokes (median):",
            "",
            "| model | invokes/s | vs base |",
            "|---|---|---|",
            f"| base int8 | {median['base']:.1f} | 1.00 |",
            f"| learned (10 classes) | {median['custom']:.1f} | {r['custom_vs_base']:.2f} "
            f"+/- {r['custom_vs_base_noise']:.2f} |",
            f"| embedding (scores + pooled feature) | {median['embedding']:.1f} | "
            f"{r['embedding_vs_base']:.2f} +/- {r['embedding_vs_base_noise']:.2f} |",
            "",
            f"`learn` vs `classify` on the same {CLASSES * PER_CLASS} photos (whole command, "
            f"{learn_rounds} interleaved round(s)): learn {np.median(learn_s):.1f} s, classify "
            f"{np.median(classify_s):.1f} s, ratio {r['learn_vs_classify']:.2f} (target <= 1.5: "
            + ("met" if r["learn_vs_classify"] <= 1.5 else "missed")
            + ").",
        ]
    )
    return result

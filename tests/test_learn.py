"""`edge-app learn` as a user runs it: real photos, real video frames, real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.inference.classifier import Classifier
from edge_app.inference.model_report import xnnpack_coverage
from edge_app.inference.runtime import select_runtime
from edge_app.inference.tflite_meta import embedded_files, read_model_metadata
from edge_app.learn.surgery import find_head, read_model, with_embedding_output

ROOT = Path(__file__).resolve().parent.parent

# Broad classes of the 1,000-image sample, by ImageNet class index (file k is class k).
VEHICLES = [407, 436, 444, 466, 468, 511, 547, 555, 565, 569, 603, 609, 627, 654, 656, 661,
            665, 670, 671, 675, 705, 717, 734, 751, 757, 779, 817, 820, 829, 864, 867, 874, 880]  # fmt: skip
GROUPS = {
    "dog": list(range(151, 269)),
    "bird": [*range(7, 25), *range(80, 101), *range(127, 147)],
    "insect": list(range(300, 327)),
    "food": list(range(924, 970)),
    "vehicle": VEHICLES,
}


@pytest.fixture(scope="module", autouse=True)
def scratch_models_dir(tmp_path_factory):
    """Embedding models go to a scratch models folder (this module only), never beside
    the shared ones nor into the checkout."""
    folder = tmp_path_factory.getbasetemp() / "learn-models"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_APP_MODELS_DIR", str(folder))
        yield folder


def edge_app(*args: str, timeout: float = 300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def group_folders(sample: Path, root: Path, per_class: int, seed: int = 0) -> dict[str, list[Path]]:
    """Train folders (symlinks) of ``per_class`` photos per group; returns held-out photos."""
    photos = sorted(sample.glob("*.JPEG"))
    rng = np.random.default_rng(seed)
    held_out = {}
    for name, indices in GROUPS.items():
        chosen = rng.permutation(indices)
        (root / name).mkdir(parents=True)
        for index in chosen[:per_class]:
            (root / name / photos[index].name).symlink_to(photos[index])
        held_out[name] = [photos[i] for i in chosen[per_class:]]
    return held_out


def balanced_accuracy(classifier: Classifier, held_out: dict[str, list[Path]]) -> float:
    from edge_app.batch.decode import decode_image

    recalls = []
    for name, photos in held_out.items():
        right = 0
        for photo in photos:
            image = decode_image(photo, model_size=classifier.input_size).image
            right += classifier.classify(image).top[0].label == name
        recalls.append(right / len(photos))
    return float(np.mean(recalls))


# -- 1. embeddings ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int8_model", "uint8_model"])
def test_embedding_model_gives_the_same_scores_and_keeps_xnnpack(kind, request):
    base_bytes = Path(request.getfixturevalue(kind)).read_bytes()
    derived = with_embedding_output(base_bytes)
    runtime = select_runtime()
    base = runtime.make_interpreter(model_content=base_bytes, num_threads=1)
    emb = runtime.make_interpreter(model_content=derived, num_threads=1)
    outputs = emb.get_output_details()
    assert len(outputs) == 2
    assert list(outputs[1]["shape"]) == [1, 1, 1, 1024]
    frame = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3))
    for interpreter in (base, emb):
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], frame.astype(detail["dtype"]))
        interpreter.invoke()
    scores = base.get_tensor(base.get_output_details()[0]["index"])
    assert np.array_equal(scores, emb.get_tensor(outputs[0]["index"]))
    assert emb.get_tensor(outputs[1]["index"]).any()
    base_cov, emb_cov = xnnpack_coverage(base), xnnpack_coverage(emb)
    assert emb_cov.delegated_nodes == base_cov.delegated_nodes > 0
    assert emb_cov.delegated_mac_share == base_cov.delegated_mac_share == 1.0


def test_embedding_model_is_made_once_in_the_models_folder(int8_model, scratch_models_dir):
    from edge_app.learn.embed import Embedder

    first = Embedder(int8_model, threads=1)
    made = first.embedding_path
    assert made.parent == scratch_models_dir and made.is_file()
    stamp = made.stat().st_mtime_ns
    assert Embedder(int8_model, threads=1).embedding_path == made
    assert made.stat().st_mtime_ns == stamp
    assert not list(Path(int8_model).parent.glob("*.embedding.tflite"))


# -- 2./3. learn from photos; the result is an ordinary classifier ------------------------


@pytest.fixture(scope="module")
def groups_model(tmp_path_factory, imagenet_sample, int8_model, scratch_models_dir):
    root = tmp_path_factory.mktemp("groups")
    held_out = group_folders(imagenet_sample, root / "train", per_class=10)
    out = root / "groups.tflite"
    proc = edge_app("learn", str(root / "train"), "-o", str(out), "--model", str(int8_model))
    return proc, out, held_out


def test_learn_reports_the_estimate_and_reaches_90_percent_on_held_out_photos(groups_model):
    proc, out, held_out = groups_model
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for name in GROUPS:
        assert f"{name}" in text and "10 photos" in text
    assert "5-fold cross-validation" in text and "balanced, +/-" in text
    assert "recall" in text
    accuracy = balanced_accuracy(Classifier(out, threads=2), held_out)
    print(f"held-out balanced accuracy, 10 photos per class: {100 * accuracy:.1f} %")
    assert accuracy >= 0.90


def test_learned_model_is_an_ordinary_int8_classifier(groups_model, int8_model):
    _, out, _ = groups_model
    data = out.read_bytes()
    from ai_edge_litert.interpreter import Interpreter

    plain = Interpreter(model_path=str(out))
    plain.allocate_tensors()
    (output,) = plain.get_output_details()
    assert list(output["shape"]) == [1, 5]
    assert output["dtype"] == np.int8 and output["quantization"] == (1 / 256, -128)
    model = read_model(data)
    head = find_head(model)
    weights = model.subgraphs[0].tensors[head.weights]
    bias = model.subgraphs[0].tensors[head.bias]
    pooled = model.subgraphs[0].tensors[head.pooled]
    assert weights.type == 9 and len(weights.quantization.scale) == 5  # int8 per channel
    assert not np.any(weights.quantization.zeroPoint)
    assert bias.type == 2 and np.allclose(
        bias.quantization.scale, pooled.quantization.scale[0] * weights.quantization.scale
    )
    meta = read_model_metadata(data)
    assert meta.labels_file == "labels.txt"
    assert embedded_files(data)["labels.txt"].decode().split() == sorted(GROUPS)
    classifier = Classifier(out, threads=1)
    assert (
        classifier.labels == sorted(GROUPS) and classifier.labels_source == "embedded: labels.txt"
    )
    assert "100 % of MACs" in classifier.xnnpack_summary()
    base = Classifier(int8_model, threads=1)
    assert classifier.xnnpack_summary() == base.xnnpack_summary()
    info = edge_app("models", "info", str(out))
    assert info.returncode == 0 and "labels:         5 from embedded: labels.txt" in info.stdout


def test_learned_model_works_in_classify_eval_and_bench(groups_model, test_images):
    _, out, _ = groups_model
    proc = edge_app("classify", str(test_images / "parrot.jpg"), "--model", str(out), "-f", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["top"][0]["label"] == "bird"
    bench = edge_app("bench", "--model", str(out), "--runs", "5", "--warmup", "1")
    assert bench.returncode == 0, bench.stderr


# -- the demo video: learned from a handful of frames, the rest labelled ------------------


def video_frames(video: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_learned_from_a_few_video_frames_labels_the_rest(
    tmp_path, demo_video, demo_segments, int8_model
):
    frames = video_frames(demo_video)
    taught = set()
    for first, last, photo in demo_segments:
        name = Path(photo).stem
        (tmp_path / "teach" / name).mkdir(parents=True)
        for index in np.linspace(first, last, 3).astype(int):  # 3 frames of each segment
            cv2.imwrite(str(tmp_path / "teach" / name / f"{index:03d}.jpg"), frames[index])
            taught.add(int(index))
    out = tmp_path / "video.tflite"
    proc = edge_app("learn", str(tmp_path / "teach"), "-o", str(out), "--model", str(int8_model))
    assert proc.returncode == 0, proc.stderr
    run = edge_app("run", "--source", str(demo_video), "--no-pace", "--headless", "--json",
                   "--model", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    truth = {i: Path(p).stem for first, last, p in demo_segments for i in range(first, last + 1)}
    records = [json.loads(line) for line in run.stdout.splitlines()]
    rest = [r for r in records if r["frame"] not in taught]
    right = [r for r in rest if r["top"][0]["label"] == truth[r["frame"]]]
    share = len(right) / len(rest)
    print(f"video: {len(right)}/{len(rest)} untaught frames right ({100 * share:.1f} %)")
    assert len(rest) == 420 - 21
    assert share >= 0.95, Counter((truth[r["frame"]], r["top"][0]["label"]) for r in rest)


# -- 4. refusals and re-learning -----------------------------------------------------------


def test_learn_refuses_folders_it_cannot_use(tmp_path, int8_model, test_images):
    missing = edge_app("learn", str(tmp_path / "nope"), "-o", str(tmp_path / "m.tflite"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"edge-app: error: learn folder not found: {tmp_path / 'nope'}"
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes((test_images / "parrot.jpg").read_bytes())
    flat = edge_app("learn", str(tmp_path / "flat"), "-o", str(tmp_path / "m.tflite"),
                    "--model", str(int8_model))  # fmt: skip
    assert flat.returncode == 2
    assert flat.stderr.strip().splitlines()[-1].startswith("edge-app: error: no class folders in")
    assert "Traceback" not in flat.stderr
    # one usable class, an unreadable photo, a non-image file and an empty class
    root = tmp_path / "mixed"
    for name in ("birds", "broken", "empty"):
        (root / name).mkdir(parents=True)
    (root / "birds" / "parrot.jpg").write_bytes((test_images / "parrot.jpg").read_bytes())
    (root / "broken" / "bad.jpg").write_bytes(b"not a jpeg at all")
    (root / "broken" / "notes.txt").write_text("hello")
    one = edge_app("learn", str(root), "-o", str(tmp_path / "m.tflite"), "--model", str(int8_model))
    assert one.returncode == 2
    lines = one.stderr.strip().splitlines()
    assert f"edge-app: error: {root / 'broken' / 'bad.jpg'}: not an image" in lines[0]
    assert lines[-1] == (
        "edge-app: error: learning needs at least 2 classes with photos (found 1), "
        "or one class with the unknown answer on"
    )
    assert not (tmp_path / "m.tflite").exists()
    # a second class: the model is written, the bad photo accounted for, exit 1
    (root / "cats").mkdir()
    (root / "cats" / "cat.bmp").write_bytes((test_images / "cat.bmp").read_bytes())
    two = edge_app("learn", str(root), "-o", str(tmp_path / "m.tflite"), "--model", str(int8_model))
    assert two.returncode == 1, two.stderr
    assert two.stderr.count("edge-app: error:") == 1 and "bad.jpg" in two.stderr
    assert "accuracy: not estimated" in two.stdout and "single photo" in two.stdout
    assert "empty" in two.stdout and "0 usable photos" in two.stdout
    assert "1 file(s) could not be used" in two.stdout
    assert "skipped 1 files that are not images" in two.stdout
    assert Classifier(tmp_path / "m.tflite", threads=1).labels == ["birds", "cats"]


def test_relearning_adds_a_class_without_decoding_old_photos(tmp_path, imagenet_sample, int8_model):
    held_out = group_folders(imagenet_sample, tmp_path / "all", per_class=8, seed=1)
    first = tmp_path / "first"
    for name in ("dog", "bird"):
        (first / name).mkdir(parents=True)
        for photo in (tmp_path / "all" / name).iterdir():
            (first / name / photo.name).symlink_to(photo.resolve())
    model = tmp_path / "mine.tflite"
    proc = edge_app("learn", str(first), "-o", str(model), "--model", str(int8_model))
    assert proc.returncode == 0, proc.stderr
    assert Classifier(model, threads=1).labels == ["bird", "dog"]
    # the same folder plus a new class, learned onto the model itself
    (first / "vehicle").mkdir()
    for photo in (tmp_path / "all" / "vehicle").iterdir():
        (first / "vehicle" / photo.name).symlink_to(photo.resolve())
    again = edge_app("learn", str(first), "--from", str(model), "-o", str(model))
    assert again.returncode == 0, again.stderr
    assert "8 new, 16 already in the --from model" in again.stdout
    classifier = Classifier(model, threads=1)
    assert classifier.labels == ["bird", "dog", "vehicle"]
    subset = {k: held_out[k][:15] for k in ("bird", "dog", "vehicle")}
    assert balanced_accuracy(classifier, subset) >= 0.8
    not_learned = edge_app("learn", str(first), "--from", str(int8_model), "-o", str(model))
    assert not_learned.returncode == 2
    assert "was not made by `edge-app learn`" in not_learned.stderr


def test_unknown_and_keep_imagenet_options(tmp_path, imagenet_sample, int8_model, test_images):
    group_folders(imagenet_sample, tmp_path / "train", per_class=6, seed=2)
    unknown = tmp_path / "unknown.tflite"
    proc = edge_app("learn", str(tmp_path / "train"), "-o", str(unknown), "--unknown",
                    "--model", str(int8_model))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "'unknown' is answered" in proc.stdout
    assert Classifier(unknown, threads=1).labels == [*sorted(GROUPS), "unknown"]
    keep = tmp_path / "keep.tflite"
    proc = edge_app("learn", str(tmp_path / "train"), "-o", str(keep), "--keep-imagenet",
                    "--model", str(int8_model))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    kept = Classifier(keep, threads=1)
    base = Classifier(int8_model, threads=1)
    assert kept.labels == [*base.labels, *sorted(GROUPS)]
    # the base classes still answer where the new ones do not claim the photo
    image = cv2.imread(str(test_images / "parrot.jpg"))
    assert {p.label for p in kept.classify(image).top[:2]} & {"macaw", "bird"}

"""Embeddings: the base classifier's pooled feature, read in the same invoke as the scores.

The derived model (base + pooled feature as a second output, see ``surgery``) is made
once and stored beside the base model as ``<stem>.embedding.tflite`` (or, when that
folder is read-only, in the edge-app cache). Frames reach it through the classifier's
own preprocessing, so learned classes see exactly the pixels ``classify`` sees.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.errors import EdgeAppError, ModelError
from edge_app.learn.surgery import with_embedding_output

log = logging.getLogger(__name__)

EMBEDDING_SUFFIX = ".embedding.tflite"
# the views embed_variants knows: as decoded, mirrored, zoomed into two corners (cheap
# and label-preserving for nearly every class a user teaches)
VARIANTS = ("original", "flip", "crop_top_left", "crop_bottom_right")


def _fingerprint(model_bytes: bytes) -> str:
    return hashlib.sha256(model_bytes).hexdigest()[:12]


def embedding_model_path(base_path: Path, base_bytes: bytes) -> Path:
    """Where the embedding model for ``base_path`` lives, made on first use.

    It is kept in the models folder (beside the fetched models; a folder given with
    --model, such as a read-only shared one, is never written to), named after the
    base model and a hash of its bytes, so a changed base model gets a new one.
    """
    from edge_app.inference.model_store import models_dir

    name = f"{base_path.stem}.{_fingerprint(base_bytes)}{EMBEDDING_SUFFIX}"
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-app"
    candidates = [models_dir() / name, fallback / "models" / name]
    for target in candidates:
        if target.is_file():
            return target
    derived = with_embedding_output(base_bytes)
    for target in candidates:
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(derived)
            os.replace(tmp, target)  # atomic: a concurrent maker writes the same bytes
        except OSError as exc:
            log.debug("cannot store the embedding model at %s: %s", target, exc)
            tmp.unlink(missing_ok=True)
            continue
        log.info("made the embedding model %s", target)
        return target
    raise ModelError(
        f"cannot store the embedding model in {candidates[0].parent} or {candidates[1].parent}"
    )


class Embedder:
    """The base classifier with its embedding model: one invoke -> scores + embedding.

    It is a ``Classifier`` of the base model (same spec, labels, preprocessing) whose
    interpreter is the derived two-output one; tensor indices are unchanged by the
    surgery, so the classifier's own preprocess/invoke/scores work on it as before.
    """

    def __init__(
        self,
        model="mobilenet_v1_1.0_224_int8",
        *,
        runtime="auto",
        threads=None,
        crop="central",
        xnnpack: bool = True,
        store: bool = True,
    ):
        from edge_app.inference.classifier import Classifier

        # The base classifier gives spec, labels and preprocessing; built without
        # XNNPACK, its own interpreter costs no weight packing and is replaced at once.
        self.classifier = Classifier(model, runtime=runtime, threads=1, crop=crop, xnnpack=False)
        base_bytes = self.classifier.model_path.read_bytes()
        if store:  # made once, kept in the models folder
            self.embedding_path = embedding_model_path(self.classifier.model_path, base_bytes)
            derived = self.embedding_path.read_bytes()
        else:  # e.g. a learned model's body: derived in memory (~0.1 s), nothing stored
            self.embedding_path = None
            derived = with_embedding_output(base_bytes)
        from edge_app.inference.runtime import default_threads

        self.classifier.threads = threads or default_threads()
        self.classifier.xnnpack = xnnpack
        interpreter = self.classifier.runtime.make_interpreter(
            model_content=derived,
            num_threads=self.classifier.threads,
            xnnpack=xnnpack,
        )
        outputs = interpreter.get_output_details()
        if len(outputs) != 2:
            raise ModelError(f"the embedding model of {model} does not have 2 outputs")
        self.classifier.interpreter = interpreter
        feature = outputs[1]
        self._feature_index = int(feature["index"])
        scale, zero = feature["quantization"]
        self._quantized = feature["dtype"] != np.float32
        self._scale, self._zero = np.float32(scale or 1.0), np.float32(zero)
        self.feature_size = int(np.prod(feature["shape"]))

    @property
    def input_size(self) -> tuple[int, int]:
        return self.classifier.input_size

    @property
    def crop(self) -> str:
        return self.classifier.crop

    def embedding(self) -> np.ndarray:
        """The pooled feature of the last invoke, dequantised (float32 [features])."""
        raw = self.classifier.interpreter.tensor(self._feature_index)().reshape(-1)
        if not self._quantized:
            return raw.copy()
        return (raw.astype(np.float32) - self._zero) * self._scale

    def embed(self, bgr: np.ndarray) -> np.ndarray:
        self.classifier.preprocess(bgr)
        self.classifier.invoke()
        return self.embedding()

    def embed_variants(self, bgr: np.ndarray, variants=VARIANTS) -> np.ndarray:
        """Embeddings [len(variants), features] of the frame and its cheap augmentations."""
        import cv2

        rows = []
        for variant in variants:
            if variant == "original":
                image = bgr
            elif variant == "flip":
                image = cv2.flip(bgr, 1)
            elif variant in _CORNERS:
                image = _corner_crop(bgr, *_CORNERS[variant])
            else:
                raise ValueError(f"unknown augmentation {variant!r}")
            rows.append(self.embed(image))
        return np.stack(rows)


# A zoomed view (this share of each side) from two opposite corners: what a camera
# framed a little differently would see.
CROP_SHARE = 0.8
_CORNERS = {"crop_top_left": (0, 0), "crop_bottom_right": (1, 1)}


def _corner_crop(bgr: np.ndarray, along_y: int, along_x: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    ch, cw = max(1, int(h * CROP_SHARE)), max(1, int(w * CROP_SHARE))
    top, left = (h - ch) * along_y, (w - cw) * along_x
    return bgr[top : top + ch, left : left + cw]


# -- many files, in worker processes like classify --------------------------------------


@dataclass(frozen=True)
class Embedded:
    path: str
    vectors: np.ndarray | None  # [variants, features]
    error: str | None = None


_worker: dict = {}


def _init_worker(embedder_kwargs: dict, variants: tuple[str, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    import cv2

    cv2.setNumThreads(1)
    try:
        _worker["embedder"] = Embedder(**embedder_kwargs)
    except EdgeAppError as exc:
        _worker["error"] = f"worker could not load the model: {exc.message}"
    _worker["variants"] = variants


def embed_file(path: str, embedder: Embedder | None = None, variants=None) -> Embedded:
    from edge_app.batch.decode import decode_image

    embedder = embedder or _worker.get("embedder")
    variants = variants or _worker.get("variants", VARIANTS)
    if embedder is None:
        return Embedded(path, None, _worker.get("error", "no model"))
    try:
        decoded = decode_image(path, model_size=embedder.input_size, crop=embedder.crop)
        return Embedded(path, embedder.embed_variants(decoded.image, variants))
    except EdgeAppError as exc:
        return Embedded(path, None, exc.message)
    except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
        return Embedded(path, None, f"{type(exc).__name__}: {exc}")


def embed_files(
    paths: list[str],
    embedder_kwargs: dict,
    workers: int,
    variants=VARIANTS,
    embedder: Embedder | None = None,
) -> Iterator[Embedded]:
    """One ``Embedded`` per path, in order; worker processes as ``classify`` uses."""
    variants = tuple(variants)
    if workers <= 1 or len(paths) <= 1:
        embedder = embedder or Embedder(**embedder_kwargs)
        for path in paths:
            yield embed_file(path, embedder, variants)
        return
    context = multiprocessing.get_context("fork")
    pool = context.Pool(workers, _init_worker, (embedder_kwargs, variants))
    try:
        chunksize = max(1, min(8, len(paths) // (workers * 4)))
        yield from pool.imap(embed_file, paths, chunksize=chunksize)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()

"""Learning custom classes from a folder: DIR/<class>/<photos> -> a TFLite classifier.

The steps, each its own seam: scan the folder (every file accounted for), embed the
photos through the classify path (decode, the classifier's crop, one invoke each, in
worker processes), cross-validate the head for an honest estimate, train it on all
photos, calibrate "unknown", export (``export.build_model``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.errors import ConfigError, ModelError
from edge_app.inference.model import read_model_file
from edge_app.learn import head as heads
from edge_app.learn.export import LearnState, build_model
from edge_app.learn.surgery import find_head, head_parameters, read_model

# Augmentation (mirror, two zoomed corner views) quadruples the invokes. Measured on
# ImageNet groups it adds about 1 point of accuracy at 3-5 photos per class and nothing
# at 10 (the zoomed views give most of it), so by default only sets of up to this many
# new photos get it (--augment/--no-augment force it).
AUGMENT_UP_TO = 32
AUGMENTED = ("original", "flip", "crop_top_left", "crop_bottom_right")
# Fewer photos than this in a class: the accuracy estimate is too rough to trust.
FEW_PHOTOS = 5


@dataclass(frozen=True)
class Problem:
    path: str
    message: str


@dataclass
class FolderScan:
    classes: list[str]
    photos: list[tuple[str, str]]  # (path, class)
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0  # non-image files (by suffix), as classify counts them


def scan_folder(root: Path) -> FolderScan:
    """Class folders and their photos. Files outside a class folder are problems; a
    missing root or one without class folders is a usage error."""
    from edge_app.batch.workers import discover

    root = Path(root)
    if not root.exists():
        raise ConfigError(f"learn folder not found: {root}")
    if not root.is_dir():
        raise ConfigError(f"learn needs a folder with one sub-folder per class, not a file: {root}")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise ConfigError(f"cannot list {root}: {exc.strerror or exc}") from exc
    scan = FolderScan([], [])
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            scan.classes.append(entry.name)
            items, skipped = discover([entry.path], recursive=True)
            scan.skipped += skipped
            for item in items:
                if item.error:
                    scan.problems.append(Problem(item.path, item.error))
                else:
                    scan.photos.append((item.path, entry.name))
        else:
            scan.problems.append(
                Problem(entry.path, f"not in a class folder (put photos in {root}/<class>/)")
            )
    if not scan.classes:
        raise ConfigError(
            f"no class folders in {root}: make one sub-folder per class (its name is the "
            "label) and put that class's photos in it"
        )
    return scan


def photo_key(path: str, root: Path, class_name: str) -> str:
    """Identifies a photo across runs: class, path inside the class folder, size."""
    try:
        size = os.stat(path).st_size
    except OSError:
        size = -1
    inside = os.path.relpath(path, root / class_name)
    return f"{class_name}/{inside}|{size}"


@contextlib.contextmanager
def _no_progress(label: str, total: int):
    yield lambda n=1: None


Progress = Callable[[str, int], contextlib.AbstractContextManager]


@dataclass
class LearnReport:
    output: Path
    classes: list[str]
    counts: list[int]  # photos per class (all, old and new)
    new_photos: int
    reused_photos: int
    problems: list[Problem]
    skipped: int
    cv: heads.CrossValidation | None
    unknown_logit: float | None
    temperature: float
    augmented: bool
    keep_imagenet: bool
    seconds: float
    empty_classes: list[str] = field(default_factory=list)

    @property
    def few_photos(self) -> list[str]:
        return [c for c, n in zip(self.classes, self.counts, strict=True) if n < FEW_PHOTOS]


def learn(
    root: Path,
    output: Path,
    *,
    model: str = "mobilenet_v1_1.0_224_int8",
    from_model: Path | None = None,
    keep_imagenet: bool = False,
    unknown: bool | None = None,
    augment: bool | None = None,
    workers: int | None = None,
    threads: int | None = None,
    runtime: str = "auto",
    crop: str = "central",
    progress: Progress = _no_progress,
    on_problem: Callable[[Problem], None] | None = None,
) -> LearnReport:
    from threadpoolctl import threadpool_limits

    # The head's matrices are small: one BLAS thread is the fastest, and leaves the
    # other cores to inference (a service trains beside its live pipeline).
    with threadpool_limits(limits=1):
        return _learn(
            root,
            output,
            model=model,
            from_model=from_model,
            keep_imagenet=keep_imagenet,
            unknown=unknown,
            augment=augment,
            workers=workers,
            threads=threads,
            runtime=runtime,
            crop=crop,
            progress=progress,
            on_problem=on_problem,
        )


def _learn(
    root,
    output,
    *,
    model,
    from_model,
    keep_imagenet,
    unknown,
    augment,
    workers,
    threads,
    runtime,
    crop,
    progress,
    on_problem,
) -> LearnReport:
    from edge_app.batch.workers import plan_workers
    from edge_app.inference.classifier import resolve_model_path
    from edge_app.learn.embed import Embedder, embed_files, embedding_model_path

    start = time.perf_counter()
    root = Path(root)
    scan = scan_folder(root)
    for problem in scan.problems:
        if on_problem:
            on_problem(problem)

    old: LearnState | None = None
    if from_model is not None:
        body_path = Path(from_model)
        body_bytes = read_model_file(body_path)
        old = LearnState.from_model(body_bytes, str(body_path))
        keep_imagenet = old.keep_imagenet
        unknown = old.unknown if unknown is None else unknown
    else:
        body_path = resolve_model_path(model)
        body_bytes = read_model_file(body_path)
    unknown = bool(unknown)
    body = read_model(body_bytes)
    find_head(body)  # a clear refusal before any photo is decoded

    class_names = list(old.class_names) if old else []
    class_names += [c for c in scan.classes if c not in class_names]
    known = set(old.photo_keys) if old else set()
    todo = []
    for path, class_name in scan.photos:
        key = photo_key(path, root, class_name)
        if key not in known:
            todo.append((path, class_name, key))
    augment = len(todo) <= AUGMENT_UP_TO if augment is None else augment
    variants = AUGMENTED if augment else ("original",)

    workers, threads = plan_workers(workers, threads)
    embedder_kwargs = {
        "model": str(body_path),
        "runtime": runtime,
        "threads": threads,
        "crop": crop,
    }
    if from_model is not None:
        embedder_kwargs["store"] = False  # a custom model's body: derive in memory
    if workers > 1:
        embedder = None
        if from_model is None:  # made (and stored) once here, before the workers fork
            embedding_model_path(Path(body_path), body_bytes)
    else:
        embedder = Embedder(**embedder_kwargs)
    mean, std = _normalization(body_bytes)

    rows, labels, keys, original = [], [], [], []
    new_ok = 0
    with progress("embedding", len(todo)) as advance:
        results = embed_files(
            [p for p, _, _ in todo],
            embedder_kwargs,
            workers,
            variants,
            embedder=embedder,
        )
        for (path, class_name, key), result in zip(todo, results, strict=True):
            advance(1)
            if result.vectors is None:
                problem = Problem(path, result.error or "cannot embed")
                scan.problems.append(problem)
                if on_problem:
                    on_problem(problem)
                continue
            new_ok += 1
            for v, vector in enumerate(result.vectors):
                rows.append(vector)
                labels.append(class_names.index(class_name))
                keys.append(key)
                original.append(v == 0)
    if old is not None:
        features = np.concatenate(
            [old.features, np.asarray(rows, np.float32).reshape(-1, old.features.shape[1])]
        )
        labels_all = np.concatenate([old.labels, np.asarray(labels, np.int64)])
        keys = [*old.photo_keys, *keys]
        original_all = np.concatenate([old.original, np.asarray(original, bool)])
    else:
        if not rows:
            raise ConfigError(
                f"no usable photos in {root}: every class folder is empty or unreadable"
            )
        features = np.asarray(rows, np.float32)
        labels_all = np.asarray(labels, np.int64)
        original_all = np.asarray(original, bool)

    # Classes without a single usable photo are dropped (and said so).
    counts_all = np.bincount(labels_all[original_all], minlength=len(class_names))
    empty = [c for c, n in zip(class_names, counts_all, strict=True) if n == 0]
    if empty:
        keep = [i for i, n in enumerate(counts_all) if n > 0]
        remap = {old_i: new_i for new_i, old_i in enumerate(keep)}
        mask = np.isin(labels_all, keep)
        features, labels_all, original_all = features[mask], labels_all[mask], original_all[mask]
        keys = [k for k, m in zip(keys, mask.tolist(), strict=True) if m]
        labels_all = np.array([remap[int(i)] for i in labels_all], np.int64)
        class_names = [class_names[i] for i in keep]
        counts_all = counts_all[keep]
    if len(class_names) < 2 and not (unknown or keep_imagenet):
        raise ConfigError(
            f"learning needs at least 2 classes with photos (found {len(class_names)}), "
            "or one class with the unknown answer on"
        )
    if not class_names:
        raise ConfigError(f"no class in {root} has a usable photo")

    base = None
    base_classes = 0
    if keep_imagenet:
        weights, bias = head_parameters(body)
        base_classes = old.base_classes if old else len(bias)
        base = heads.BaseHead(weights[:base_classes], bias[:base_classes])
        base_labels = _model_labels(Path(body_path), body_bytes, len(bias))[:base_classes]

    photo_ids = np.unique(keys, return_inverse=True)[1]
    classes = len(class_names)
    folds = heads.fold_count(counts_all.tolist()) if classes > 1 else 0
    cv = None
    if folds:
        with progress("cross-validating", folds) as advance:
            cv = heads.cross_validate(
                features,
                labels_all,
                photo_ids,
                classes,
                base=base,
                held_out=original_all,
                progress=advance,
            )
    with progress("training", heads.STEPS) as advance:
        head = heads.fit_head(features, labels_all, classes, base=base, progress=advance)
    temperature = 1.0 if base is not None else heads.calibrate_temperature(cv)
    head = heads.LinearHead(head.weights * temperature, head.bias * temperature)
    if cv is not None:
        cv.top_logit *= temperature
    unknown_logit = (
        heads.calibrate_unknown(cv, head, features) if unknown and base is None else None
    )
    state = LearnState(
        class_names=class_names,
        features=features,
        labels=labels_all,
        photo_keys=keys,
        original=original_all,
        keep_imagenet=keep_imagenet,
        unknown=unknown,
        base_name=old.base_name if old else Path(body_path).stem,
        base_classes=base_classes,
    )
    model_bytes = build_model(
        body,
        class_names,
        head,
        base=base,
        base_labels=base_labels if keep_imagenet else None,
        unknown_logit=unknown_logit,
        training_features=features,
        state=state,
        mean=mean,
        std=std,
    )
    _write_atomically(Path(output), model_bytes)
    return LearnReport(
        output=Path(output),
        classes=class_names,
        counts=counts_all.tolist(),
        new_photos=new_ok,
        reused_photos=len(scan.photos) - len(todo),
        problems=scan.problems,
        skipped=scan.skipped,
        cv=cv,
        unknown_logit=unknown_logit,
        temperature=temperature,
        augmented=augment,
        keep_imagenet=keep_imagenet,
        seconds=time.perf_counter() - start,
        empty_classes=empty,
    )


def _model_labels(path: Path, model_bytes: bytes, outputs: int) -> list[str]:
    from edge_app.inference.labels import load_labels

    return load_labels(path, model_bytes, outputs)[0]


def _normalization(model_bytes: bytes) -> tuple[list[float], list[float]]:
    from edge_app.inference.tflite_meta import read_model_metadata

    try:
        meta = read_model_metadata(model_bytes)
    except ModelError:
        meta = None
    norm = meta.input_normalization if meta else None
    if norm:
        return list(norm.mean), list(norm.std)
    return [127.5], [127.5]


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc

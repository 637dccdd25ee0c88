"""Classifying many image files: discovery, worker processes, ordered records.

Each worker process owns one interpreter (the runtime is not shareable across
processes); results come back in input order. A record is exactly one of
``{"path", "ok": true, "top", "inference_ms"}`` or ``{"path", "ok": false, "error"}``.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_app.batch.decode import IMAGE_SUFFIXES, decode_image
from edge_app.errors import EdgeAppError, WorkerError
from edge_app.inference.runtime import default_threads

GLOB_CHARS = set("*?[")
WATCH_S = 0.5  # how often the parent checks that no worker died while it waits
JOIN_S = 10.0  # workers given to exit once every record is in


@dataclass(frozen=True)
class Item:
    """One input to account for: a path to classify, or a problem found while listing."""

    path: str
    error: str | None = None


def discover(paths: Iterable[str], recursive: bool = True) -> tuple[list[Item], int]:
    """Expand files, folders and globs into items, in a stable order.

    Returns (items, skipped) where skipped counts files in folders whose suffix is not
    an image type. Explicitly named files are always included, whatever their suffix.
    """
    items: list[Item] = []
    skipped = 0
    paths = list(dict.fromkeys(paths))  # a path named twice is one input
    for arg in paths:
        if not os.path.lexists(arg) and GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                items.append(Item(arg, "no files match this pattern"))
            for match in matches:
                if os.path.isdir(match):
                    found, n = _walk(match, recursive)
                    items += found
                    skipped += n
                else:
                    items.append(Item(match))
        elif os.path.isdir(arg):
            found, n = _walk(arg, recursive)
            items += found
            skipped += n
        else:
            items.append(Item(arg))  # missing/unreadable files get their error when read
    seen: set[str] = set()
    unique = []
    for item in items:  # a file met twice (a folder and a glob) is one input
        if item.path not in seen:
            seen.add(item.path)
            unique.append(item)
    return unique, skipped


def _walk(root: str, recursive: bool) -> tuple[list[Item], int]:
    items: list[Item] = []
    skipped = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in list(dirs):
            full = os.path.join(folder, name)
            if os.path.islink(full):  # not followed: report loops so nothing is silent
                target = os.path.realpath(full)
                here = os.path.realpath(folder)
                if here == target or here.startswith(target + os.sep):
                    items.append(Item(full, "symlink loop (points to a folder above it)"))
        if not recursive:
            dirs.clear()
        for name in sorted(files):
            full = os.path.join(folder, name)
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(full))
            elif os.path.islink(full) and not os.path.exists(full):
                items.append(Item(full))  # broken link or loop: reported when read
            else:
                skipped += 1
    return items, skipped


# -- per-process classification ------------------------------------------------------------
_worker: dict = {}


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies (even by SIGKILL), so no
    orphan writes into a closed pipe and prints BrokenPipe tracebacks."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(classifier_kwargs: dict, decode_kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # The parent's handler (inherited by fork) would raise here: the pool ends workers
    # with SIGTERM, which must simply end them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _die_with_parent()
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own pool would contend
    from edge_app.inference.classifier import Classifier

    try:
        _worker["classifier"] = Classifier(**classifier_kwargs)
    except EdgeAppError as exc:
        _worker["error"] = f"worker could not load the model: {exc.message}"
    _worker["decode"] = decode_kwargs


def classify_item(item: Item, classifier=None, decode_kwargs: dict | None = None) -> dict:
    if item.error:
        return {"path": item.path, "ok": False, "error": item.error}
    classifier = classifier or _worker.get("classifier")
    if classifier is None:
        return {"path": item.path, "ok": False, "error": _worker.get("error", "no model")}
    decode_kwargs = decode_kwargs if decode_kwargs is not None else _worker.get("decode", {})
    try:
        decoded = decode_image(
            item.path, model_size=classifier.input_size, crop=classifier.crop, **decode_kwargs
        )
        result = classifier.classify(decoded.image)
    except EdgeAppError as exc:
        return {"path": item.path, "ok": False, "error": exc.message}
    except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
        return {"path": item.path, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "path": item.path,
        "ok": True,
        "top": [p.to_json() for p in result.top],
        "inference_ms": round(result.inference_ms, 2),
    }


# Resident memory one more worker costs beyond the model file's bytes (interpreter,
# arena, decode buffers; the fork shares the libraries): measured ~24 MB on aarch64.
WORKER_BYTES = 40 * 1024 * 1024
MEMORY_SHARE = 0.5  # workers may take half the memory available at the start


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def plan_workers(
    workers: int | None,
    threads: int | None,
    *,
    inputs: int | None = None,
    model_path: str | os.PathLike | None = None,
    memory: int | None = None,
) -> tuple[int, int]:
    """(workers, threads per worker): by default one worker per core, one thread each.

    Never more workers than cores, than inputs, or than fit in half the available memory
    (a Pi Zero 2 W has 512 MB): a larger --workers is capped, not obeyed.
    """
    cores = default_threads()
    if workers is None:
        workers = max(1, cores // threads) if threads else cores
    caps = [cores]
    if inputs is not None:
        caps.append(max(1, inputs))
    memory = available_memory() if memory is None else memory
    if memory is not None:
        model_bytes = 0
        if model_path is not None:
            try:
                model_bytes = os.path.getsize(model_path)
            except OSError:
                pass
        caps.append(max(1, int(memory * MEMORY_SHARE) // (WORKER_BYTES + 2 * model_bytes)))
    workers = max(1, min(workers, *caps))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


def _classify_chunk(items: list[Item]) -> list[dict]:
    return [classify_item(item) for item in items]


def _worker_pids(pool) -> set[int]:
    # Pool keeps its processes in _pool (stable since Python 3.2); there is no public way
    # to learn that one died.
    return {process.pid for process in pool._pool}


def _watched(pool, results) -> Iterator[list[dict]]:
    """``results`` in order; a worker killed meanwhile (the OOM killer on a small Pi, a
    stray SIGKILL) is a WorkerError at once: Pool would replace it silently and wait
    forever for the records it held."""
    workers = _worker_pids(pool)
    while True:
        try:
            yield results.next(timeout=WATCH_S)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            if _worker_pids(pool) != workers:
                raise WorkerError(
                    "a worker process was killed (out of memory? try fewer --workers)"
                ) from None


def run_batch(
    items: list[Item],
    classifier_kwargs: dict,
    workers: int,
    decode_kwargs: dict | None = None,
    classifier=None,
) -> Iterator[dict]:
    """Yield one record per item, in order. ``classifier`` is used when workers == 1."""
    decode_kwargs = decode_kwargs or {}
    if workers <= 1 or len(items) <= 1:
        if classifier is None:
            from edge_app.inference.classifier import Classifier

            classifier = Classifier(**classifier_kwargs)
        for item in items:
            yield classify_item(item, classifier, decode_kwargs)
        return
    # fork: workers inherit the imported modules, so they start in milliseconds. The
    # parent holds no interpreter threads at this point (see the caller).
    context = multiprocessing.get_context("fork")
    pool = context.Pool(workers, _init_worker, (classifier_kwargs, decode_kwargs))
    try:
        # Chunks of several items cut the parent's per-image IPC work (it shares the
        # cores with the workers); a few chunks per worker keep the tail balanced.
        chunksize = max(1, min(16, len(items) // (workers * 4)))
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        for records in _watched(pool, pool.imap(_classify_chunk, chunks)):
            yield from records
        pool.close()
        joiner = threading.Thread(target=pool.join, daemon=True)  # see _terminate
        joiner.start()
        joiner.join(JOIN_S)
        if joiner.is_alive():
            _terminate(pool)
    except BaseException:
        _terminate(pool)
        raise


def _terminate(pool, timeout: float = 2.0) -> None:
    """End the workers now. Pool.terminate() blocks forever when a killed worker died
    holding the task queue's lock, so the workers are ended first and terminate() gets a
    bounded time on a daemon thread."""
    for process in list(pool._pool):
        try:
            process.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    stopper = threading.Thread(target=pool.terminate, name="edge-app-pool-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)

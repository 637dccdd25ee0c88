"""The service's "Teach" panel: capture examples of named classes, learn, switch models.

Routes (token-protected like every data route):

  GET  /api/teach                         classes, photo counts, training state
  POST /api/teach/capture?class=NAME&count=N[&interval_s=S]
                                          save N (1-50) newest frames into the class
  POST /api/teach/train                   learn from the teach folder, then swap models

POSTs need the header ``X-Edge-App`` (see web.Handler.do_POST: no cross-site posts).

Photos go to ``<state_dir>/teach/<class>/`` (the folder ``edge-app learn`` reads), the
learned model to ``<state_dir>/learned.tflite``. Training is ``edge-app learn`` in a
child process at lower priority (nice 10) with one worker and one thread: the GIL and
the cores stay with the live pipeline. Then ``Service.swap_model`` rebuilds the
pipeline on the new model, as a reload does. A later SIGHUP reload returns to the
configured model (set ``model.model`` to the learned file to keep it).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edge_app.errors import ConfigError, EdgeAppError
from edge_app.learn.teach import TeachFolder

log = logging.getLogger(__name__)

MAX_BURST = 50
TRAIN_NICE = 10
TRAIN_TIMEOUT_S = 1800


class Teacher:
    """The service's teach folder and training job (one at a time)."""

    def __init__(self, service):
        self.service = service
        config = service.config
        self.folder = TeachFolder(config.in_state_dir("teach"))
        self.output = config.in_state_dir("learned.tflite")
        self.base_model = config.model.model  # learned on the configured base model
        self._lock = threading.Lock()
        self.state = "idle"  # idle, training, done, failed
        self.message = ""
        self.trainings = 0
        self._thread: threading.Thread | None = None

    # -- capture ---------------------------------------------------------------------------
    def capture(self, name: str, count: int = 1, interval_s: float = 0.1) -> list[Path]:
        """Save ``count`` distinct newest frames (``interval_s`` apart at least)."""
        pipeline = self.service.pipeline
        if pipeline is None:
            raise ConfigError("no pipeline running: nothing to capture")
        name = self.folder.add_class(name)
        saved, last_number = [], None
        deadline = time.monotonic() + 10.0 + count * max(interval_s, 0.05) * 4
        while len(saved) < count and time.monotonic() < deadline:
            latest = pipeline.latest()
            frame = latest[1] if latest is not None else pipeline.latest_frame()
            if frame is None or frame.number == last_number:
                time.sleep(0.02)
                continue
            saved.append(self.folder.save(name, frame.image))
            last_number = frame.number
            if len(saved) < count:
                time.sleep(interval_s)
        if not saved:
            raise ConfigError("no frame arrived to capture")
        return saved

    # -- training --------------------------------------------------------------------------
    def start_training(self) -> bool:
        """Start learning in the background; False when a training is already running."""
        counts = {c: n for c, n in self.folder.counts().items() if n > 0}
        if len(counts) < 2:
            raise ConfigError("teach at least 2 classes (with one photo or more each) first")
        with self._lock:
            if self.state == "training":
                return False
            self.state, self.message = "training", f"learning {len(counts)} classes"
            self._thread = threading.Thread(target=self._train, name="edge-app-teach", daemon=True)
            self._thread.start()
        return True

    def _command(self, output: Path) -> list[str]:
        return [
            sys.executable, "-m", "edge_app", "learn", str(self.folder.root),
            "-o", str(output), "--model", str(self.base_model),
            "--workers", "1", "--threads", "1", "--no-progress",
        ]  # fmt: skip

    def _train(self) -> None:
        staging = self.output.with_name(f".{self.output.name}.new")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                self._command(staging),
                capture_output=True,
                text=True,
                env=env,
                timeout=TRAIN_TIMEOUT_S,
                preexec_fn=lambda: os.nice(TRAIN_NICE),  # noqa: PLW1509 - no threads in the child yet
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._finish("failed", f"learn could not run: {exc}")
            return
        if proc.returncode not in (0, 1) or not staging.is_file():  # 1: some photos unusable
            lines = [ln for ln in proc.stderr.strip().splitlines() if "error" in ln]
            self._finish("failed", (lines or [f"learn exited with {proc.returncode}"])[-1])
            return
        summary = next((ln for ln in proc.stdout.splitlines() if ln.startswith("accuracy")), "")
        try:
            os.replace(staging, self.output)
            self.service.swap_model(self.output)
        except (OSError, EdgeAppError) as exc:
            message = exc.message if isinstance(exc, EdgeAppError) else str(exc)
            self._finish("failed", f"cannot switch to the learned model: {message}")
            return
        self.trainings += 1
        took = time.monotonic() - started
        self._finish("done", f"learned in {took:.1f} s and switched to it. {summary}".strip())

    def _finish(self, state: str, message: str) -> None:
        with self._lock:
            self.state, self.message = state, message
        (log.info if state == "done" else log.error)("teach: %s", message)

    def status(self) -> dict:
        pipeline = self.service.pipeline
        model = pipeline.classifier.model_name if pipeline is not None else None
        with self._lock:
            state, message = self.state, self.message
        return {
            "classes": [{"name": n, "photos": c} for n, c in self.folder.counts().items()],
            "state": state,
            "message": message,
            "trainings": self.trainings,
            "model": model,
            "learned_model": str(self.output) if self.output.is_file() else None,
            "folder": str(self.folder.root),
        }


def teacher_of(service) -> Teacher:
    """The service's Teacher, made on first use."""
    teacher = getattr(service, "teach", None)
    if teacher is None:
        teacher = service.teach = Teacher(service)
    return teacher


# -- HTTP handlers (methods of web.Handler, registered by web.py) ---------------------------


def _reply_error(handler, exc: EdgeAppError) -> None:
    handler._json(HTTPStatus.BAD_REQUEST, {"error": exc.message})


def get_status(handler) -> None:
    handler._json(HTTPStatus.OK, teacher_of(handler.app.backend).status())


def post_capture(handler) -> None:
    query = parse_qs(urlsplit(handler.path).query)
    try:
        name = (query.get("class") or [""])[0]
        try:
            count = int((query.get("count") or ["1"])[0])
            interval = float((query.get("interval_s") or ["0.1"])[0])
        except ValueError as exc:
            raise ConfigError("count and interval_s must be numbers") from exc
        if not 1 <= count <= MAX_BURST:
            raise ConfigError(f"count must be 1 to {MAX_BURST}")
        teacher = teacher_of(handler.app.backend)
        saved = teacher.capture(name, count, max(0.0, min(interval, 2.0)))
    except EdgeAppError as exc:
        _reply_error(handler, exc)
        return
    handler._json(HTTPStatus.OK, {"saved": len(saved), **teacher.status()})


def post_train(handler) -> None:
    teacher = teacher_of(handler.app.backend)
    try:
        started = teacher.start_training()
    except EdgeAppError as exc:
        _reply_error(handler, exc)
        return
    status = HTTPStatus.ACCEPTED if started else HTTPStatus.CONFLICT
    handler._json(status, teacher.status())


GET_ROUTES = {"/api/teach": get_status}
POST_ROUTES = {"/api/teach/capture": post_capture, "/api/teach/train": post_train}

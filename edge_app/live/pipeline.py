"""The live pipeline: capture, inference and outputs running concurrently.

The capture thread puts each frame into a one-frame slot where the newest frame wins
(replaced frames are counted as dropped); the inference thread, which owns the
classifier, takes the newest frame, classifies it and hands the result to listeners.
Displays and other outputs read ``latest()`` / ``latest_frame()`` or listen, and never
hold up either thread, so no queue can grow and latency stays bounded.

Lossless sources (video files read with --no-pace) make capture wait until inference
has taken the previous frame instead: every frame is classified, in order.

With ``reconnect=True`` a source that cannot open or fails mid-run is retried with
exponential backoff (0.5 s doubling to 30 s) while the pipeline and its listeners
stay alive; without it a failure ends the run and ``error`` holds the SourceError.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from edge_app.errors import ConfigError, EdgeAppError, SourceError
from edge_app.live.sinks import ResultSink
from edge_app.live.smoothing import LabelSmoother
from edge_app.live.stats import PipelineState, PipelineStats
from edge_app.measure import percentile
from edge_app.results import Frame, LiveResult
from edge_app.sources.base import FrameSource

log = logging.getLogger(__name__)

Listener = Callable[[LiveResult, Frame], None]

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
_TURN_S = 0.25  # longest a thread waits before looking at stop/pause again


class FrameSlot:
    """A one-frame hand-off: the newest frame wins and replaced frames are counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame, wait: bool = False) -> bool:
        """Offer a frame; ``wait`` blocks until the previous one was taken (lossless).
        False when the slot is closed."""
        with self._cond:
            if wait:
                while self._frame is not None and not self._closed:
                    self._cond.wait()
            if self._closed:
                return False
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> Frame | None:
        """The newest frame (emptying the slot), or None after ``timeout``."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()  # a lossless capture may be waiting
            return frame

    def close(self) -> None:
        """No more frames; a frame still in the slot can be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class RateMeter:
    """Events per second over the last ``window`` events (0 when they have stopped)."""

    def __init__(self, window: int = 30):
        self._times: deque[float] = deque(maxlen=window)

    def tick(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float | None = None) -> float:
        times = tuple(self._times)
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        if span <= 0:
            return 0.0
        rate = (len(times) - 1) / span
        now = time.monotonic() if now is None else now
        # Stale: nothing for several intervals (a stalled or retrying source).
        if now - times[-1] > max(2.0, 3.0 / rate):
            return 0.0
        return rate


class LatencyHistogram:
    """Whole-run percentiles in bounded memory: 1 % wide log buckets, 0.01 ms to 1000 s."""

    _LOW_MS = 0.01
    _STEP = math.log(1.01)
    _BUCKETS = int(math.log(1e5 / 0.01) / math.log(1.01)) + 2

    def __init__(self) -> None:
        self._counts = np.zeros(self._BUCKETS, np.int64)
        self.count = 0

    def add(self, ms: float) -> None:
        i = int(math.log(max(ms, self._LOW_MS) / self._LOW_MS) / self._STEP)
        self._counts[min(i, self._BUCKETS - 1)] += 1
        self.count += 1

    def percentile(self, q: float) -> float:
        if self.count == 0:
            return 0.0
        i = int(np.searchsorted(np.cumsum(self._counts), q / 100.0 * self.count))
        return self._LOW_MS * math.exp((i + 0.5) * self._STEP)


class Pipeline:
    """Capture -> latest-frame slot -> inference -> listeners; see the module docstring.

    ``source`` may be unopened; without ``reconnect`` ``start()`` opens it and raises
    its SourceError. ``source_factory()`` makes a fresh source for each reconnect (the
    same source object is reopened when there is none). ``max_results`` and
    ``duration`` (seconds) end the run like the end of a video.
    """

    def __init__(
        self,
        source: FrameSource | None,
        classifier,
        *,
        smooth: float = 0.0,
        hysteresis: float = 0.0,
        reconnect: bool = False,
        source_factory: Callable[[], FrameSource] | None = None,
        crop: str | None = None,
        max_results: int | None = None,
        duration: float | None = None,
        gate=None,
    ):
        if source is None and source_factory is None:
            raise ConfigError("a pipeline needs a source or a source_factory")
        if max_results is not None and max_results < 1:
            raise ConfigError("max_results (--max-frames) must be at least 1")
        if duration is not None and duration <= 0:
            raise ConfigError("duration (--duration) must be positive")
        self.source = source
        self.classifier = classifier
        self.crop = crop  # for frames without a model image; None: the classifier's own
        self.reconnect = reconnect
        self.source_factory = source_factory
        self.max_results = max_results
        self.duration = duration
        self.smoother = LabelSmoother(smooth, hysteresis)
        self.gate = gate  # edge_app.live.motion.MotionGate or None: classify every frame
        self.error: EdgeAppError | None = None  # why the run failed, if it did

        self._slot = FrameSlot()
        self._listeners: list[Listener] = []
        self._failed_listeners: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._capture_thread: threading.Thread | None = None
        self._inference_thread: threading.Thread | None = None

        self._latest: tuple[LiveResult, Frame] | None = None
        self._latest_scores: np.ndarray | None = None
        self._newest_frame: Frame | None = None
        self._frames = 0
        self._results = 0
        self._state = PipelineState.RUNNING
        self._capture_turn = time.monotonic()
        self._inference_turn = time.monotonic()
        self._camera_rate = RateMeter()
        self._inference_rate = RateMeter()
        self._invoke_ms: deque[float] = deque(maxlen=100)
        self._latency_ms: deque[float] = deque(maxlen=300)
        self._latency_run = LatencyHistogram()
        self._started_at: float | None = None
        self._first_result_at: float | None = None
        self._last_result_at: float | None = None
        self._deadline: float | None = None

    # -- control --------------------------------------------------------------------
    def add_listener(self, fn: Listener) -> None:
        """``fn(result, frame)`` runs on the inference thread after each result: keep it
        cheap (hand work to your own thread)."""
        self._listeners.append(fn)

    def add_sink(self, sink: ResultSink) -> None:
        """Hand every result to ``sink.submit`` (closing it stays the owner's job)."""
        self.add_listener(sink.submit)

    def start(self) -> None:
        if self._capture_thread is not None:
            raise RuntimeError("pipeline already started")
        if not self.reconnect:
            if self.source is None:
                self.source = self.source_factory()
            self.source.open()  # raises SourceError for the caller
        self._started_at = time.monotonic()
        if self.duration is not None:
            self._deadline = self._started_at + self.duration
        self._inference_thread = threading.Thread(
            target=self._inference_loop, name="edge-app-inference", daemon=True
        )
        self._capture_thread = threading.Thread(
            target=self._capture_loop, name="edge-app-capture", daemon=True
        )
        self._inference_thread.start()
        self._capture_thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop both threads; the capture thread closes (releases) the source."""
        self._stop.set()
        self._resume.set()
        self._slot.close()
        end = time.monotonic() + timeout
        for thread in (self._capture_thread, self._inference_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, end - time.monotonic()))
                if thread.is_alive():
                    log.warning("%s did not stop within %.1f s", thread.name, timeout)
        if self._capture_thread is None and self.source is not None:
            self.source.close()  # never started
        with self._lock:
            if self._state in (PipelineState.RUNNING, PipelineState.RETRYING):
                self._state = PipelineState.ENDED
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has ended (end of source, limits, failure or stop)."""
        return self._done.wait(timeout)

    def pause(self) -> None:
        """Hold inference (and a file's playback); a live camera keeps being read."""
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    # -- reading --------------------------------------------------------------------
    def latest(self) -> tuple[LiveResult, Frame] | None:
        """The newest result and the frame it was computed from."""
        return self._latest

    def latest_frame(self) -> Frame | None:
        """The newest captured frame (may be newer than the latest result's)."""
        return self._newest_frame

    def latest_scores(self) -> np.ndarray | None:
        """The raw (unsmoothed) scores of the newest result."""
        return self._latest_scores

    def snapshot(self) -> PipelineStats:
        """The figures of this moment, typed (see ``edge_app.live.stats``)."""
        now = time.monotonic()
        with self._lock:
            state = self._state
            heartbeat = self._inference_turn
            if state == PipelineState.RETRYING:
                heartbeat = max(heartbeat, self._capture_turn)
            invoke = tuple(self._invoke_ms)
            latency = tuple(self._latency_ms)
            frames, results = self._frames, self._results
        clf = self.classifier
        runtime = getattr(clf, "runtime", None)
        return PipelineStats(
            frames=frames,
            results=results,
            dropped=self._slot.dropped,
            camera_fps=round(self._camera_rate.rate(now), 2),
            inference_fps=round(self._inference_rate.rate(now), 2),
            invoke_ms=round(sum(invoke) / len(invoke), 2) if invoke else 0.0,
            latency_ms_p50=round(percentile(latency, 50), 2),
            latency_ms_p95=round(percentile(latency, 95), 2),
            source_state=PipelineState(state),
            heartbeat=heartbeat,
            model=getattr(clf, "model_name", ""),
            runtime=runtime.describe() if hasattr(runtime, "describe") else str(runtime),
            threads=getattr(clf, "threads", 0),
            source=self.source.description if self.source is not None else "",
            paused=self.paused,
            error=str(self.error) if self.error else None,
            gate=self.gate.stats() if self.gate is not None else {"mode": "off"},
        )

    def stats(self) -> dict:
        """``snapshot()`` as the plain dict `/api/stats` is built from."""
        return self.snapshot().as_dict()

    def summary(self) -> dict:
        """Whole-run figures for the exit line."""
        with self._lock:
            results = self._results
            first, last = self._first_result_at, self._last_result_at
        span = (last - first) if first is not None and last is not None else 0.0
        return {
            "frames": self._frames,
            "results": results,
            "dropped": self._slot.dropped,
            "mean_fps": (results - 1) / span if span > 0 else 0.0,
            "latency_ms_p50": self._latency_run.percentile(50),
            "latency_ms_p95": self._latency_run.percentile(95),
        }

    # -- threads --------------------------------------------------------------------
    def _set_state(self, state: PipelineState) -> None:
        with self._lock:
            self._state = state

    def _end(self, state: PipelineState) -> None:
        """Finish the run from inside: no more frames; inference drains the slot."""
        with self._lock:
            if self._state not in (PipelineState.ENDED, PipelineState.FAILED):
                self._state = state
        self._stop.set()
        self._slot.close()

    def _time_is_up(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _capture_loop(self) -> None:
        source = self.source
        backoff = BACKOFF_FIRST_S
        retrying = False
        try:
            while not self._stop.is_set():
                self._capture_turn = time.monotonic()
                if self._time_is_up():
                    self._end(PipelineState.ENDED)
                    break
                if source is None or not source.is_open:
                    try:
                        if source is None:
                            source = self.source_factory()
                        self.source = source
                        source.open()
                    except Exception as exc:
                        if not isinstance(exc, SourceError):  # a bug or odd driver error
                            log.debug("source open failed", exc_info=True)
                            exc = SourceError(f"cannot open source: {type(exc).__name__}: {exc}")
                        if source is not None and self.source_factory is not None:
                            source.close()
                            source = None
                        if not self._failed(exc, retrying, backoff):
                            return
                        retrying = True
                        backoff = min(backoff * 2, BACKOFF_MAX_S)
                        continue
                    if retrying:
                        log.info("source %s is back; resuming", source.description)
                        retrying, backoff = False, BACKOFF_FIRST_S
                        self.smoother.reset()
                    self._set_state(PipelineState.RUNNING)
                if not self._resume.is_set() and not source.live:
                    self._resume.wait(_TURN_S)  # a paused file does not advance
                    continue
                try:
                    frame = source.read()
                    if frame is None and source.live and self.reconnect:
                        raise SourceError(f"{source.description} ended")
                except Exception as exc:
                    if not isinstance(exc, SourceError):
                        exc = SourceError(f"{source.description} failed: {exc}")
                    source.close()
                    if self.source_factory is not None:
                        source = None
                    if not self._failed(exc, retrying, backoff):
                        return
                    retrying = True
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                if frame is None:
                    self._end(PipelineState.ENDED)
                    break
                self._camera_rate.tick(time.monotonic())
                self._newest_frame = frame
                # Counted once handed over: frames = results + dropped (+ one in the slot).
                # A paused live camera's frames are read only to keep it fresh; a file's
                # frame read just as a pause came is kept, not lost.
                handed_over = self._resume.is_set() or not source.live
                if handed_over and self._slot.put(frame, wait=source.lossless):
                    with self._lock:
                        self._frames += 1
        finally:
            if source is not None:
                source.close()
            self._slot.close()

    def _failed(self, exc: SourceError, retrying: bool, backoff: float) -> bool:
        """Handle a source failure: False ends the run; True after waiting out a backoff."""
        if not self.reconnect:
            self.error = exc
            log.debug("source failed: %s", exc)
            self._end(PipelineState.FAILED)
            return False
        if not retrying:
            log.warning(
                "%s; retrying (backoff %.1f s doubling to %.0f s)", exc, backoff, BACKOFF_MAX_S
            )
        else:
            log.debug("retry failed: %s", exc)
        self._set_state(PipelineState.RETRYING)
        until = time.monotonic() + backoff
        while not self._stop.is_set():
            self._capture_turn = time.monotonic()
            left = until - self._capture_turn
            if left <= 0:
                break
            self._stop.wait(min(left, 1.0))
        return not self._stop.is_set()

    def _inference_loop(self) -> None:
        clf = self.classifier
        labels = getattr(clf, "labels", None)
        try:
            while True:
                self._inference_turn = time.monotonic()
                if not self._resume.is_set() and not self._stop.is_set():
                    self._resume.wait(_TURN_S)
                    continue
                frame = self._slot.take(_TURN_S)
                if frame is None:
                    if self._slot.closed:
                        break
                    if self._time_is_up():
                        self._end(PipelineState.ENDED)
                    continue
                trigger = "always"
                if self.gate is not None:
                    trigger = self.gate.should_infer(frame, time.monotonic())
                    if trigger is None:
                        continue  # a still picture: the previous result still holds
                self._classify(clf, labels, frame, trigger)
                if self.max_results is not None and self._results >= self.max_results:
                    self._end(PipelineState.ENDED)
                    break
        except Exception as exc:
            log.debug("inference failed", exc_info=True)
            self.error = EdgeAppError(f"inference failed: {type(exc).__name__}: {exc}")
            self._end(PipelineState.FAILED)
        finally:
            self._done.set()

    def _classify(self, clf, labels, frame: Frame, trigger: str = "always") -> None:
        if frame.model_image is not None:
            classification = clf.classify(frame.model_image, crop="none")
        else:
            classification = clf.classify(frame.image, crop=self.crop)
        now = time.monotonic()
        top = classification.top
        if self.smoother.active:
            smoothed = self.smoother.update(classification.scores)
            top = self.smoother.top(smoothed, clf.top(smoothed), labels)
        latency_ms = (now - frame.monotonic) * 1000.0
        self._inference_rate.tick(now)
        result = LiveResult(
            frame=frame.number,
            time=frame.timestamp,
            top=top,
            inference_ms=classification.inference_ms,
            latency_ms=latency_ms,
            fps=self._inference_rate.rate(now),
            camera_fps=self._camera_rate.rate(now),
            raw_top=classification.top,
            trigger=trigger,
        )
        with self._lock:
            self._results += 1
            self._invoke_ms.append(classification.inference_ms)
            self._latency_ms.append(latency_ms)
            self._latency_run.add(latency_ms)
            if self._first_result_at is None:
                self._first_result_at = now
            self._last_result_at = now
            self._latest = (result, frame)
            self._latest_scores = classification.scores
        for listener in self._listeners:
            try:
                listener(result, frame)
            except Exception:
                if id(listener) not in self._failed_listeners:
                    self._failed_listeners.add(id(listener))
                    log.exception(
                        "result listener %r failed (further failures not logged)", listener
                    )

"""The service: one pipeline feeding the web view, MQTT, the event log and triggers,
run under systemd (or by hand) until SIGTERM, with SIGHUP reloading the configuration.

The pipeline gets one listener, ``_on_result``, which only hands references on; each
output does its work on its own thread. The main thread watches the pipeline and talks
to systemd: READY=1 once the first result exists (or once the camera is known to be
missing, so the web view and API are up while it is retried), WATCHDOG=1 while frames
flow, STATUS= with the rates.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from edge_app import __version__
from edge_app.errors import CameraUnavailable, ConfigError, EdgeAppError, Interrupted
from edge_app.service.config import ServiceConfig, load_config
from edge_app.service.frames import JpegFeed, LatestBoard
from edge_app.service.metrics import MetricsText
from edge_app.service.notify import Notifier

log = logging.getLogger("edge_app.serve")

TICK_S = 0.2
SOURCE_STATES = ("starting", "running", "retrying", "ended", "failed")


class Service:
    def __init__(
        self,
        config: ServiceConfig,
        *,
        config_path: str | Path | None = None,
        notifier: Notifier | None = None,
        source_options: dict | None = None,
    ):
        """``source_options`` go to ``make_source`` (tests pass a fake picamera2)."""
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.source_options = dict(source_options or {})
        self.results = LatestBoard()  # newest LiveResult, for the event stream
        self.feed = JpegFeed(
            self._draw_live, max_fps=config.web.max_fps, quality=config.web.jpeg_quality
        )
        self.pipeline = None
        self.web = None
        self.mqtt = None
        self.eventlog = None
        self.triggers = None
        self._overlay = None  # the encoder thread's
        self._trigger_overlay = None  # the trigger thread's
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self.started_at = time.monotonic()
        self.reloads = 0
        self.reload_failures = 0
        self.ready = False
        self._shut_down = False
        self.health_state = "starting"
        # Health is decided from the same stats snapshot a client is shown, at the moment it
        # asks (not on the main loop's tick), so /healthz, /api/latest and /api/stats agree.
        self._health_lock = threading.Lock()
        self._progress = (-1, time.monotonic())  # (frames, when that count was first seen)
        self._reloader = threading.Thread()  # the running background reload, if any
        self._prepared = None  # its result, for the main loop to apply
        self._serving = False  # the main loop runs: a stop no longer interrupts start-up

    # -- wiring ----------------------------------------------------------------------------
    def _on_result(self, result, frame) -> None:
        """The pipeline's one listener (inference thread): references only."""
        self.results.publish(result)
        self.feed.submit(result, frame)
        for output in (self.mqtt, self.eventlog, self.triggers):
            if output is not None:
                output.submit(result, frame)

    def _draw_live(self, image, result):
        overlay = self._overlay
        return overlay.draw(image, result) if overlay is not None else image

    def _draw_trigger(self, image, result):
        overlay = self._trigger_overlay
        return overlay.draw(image, result) if overlay is not None else image

    def build_pipeline(self, config: ServiceConfig):
        """A ready (not started) pipeline, its classifier loaded and its source checked."""
        from edge_app.cli.options import build_classifier
        from edge_app.live.overlay import Overlay
        from edge_app.live.pipeline import Pipeline
        from edge_app.sources import make_source

        m, s = config.model, config.source
        classifier = build_classifier(
            model=m.model,
            labels=m.labels or None,
            runtime=m.runtime,
            threads=m.threads or None,
            xnnpack=m.xnnpack,
            crop=m.crop,
            top_k=m.top_k,
            threshold=m.threshold,
        )
        model_height, model_width = classifier.input_size

        def make() -> object:
            return make_source(
                s.spec,
                size=(s.width, s.height),
                fps=s.fps,
                model_size=(model_width, model_height),
                hflip=s.hflip,
                vflip=s.vflip,
                buffer_count=s.buffer_count,
                pace=s.pace,
                loop=s.loop,
                **self.source_options,
            )

        # A wrong file name or URL scheme fails now, in one line; a camera that is busy
        # or missing is retried by the pipeline while the service stays up.
        try:
            source = make()
            source.open()
        except CameraUnavailable as exc:
            log.warning("%s; retrying with backoff while the web view and API stay up", exc)
            source = None
        pipeline = Pipeline(
            source,
            classifier,
            smooth=config.pipeline.smooth,
            hysteresis=config.pipeline.effective_hysteresis,
            reconnect=True,
            source_factory=make,
        )
        pipeline.add_listener(self._on_result)
        overlays = (
            Overlay(classifier.model_name, classifier.top_k),
            Overlay(classifier.model_name, classifier.top_k),
        )
        return pipeline, overlays

    def _start_pipeline(self, pipeline, overlays) -> None:
        self._overlay, self._trigger_overlay = overlays
        self.pipeline = pipeline
        self._progress = (-1, time.monotonic())
        pipeline.start()
        clf = pipeline.classifier
        log.info(
            "classifying %s with %s",
            pipeline.source.description if pipeline.source else self.config.source.spec,
            clf.describe() if hasattr(clf, "describe") else clf,
        )

    def build_web(self, config: ServiceConfig):
        if not config.web.enabled:
            return None
        from edge_app.service.web import WebServer

        return WebServer(config.web, self)

    def build_mqtt(self, config: ServiceConfig):
        if not config.mqtt.enabled:
            return None
        from edge_app.service.mqtt_out import MqttPublisher

        return MqttPublisher(config.mqtt, config.device_id, status=self._mqtt_status)

    def build_eventlog(self, config: ServiceConfig):
        if not config.eventlog.path:
            return None
        from edge_app.service.eventlog import EventLog

        ev = config.eventlog
        return EventLog(
            config.in_state_dir(ev.path),
            mode=ev.mode,
            max_bytes=ev.max_bytes,
            backups=ev.backups,
            extra={"device_id": config.device_id},
        )

    def build_triggers(self, config: ServiceConfig):
        if not config.trigger:
            return None
        from edge_app.service.triggers import Trigger, Triggers

        triggers = [
            Trigger(
                name=config.trigger_name(i),
                pattern=t.pattern,
                min_score=t.min_score,
                cooldown_s=t.cooldown_s,
                folder=config.in_state_dir(t.dir),
                max_bytes=int(t.max_mb * 1_000_000),
            )
            for i, t in enumerate(config.trigger)
        ]
        return Triggers(triggers, self._draw_trigger)

    def _mqtt_status(self) -> dict:
        pipeline = self.pipeline
        if pipeline is None:
            return {"source_state": "starting"}
        return {"source_state": self.health_state, "model": pipeline.classifier.model_name}

    # -- running ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def _install_signals(self) -> None:
        def on_stop(signum, frame):
            first = not self._stop.is_set()
            self.request_stop()
            if first and not self._serving:  # still starting (a slow fetch): stop now
                raise Interrupted(signum)

        def on_hup(signum, frame):
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def start(self) -> None:
        """Load the model, bind the web server, connect outputs, start the pipeline.
        A user error raises EdgeAppError (one line) with nothing left running."""
        config = self.config
        from edge_app.service.preflight import check_outputs

        check_outputs(config)  # before the camera and the port: fail fast, in one line
        try:
            pipeline, overlays = self.build_pipeline(config)
            self.pipeline = pipeline  # so a failure below still releases its source
            self.web = self.build_web(config)
            self.eventlog = self.build_eventlog(config)
            self.triggers = self.build_triggers(config)
            self.mqtt = self.build_mqtt(config)
            if self.web is not None:
                self.web.start()
                log.info("web view and API on %s", self.web.url)
            self._start_pipeline(pipeline, overlays)
        except BaseException:
            self.shutdown()
            raise

    def run(self, install_signals: bool = True) -> int:
        """Start, serve until stopped; the exit code (0 after SIGTERM, 1 on failure)."""
        if install_signals:
            self._install_signals()
        self.start()
        try:
            return self.serve()
        finally:
            self.shutdown()

    def serve(self) -> int:
        self._serving = True
        interval = self.notifier.watchdog_interval
        watchdog = interval is not None and self.config.service.watchdog
        if watchdog:
            log.info("systemd watchdog: pinging every %.1f s while frames flow", interval)
        next_ping = next_status = 0.0
        announced = None
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._reload.is_set() and not self._reloader.is_alive():
                self._reload.clear()
                self._reload_in_background()
            with self._health_lock:
                prepared, self._prepared = self._prepared, None
            if prepared is not None:
                self._apply_reload(prepared)
            stats = self.pipeline.stats()
            state = self._health(stats)
            if state != announced:
                self._announce(state, announced, stats)
                announced = state
            if state == "failed":
                return 1  # inference itself failed: let systemd restart the service
            now = time.monotonic()
            if not self.ready and (stats["results"] > 0 or state == "retrying"):
                self.ready = True
                self.notifier.ready(self.status_text(stats))
                log.info("ready (%s)", self.status_text(stats))
            if watchdog and state != "stalled" and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            if now >= next_status:
                self.notifier.status(self.status_text(stats))
                next_status = now + self.config.service.status_interval
        return 0

    def _health(self, stats: dict) -> str:
        """starting, running, retrying, ended, failed, or stalled (no frames for
        service.stall_s while the source should be delivering them)."""
        state = stats["source_state"]
        with self._health_lock:
            now = time.monotonic()
            if state in ("retrying", "ended", "failed"):
                self._progress = (stats["frames"], now)
            elif stats["frames"] != self._progress[0]:
                self._progress = (stats["frames"], now)
            stall_s = self.config.service.stall_s
            stalled = (
                now - self._progress[1] > stall_s or now - stats["heartbeat"] > stall_s
            ) and state == "running"
            if stalled:
                state = "stalled"
            elif state == "running" and stats["results"] == 0:
                state = "starting"
            self.health_state = state
        return state

    def _announce(self, state: str, previous: str | None, stats: dict) -> None:
        """Log each health change once."""
        if state == "stalled":
            log.error(
                "pipeline stalled: no frames or results for %.0f s; "
                "withholding the watchdog ping so systemd restarts the service",
                self.config.service.stall_s,
            )
        elif state == "retrying":
            log.warning("source unavailable; retrying with backoff")
        elif state == "running" and previous in ("retrying", "stalled"):
            log.info("source is back; frames flowing again")
        elif state == "ended":
            log.info("source ended; still serving the last result")
        elif state == "failed":
            log.error("pipeline failed: %s", stats.get("error") or "see the log above")

    def status_text(self, stats: dict) -> str:
        state = self.health_state
        if state == "retrying":
            return "camera unavailable: retrying with backoff"
        text = (
            f"{state}: {stats['inference_fps']:.1f} FPS inference, "
            f"{stats['camera_fps']:.1f} FPS camera, {stats['invoke_ms']:.1f} ms invoke"
        )
        latest = self.pipeline.latest() if self.pipeline else None
        if latest is not None and latest[0].top:
            top = latest[0].top[0]
            text += f"; {top.label.split(',')[0]} {top.score:.0%}"
        return text

    # -- reload ----------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config; rebuild only what changed. A bad config changes nothing."""
        return self._apply_reload(self._prepare_reload())

    def _prepare_reload(self):
        """The slow part of a reload (a model fetch, a model load, a source opening), which
        ``serve`` runs off the main loop so the watchdog keeps being pinged meanwhile:
        (new config or the ConfigError, (pipeline, overlays) or None or the error)."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            return exc, None
        old = self.config
        if (new.source, new.model, new.pipeline) == (old.source, old.model, old.pipeline):
            return new, None
        try:
            return new, self.build_pipeline(new)
        except EdgeAppError as exc:
            return new, exc

    def _reload_in_background(self) -> None:
        def work():
            prepared = self._prepare_reload()
            with self._health_lock:
                if not self._shut_down:
                    self._prepared = prepared
                    prepared = None
            if prepared is not None and isinstance(prepared[1], tuple):
                prepared[1][0].stop(timeout=0.5)  # stopped meanwhile: release its source
            self._wake.set()

        self._reloader = threading.Thread(target=work, name="edge-app-reload", daemon=True)
        self._reloader.start()

    def _apply_reload(self, prepared) -> bool:
        new, built = prepared
        if isinstance(new, ConfigError):
            self.reload_failures += 1
            log.error("reload: %s; keeping the running configuration", new.message)
            self.notifier.ready(self.status_text(self.pipeline.stats()))
            return False
        old = self.config
        applied = old
        changed = []
        if built is not None:
            if isinstance(built, EdgeAppError):
                log.error("reload: %s; keeping the running pipeline", built.message)
            else:
                pipeline, overlays = built
                self.pipeline.stop()
                self._start_pipeline(pipeline, overlays)
                applied = replace(
                    applied, source=new.source, model=new.model, pipeline=new.pipeline
                )
                changed.append("pipeline")
        if new.web != old.web:
            if self._reload_web(old, new):
                applied = replace(applied, web=new.web)
                changed.append("web")
        output_parts = (
            ("mqtt", "mqtt", lambda c: (c.mqtt, c.device_id), self.build_mqtt),
            (
                "eventlog",
                "eventlog",
                lambda c: (c.eventlog, c.state_dir, c.device_id),
                self.build_eventlog,
            ),
            ("triggers", "trigger", lambda c: (c.trigger, c.state_dir), self.build_triggers),
        )
        for attr, section, key, build in output_parts:
            if key(new) == key(old):
                continue
            try:
                output = build(new)
            except EdgeAppError as exc:
                log.error("reload: %s; keeping the running %s", exc.message, attr)
                continue
            previous = getattr(self, attr)
            setattr(self, attr, output)
            if previous is not None:
                previous.close()
            applied = replace(applied, **{section: getattr(new, section)})
            changed.append(attr)
        if new.service != old.service:
            applied = replace(applied, service=new.service)
            changed.append("service")
        self.config = replace(applied, path=new.path)
        self.reloads += 1
        log.info("configuration reloaded: %s", ", ".join(changed) or "nothing changed")
        self.notifier.ready(self.status_text(self.pipeline.stats()))
        return True

    def _reload_web(self, old: ServiceConfig, new: ServiceConfig) -> bool:
        self.feed.max_fps = new.web.max_fps
        self.feed.quality = new.web.jpeg_quality
        same_socket = (old.web.host, old.web.port) == (new.web.host, new.web.port)
        if self.web is not None and new.web.enabled and same_socket:
            self.web.config = new.web  # token, rates and limits apply to the next request
            return True
        try:
            web = self.build_web(new)  # binds the new address before the old one closes
        except EdgeAppError as exc:
            log.error("reload: %s; keeping the running web server", exc.message)
            return False
        if self.web is not None:
            self.web.close()
        self.web = web
        if web is not None:
            web.start()
            log.info("web view and API on %s", web.url)
        return True

    # -- stopping --------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Release the camera, flush outputs, close the web server: well within 3 s."""
        with self._health_lock:
            if self._shut_down:
                return
            self._shut_down = True
            prepared, self._prepared = self._prepared, None
        if prepared is not None and isinstance(prepared[1], tuple):
            prepared[1][0].stop(timeout=0.5)  # a reload built but never applied
        self.notifier.stopping()
        began = time.monotonic()
        if self.pipeline is not None:
            self.pipeline.stop(timeout=1.0)
        for output in (self.eventlog, self.triggers, self.mqtt):
            if output is not None:
                try:
                    output.close(0.6)
                except Exception:  # one failing output must not keep the others open
                    log.exception("closing %r failed", output)
        self.eventlog = self.triggers = self.mqtt = None
        self.results.close()
        self.feed.close()
        if self.web is not None:
            self.web.close()
            self.web = None
        self.notifier.close()
        if self.ready:
            log.info("stopped in %.2f s", time.monotonic() - began)

    # -- what the web server reads ---------------------------------------------------------
    def latest_json(self) -> dict | None:
        latest = self.pipeline.latest() if self.pipeline else None
        return latest[0].to_json() if latest is not None else None

    def stats(self) -> dict:
        pipeline = self.pipeline
        if pipeline is None:
            base, state, latest = {"source_state": "starting"}, "starting", None
        else:
            latest = pipeline.latest()  # read before the stats: they count it already
            base = pipeline.stats()
            state = self._health(base)
        heartbeat = base.pop("heartbeat", None)
        top = latest[0].top[0] if latest is not None and latest[0].top else None
        mqtt, eventlog, triggers, web = self.mqtt, self.eventlog, self.triggers, self.web
        return {
            **base,
            "state": state,
            "heartbeat_age_s": round(time.monotonic() - heartbeat, 3) if heartbeat else None,
            "label": top.label if top else None,
            "score": round(top.score, 5) if top else None,
            "device_id": self.config.device_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "reloads": self.reloads,
            "web": {
                "viewers": self.feed.viewers,
                "streams": web.streams if web else 0,
                "jpeg_frames": self.feed.encoded,
                "jpeg_ms": round(self.feed.encode_ms, 2),
                "max_fps": self.feed.max_fps,
            },
            "mqtt": (
                {
                    "connected": mqtt.connected,
                    "connects": mqtt.connects,
                    "published": mqtt.published,
                    "topic": mqtt.state_topic,
                }
                if mqtt
                else None
            ),
            "eventlog": (
                {"path": str(eventlog.path), "lines": eventlog.lines, "dropped": eventlog.dropped}
                if eventlog
                else None
            ),
            "triggers": [
                {"name": t.name, "saved": t.saved, "folder": str(t.folder)}
                for t in (triggers.triggers if triggers else [])
            ],
        }

    def health(self) -> tuple[bool, dict]:
        stats = self.pipeline.stats() if self.pipeline else None
        if stats is None:
            return False, {"status": "starting"}
        heartbeat_age = round(time.monotonic() - stats["heartbeat"], 3)
        state = self._health(stats)
        detail = {
            "status": "ok" if state == "running" else state,
            "source_state": stats["source_state"],
            "results": stats["results"],
            "heartbeat_age_s": heartbeat_age,
        }
        return state == "running", detail

    def metrics_text(self) -> str:
        stats = self.pipeline.stats() if self.pipeline else {}
        state = self._health(stats) if stats else "starting"
        m = MetricsText()
        m.add(
            "info",
            "gauge",
            "Version, model and runtime; always 1.",
            1,
            {
                "version": __version__,
                "model": stats.get("model", ""),
                "runtime": stats.get("runtime", ""),
                "device_id": self.config.device_id,
            },
        )
        m.add(
            "up",
            "gauge",
            "1 while frames flow (state running).",
            1 if state == "running" else 0,
        )
        for each in (*SOURCE_STATES, "stalled"):
            m.add(
                "state",
                "gauge",
                "The service's state (one of them is 1).",
                1 if state == each else 0,
                {"state": each},
            )
        m.add("frames_total", "counter", "Frames handed to inference.", stats.get("frames", 0))
        m.add("results_total", "counter", "Inference results.", stats.get("results", 0))
        m.add(
            "dropped_frames_total",
            "counter",
            "Frames replaced before inference took them.",
            stats.get("dropped", 0),
        )
        m.add("inference_fps", "gauge", "Results per second.", stats.get("inference_fps", 0))
        m.add("camera_fps", "gauge", "Frames captured per second.", stats.get("camera_fps", 0))
        m.add(
            "invoke_milliseconds",
            "gauge",
            "Mean model invoke time, recent results.",
            stats.get("invoke_ms", 0),
        )
        for q, key in (("0.5", "latency_ms_p50"), ("0.95", "latency_ms_p95")):
            m.add(
                "latency_milliseconds",
                "gauge",
                "Capture-to-result latency, recent results.",
                stats.get(key, 0),
                {"quantile": q},
            )
        heartbeat = stats.get("heartbeat")
        m.add(
            "heartbeat_age_seconds",
            "gauge",
            "Seconds since the pipeline last turned.",
            round(time.monotonic() - heartbeat, 3) if heartbeat else 0,
        )
        latest = self.pipeline.latest() if self.pipeline else None
        if latest is not None and latest[0].top:
            top = latest[0].top[0]
            m.add(
                "top_score",
                "gauge",
                "Score of the current top label.",
                top.score,
                {"label": top.label},
            )
        m.add(
            "uptime_seconds",
            "gauge",
            "Seconds since the service started.",
            round(time.monotonic() - self.started_at, 1),
        )
        m.add("config_reloads_total", "counter", "Successful configuration reloads.", self.reloads)
        m.add(
            "config_reload_failures_total",
            "counter",
            "Rejected configuration reloads.",
            self.reload_failures,
        )
        m.add("web_viewers", "gauge", "Clients watching the live picture.", self.feed.viewers)
        m.add("jpeg_frames_total", "counter", "Live-picture JPEGs encoded.", self.feed.encoded)
        mqtt = self.mqtt
        if mqtt is not None:
            m.add(
                "mqtt_connected",
                "gauge",
                "1 while connected to the broker.",
                1 if mqtt.connected else 0,
            )
            m.add("mqtt_messages_total", "counter", "State messages published.", mqtt.published)
        eventlog = self.eventlog
        if eventlog is not None:
            m.add(
                "eventlog_lines_total", "counter", "Lines written to the event log.", eventlog.lines
            )
        if self.triggers is not None:
            for t in self.triggers.triggers:
                m.add(
                    "trigger_snapshots_total",
                    "counter",
                    "Snapshots saved by a trigger.",
                    t.saved,
                    {"trigger": t.name},
                )
        return m.render()


def serve(config_path: str | Path | None) -> int:
    """`edge-app serve`: load, run, return the exit code."""
    config = load_config(config_path)
    return Service(config, config_path=config_path).run()

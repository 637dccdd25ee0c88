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
from edge_app.errors import ConfigError, EdgeAppError, Interrupted
from edge_app.live.stats import PipelineStats
from edge_app.results import human_label
from edge_app.service.config import ServiceConfig, load_config
from edge_app.service.frames import JpegFeed, LatestBoard
from edge_app.service.health import HealthMonitor, HealthState, health_report
from edge_app.service.metrics import ServiceFigures, render_metrics
from edge_app.service.notify import Notifier
from edge_app.service.series import Series

log = logging.getLogger("edge_app.serve")

TICK_S = 0.2


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
        # The page draws its own overlay from the result data over this clean picture.
        self.clean_feed = JpegFeed(
            _no_overlay, max_fps=config.web.max_fps, quality=config.web.jpeg_quality
        )
        self.series = Series()  # the last minutes of rates and scores, for the page's chart
        self.recorder = None  # events with snapshots and clips (edge_app.service.recorder)
        # callback(kind, event); kept across reloads. MQTT's is the first: it publishes
        # each event on <base>/events and drives the watch's binary sensor.
        self.event_listeners: list = [self._event_to_mqtt]
        self.pipeline = None
        self.web = None
        self.mqtt = None
        self.eventlog = None
        self.triggers = None
        self.teach = None  # edge_app.service.teach.Teacher, made on first use
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
        self._stop_requested_at: float | None = None
        # Health is decided from the same stats snapshot a client is shown, at the moment it
        # asks (not on the main loop's tick), so /healthz, /api/latest and /api/stats agree.
        self._monitor = HealthMonitor(config.service.stall_s)
        self._reload_lock = threading.Lock()  # hands a prepared reload to the main loop
        # One pipeline switch at a time: a reload (main loop) and a learned model's switch
        # (the Teach panel's thread) must not stop and start pipelines over each other.
        self._switch_lock = threading.Lock()
        self._reloader = threading.Thread()  # the running background reload, if any
        self._prepared = None  # its result, for the main loop to apply
        self._serving = False  # the main loop runs: a stop no longer interrupts start-up

    @property
    def health_state(self) -> HealthState:
        return self._monitor.state

    # -- wiring ----------------------------------------------------------------------------
    def _on_result(self, result, frame) -> None:
        """The pipeline's one listener (inference thread): references only. Every output
        is a result sink (``edge_app.live.sinks.ResultSink``)."""
        self.results.publish(result)
        for sink in (self.feed, self.clean_feed, self.mqtt, self.eventlog, self.triggers):
            if sink is not None:
                sink.submit(result, frame)
        if self.recorder is not None:
            self.recorder.submit(result, frame)

    def _draw_live(self, image, result):
        overlay = self._overlay
        return overlay.draw(image, result) if overlay is not None else image

    def _draw_trigger(self, image, result):
        overlay = self._trigger_overlay
        return overlay.draw(image, result) if overlay is not None else image

    def build_pipeline(self, config: ServiceConfig):
        """A ready (not started) pipeline, its classifier loaded and its source checked,
        with the overlays for the live picture and the triggers."""
        from edge_app.live.assembly import build_pipeline
        from edge_app.live.overlay import Overlay

        # A wrong file name or URL scheme fails now, in one line; a camera that is busy
        # or missing is retried by the pipeline while the service stays up.
        pipeline = build_pipeline(
            config.source,
            config.model,
            config.pipeline,
            reconnect=True,
            source_options=self.source_options,
        )
        pipeline.add_listener(self._on_result)
        classifier = pipeline.classifier
        view = {"crop": classifier.crop, "model_size": classifier.input_size}
        overlays = (
            Overlay(classifier.model_name, classifier.top_k, **view),
            Overlay(classifier.model_name, classifier.top_k, **view),
        )
        return pipeline, overlays

    def _start_pipeline(self, pipeline, overlays) -> None:
        self._overlay, self._trigger_overlay = overlays
        self.pipeline = pipeline
        self._monitor.restart()
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
        from edge_app.service.mqtt_commands import ServiceControl
        from edge_app.service.mqtt_out import MqttPublisher
        from edge_app.service.watches import trigger_watches

        return MqttPublisher(
            config.mqtt,
            config.device_id,
            status=self._mqtt_status,
            control=ServiceControl(self),
            triggers=trigger_watches(config),
            # One binary sensor per watched event (`[[event]]`), on while it lasts.
            labels=[config.event_name(i) for i in range(len(config.event))],
        )

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

    def build_recorder(self, config: ServiceConfig):
        if not config.event:
            return None
        from edge_app.service.recorder import build_recorder

        if self.recorder is not None:
            # A reload: the running recorder finishes its clips before the new store
            # sweeps the folder's temporary files.
            self.recorder, previous = None, self.recorder
            previous.close(1.0)
        recorder = build_recorder(config, self._draw_trigger)
        for callback in self.event_listeners:
            recorder.add_listener(callback)
        return recorder

    def _event_to_mqtt(self, kind: str, event: dict) -> None:
        """The recorder's events to MQTT (the event topic, the watch's binary sensor and
        snapshot); through the service, since a reload rebuilds the publisher."""
        mqtt = self.mqtt
        if mqtt is None:
            return
        snapshot = None
        if event.get("snapshot"):  # "media/<id>/snapshot.jpg": the file in the store
            path = self.media_file(str(event.get("id", "")), "snapshot.jpg")
            try:
                snapshot = path.read_bytes() if path is not None else None
            except OSError:
                snapshot = None  # pruned meanwhile: the event goes out without a picture
        mqtt.publish_event(kind, event, snapshot)

    def add_event_listener(self, callback) -> None:
        """``callback(kind, event)`` for every event ("new", "update", "end"), on the
        recorder's thread; survives reloads (see edge_app/service/recorder.py)."""
        self.event_listeners.append(callback)
        if self.recorder is not None:
            self.recorder.add_listener(callback)

    def _mqtt_status(self) -> dict:
        pipeline = self.pipeline
        if pipeline is None:
            return {"source_state": str(HealthState.STARTING)}
        # Decided now, from the stats of this moment, like /healthz: a state message that
        # carries a label never says "starting".
        state = self._health(pipeline.stats())
        return {"source_state": str(state), "model": pipeline.classifier.model_name}

    # -- running ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop_requested_at is None:  # "stopped in" counts from the signal
            self._stop_requested_at = time.monotonic()
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
            self.recorder = self.build_recorder(config)
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
            with self._reload_lock:
                prepared, self._prepared = self._prepared, None
            if prepared is not None:
                self._apply_reload(prepared)
            stats = self.pipeline.snapshot()
            state = self._health(stats)
            self._sample(stats)
            if state != announced:
                self._announce(state, announced, stats)
                announced = state
            if state == HealthState.FAILED:
                return 1  # inference itself failed: let systemd restart the service
            now = time.monotonic()
            if not self.ready and (stats["results"] > 0 or state == HealthState.RETRYING):
                self.ready = True
                self.notifier.ready(self.status_text(stats))
                log.info("ready (%s)", self.status_text(stats))
            if watchdog and state != HealthState.STALLED and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            if now >= next_status:
                self.notifier.status(self.status_text(stats))
                next_status = now + self.config.service.status_interval
        return 0

    def _sample(self, stats: dict) -> None:
        latest = self.pipeline.latest()
        top = latest[0].top[0] if latest is not None and latest[0].top else None
        recorder = self.recorder
        self.series.maybe_sample(stats, top, len(recorder.active()) if recorder else 0)
        # Under the motion gate results are rare in a still scene: keep the live picture
        # current with the newest captured frame (and the result that still holds).
        newest = self.pipeline.latest_frame()
        if self.pipeline.gate is not None and latest is not None and newest is not None:
            if newest is not latest[1]:
                self.feed.submit(latest[0], newest)
                self.clean_feed.submit(latest[0], newest)

    def _health(self, stats: PipelineStats | dict | None) -> HealthState:
        """starting, running, retrying, ended, failed, or stalled (``service.health``)."""
        return self._monitor.decide(stats)

    def _announce(self, state: HealthState, previous: str | None, stats) -> None:
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
            log.error("pipeline failed: %s", stats["error"] or "see the log above")

    def status_text(self, stats: PipelineStats | dict) -> str:
        state = self.health_state
        if state == HealthState.RETRYING:
            return "camera unavailable: retrying with backoff"
        text = (
            f"{state}: {stats['inference_fps']:.1f} FPS inference, "
            f"{stats['camera_fps']:.1f} FPS camera, {stats['invoke_ms']:.1f} ms invoke"
        )
        latest = self.pipeline.latest() if self.pipeline else None
        if latest is not None:  # the human rule: no background, nothing under 1 %
            label, score = human_label(latest[0].top)
            text += f"; {label}" + (f" {score:.0%}" if score is not None else "")
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
            with self._reload_lock:
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
            self.notifier.ready(self.status_text(self.pipeline.snapshot()))
            return False
        old = self.config
        applied = old
        changed = []
        if built is not None:
            if isinstance(built, EdgeAppError):
                log.error("reload: %s; keeping the running pipeline", built.message)
            else:
                pipeline, overlays = built
                with self._switch_lock:
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
            ("mqtt", "mqtt", lambda c: (c.mqtt, c.device_id, c.trigger), self.build_mqtt),
            (
                "eventlog",
                "eventlog",
                lambda c: (c.eventlog, c.state_dir, c.device_id),
                self.build_eventlog,
            ),
            ("triggers", "trigger", lambda c: (c.trigger, c.state_dir), self.build_triggers),
            (
                "recorder",
                "event",
                lambda c: (c.event, c.events, c.state_dir),
                self.build_recorder,
            ),
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
            if attr == "recorder":
                applied = replace(applied, events=new.events)
            changed.append(attr)
        if new.service != old.service:
            applied = replace(applied, service=new.service)
            self._monitor.stall_s = new.service.stall_s
            changed.append("service")
        self.config = replace(applied, path=new.path)
        self.reloads += 1
        log.info("configuration reloaded: %s", ", ".join(changed) or "nothing changed")
        self.notifier.ready(self.status_text(self.pipeline.snapshot()))
        return True

    def swap_model(self, path: str | Path) -> None:
        """Switch the running pipeline to the model at ``path`` (e.g. a learned one),
        rebuilding it as a reload does; a model that does not load changes nothing."""
        config = replace(self.config, model=replace(self.config.model, model=str(path), labels=""))
        pipeline, overlays = self.build_pipeline(config)  # EdgeAppError: keep the old one
        with self._switch_lock:
            self.pipeline.stop()
            self._start_pipeline(pipeline, overlays)
            self.config = config
        log.info("switched to the model %s", path)

    def _reload_web(self, old: ServiceConfig, new: ServiceConfig) -> bool:
        for feed in (self.feed, self.clean_feed):
            feed.max_fps = new.web.max_fps
            feed.quality = new.web.jpeg_quality
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
        with self._reload_lock:
            if self._shut_down:
                return
            self._shut_down = True
            prepared, self._prepared = self._prepared, None
        if prepared is not None and isinstance(prepared[1], tuple):
            prepared[1][0].stop(timeout=0.5)  # a reload built but never applied
        self.notifier.stopping()
        began = self._stop_requested_at or time.monotonic()
        if self.pipeline is not None:
            self.pipeline.stop(timeout=1.0)
        for output in (self.eventlog, self.triggers, self.recorder, self.mqtt):
            if output is not None:
                try:
                    output.close(0.6)
                except Exception:  # one failing output must not keep the others open
                    log.exception("closing %r failed", output)
        self.eventlog = self.triggers = self.recorder = self.mqtt = None
        self.results.close()
        self.feed.close()
        self.clean_feed.close()
        if self.web is not None:
            self.web.close()
            self.web = None
        self.notifier.close()
        if self.ready:
            log.info(
                "stopped in %.2f s (from the stop request to the end of shutdown)",
                time.monotonic() - began,
            )

    # -- what the web server reads ---------------------------------------------------------
    def latest_json(self) -> dict | None:
        latest = self.pipeline.latest() if self.pipeline else None
        return latest[0].to_json() if latest is not None else None

    def stats(self) -> dict:
        """The `/api/stats` body: the pipeline's snapshot plus the service's figures."""
        pipeline = self.pipeline
        if pipeline is None:
            base, state, latest = {"source_state": str(HealthState.STARTING)}, "starting", None
        else:
            latest = pipeline.latest()  # read before the stats: they count it already
            snapshot = pipeline.snapshot()
            state = self._health(snapshot)
            base = snapshot.as_dict()
        heartbeat = base.pop("heartbeat", None)
        top = latest[0].top[0] if latest is not None and latest[0].top else None
        mqtt, eventlog, triggers, web = self.mqtt, self.eventlog, self.triggers, self.web
        return {
            **base,
            "state": str(state),
            "heartbeat_age_s": round(time.monotonic() - heartbeat, 3) if heartbeat else None,
            "label": top.label if top else None,
            "score": round(top.score, 5) if top else None,
            "device_id": self.config.device_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "reloads": self.reloads,
            "events": self.recorder.stats() if self.recorder else None,
            "web": {
                "viewers": self.feed.viewers + self.clean_feed.viewers,
                "streams": web.streams if web else 0,
                "jpeg_frames": self.feed.encoded + self.clean_feed.encoded,
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

    def history(self, **query) -> dict:
        """Stored events, newest first (see EventStore.history); empty without events."""
        recorder = self.recorder
        if recorder is None:
            return {"events": [], "next": None}
        return recorder.store.history(**query)

    def media_file(self, event_id: str, name: str):
        """The path of an event's media file, or None (unknown, invalid or outside)."""
        recorder = self.recorder
        return recorder.store.media_path(event_id, name) if recorder else None

    def health(self) -> tuple[bool, dict]:
        """(healthy, the `/healthz` body), from a fresh snapshot."""
        stats = self.pipeline.snapshot() if self.pipeline else None
        return health_report(stats, self._health(stats))

    def metrics_text(self) -> str:
        """The `/metrics` page (``service.metrics``), from one snapshot."""
        pipeline = self.pipeline
        latest = pipeline.latest() if pipeline else None
        stats = pipeline.snapshot() if pipeline else None
        state = self._health(stats)
        top = latest[0].top[0] if latest is not None and latest[0].top else None
        mqtt, eventlog, triggers, recorder = self.mqtt, self.eventlog, self.triggers, self.recorder
        figures = ServiceFigures(
            version=__version__,
            device_id=self.config.device_id,
            uptime_s=round(time.monotonic() - self.started_at, 1),
            reloads=self.reloads,
            reload_failures=self.reload_failures,
            web_viewers=self.feed.viewers + self.clean_feed.viewers,
            jpeg_frames=self.feed.encoded + self.clean_feed.encoded,
            mqtt_connected=mqtt.connected if mqtt is not None else None,
            mqtt_published=mqtt.published if mqtt is not None else 0,
            eventlog_lines=eventlog.lines if eventlog is not None else None,
            trigger_saved=tuple((t.name, t.saved) for t in (triggers.triggers if triggers else ())),
            events=(
                (recorder.started, recorder.store.count(), recorder.store.total_bytes())
                if recorder is not None
                else None
            ),
        )
        return render_metrics(stats, state, top, figures)


def _no_overlay(image, result):
    return image

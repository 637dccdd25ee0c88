"""The web view and JSON API, on the standard library's ThreadingHTTPServer.

Why no web framework: the endpoints are few and fixed, the Pi has little memory, and a
thread per client is cheap at the client counts a camera sees (bounded by
``web.max_clients`` for the long-lived streams). Routes:

  /                 the page: live picture, predictions and stats (edge_app/web/)
  /stream.mjpg      MJPEG (multipart/x-mixed-replace), clean; ?overlay=1 burns it in
  /snapshot.jpg     one JPEG of the newest frame
  /api/latest       the newest result, the same object as `edge-app run --json`
  /api/stats        pipeline and service figures
  /api/events       Server-Sent Events: ``result`` per new result, ``stats`` each second
  /api/history      stored events, newest first: ?since=UNIX&label=TEXT&limit=N&before=CURSOR
  /api/series       the last minutes of rates and top scores, one sample a second (?since=)
  /media/<event id>/snapshot.jpg, /media/<event id>/clip.<ext>   an event's media
  /media/<event id>/clip.mjpg   the clip as a JPEG stream (for clips browsers cannot play)
  /healthz          200 when frames are flowing, else 503 (no token needed)
  /metrics          Prometheus text format
  /api/teach...     the Teach panel (GET status; POST capture, train): service/teach.py

With ``web.token`` set every route showing the camera or its results needs
``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (the page passes on the one in its
own URL); the page's static files and /healthz do not. The config refuses a non-loopback
host without a token.
"""

from __future__ import annotations

import errno
import hmac
import io
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from edge_app import __version__
from edge_app.errors import ConfigError
from edge_app.service import teach as teach_routes
from edge_app.service.frames import lower_thread_priority
from edge_app.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/teach.js": ("teach.js", "text/javascript; charset=utf-8"),
}
BOUNDARY = "edgeappframe"
WRITE_TIMEOUT_S = 10.0  # a client that takes no data this long is dropped
STATS_EVERY_S = 1.0
REQUEST_HEAD_S = 10.0  # the whole request head must arrive within this (slow trickles)
SHORT_REQUEST_THREADS = 16  # handler threads beyond web.max_clients, for short requests
SLOT_WAIT_S = 5.0  # how long a request waits for a free handler thread
_TOKEN_IN_LOG = re.compile(r"(?i)(token=)[^&\s\"]*")


def load_static() -> dict[str, bytes]:
    """The page's files, read once from the package (``edge_app/web/``)."""
    folder = resources.files("edge_app") / "web"
    return {name: (folder / name).read_bytes() for name, _ in set(STATIC.values())}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: a burst of clients waits, is not refused
    app: WebServer

    def process_request(self, request, client_address):
        """A thread per request, up to a cap. At the cap a burst waits here (and in the
        backlog) for a thread to finish; a 503 only after SLOT_WAIT_S or when closing."""
        waited = 0.0
        while not self.app.handler_slots.acquire(timeout=0.1):
            waited += 0.1
            if waited >= SLOT_WAIT_S or self.app.closing.is_set():
                _refuse_busy(request)
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.app.handler_slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app.handler_slots.release()

    def handle_error(self, request, client_address):
        """A client that misbehaves is a debug line, never a traceback in the journal."""
        log.debug("request from %s failed", client_address[0], exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebServer:
    """Serves ``backend`` (the Service): feed, results, latest_json(), stats(),
    metrics_text(), health()."""

    def __init__(self, config, backend):
        self.config = config
        self.backend = backend
        self.static = load_static()
        self.closing = threading.Event()
        self.streams = 0  # open MJPEG and event-stream clients
        self.handler_slots = threading.BoundedSemaphore(config.max_clients + SHORT_REQUEST_THREADS)
        self._streams_lock = threading.Lock()
        self.requests = 0
        host = config.host
        server_class = _Server6 if ":" in host else _Server
        try:
            self.httpd = server_class((host.strip("[]"), config.port), Handler)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = (
                    f" (port {config.port} is taken: another edge-app running? "
                    "choose another web.port, or EDGE_APP_WEB_PORT)"
                )
            raise ConfigError(
                f"web: cannot listen on {host}:{config.port}: {exc.strerror or exc}{hint}"
            ) from None
        self.httpd.app = self
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="edge-app-web",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host.strip('[]')}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.closing.set()
        # shutdown() waits for serve_forever() to end: one never started would hang it.
        if self._thread.ident is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread.ident is not None:
            self._thread.join(1.0)

    def open_stream(self) -> bool:
        with self._streams_lock:
            if self.streams >= self.config.max_clients:
                return False
            self.streams += 1
            return True

    def close_stream(self) -> None:
        with self._streams_lock:
            self.streams -= 1


class Handler(BaseHTTPRequestHandler):
    server_version = f"edge-app/{__version__}"
    protocol_version = "HTTP/1.0"  # one request per connection: streams end by closing
    timeout = 30  # reading a request

    @property
    def app(self) -> WebServer:
        return self.server.app

    def setup(self) -> None:
        super().setup()
        # Reads of the request head share one deadline, however slowly bytes trickle in.
        self.rfile.close()  # the socket's own file (the socket stays open)
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, REQUEST_HEAD_S))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's name
        message = _TOKEN_IN_LOG.sub(r"\1***", format % args)  # never log the token
        log.debug("%s %s", self.address_string(), message)

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        body = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self._send(status, body, "application/json")

    def _authorized(self, query: dict) -> bool:
        token = self.app.config.token
        if not token:
            return True
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif "token" in query:
            given = query["token"][0]
        return hmac.compare_digest(given.encode(), token.encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        """Actions (the Teach panel's): token-protected, no body read. The X-Edge-App
        header, which a page of another site cannot send without a CORS preflight this
        server never grants, keeps such pages from posting (CSRF)."""
        self.app.requests += 1
        parts = urlsplit(self.path)
        route = POST_ROUTES.get(parts.path)
        try:
            if not self._host_allowed():
                body = b"403 forbidden: this Host name is not allowed (see web.allowed_hosts)\n"
                self._send(HTTPStatus.FORBIDDEN, body, "text/plain; charset=utf-8")
            elif not self.headers.get("X-Edge-App"):
                body = b"403 forbidden: actions need the X-Edge-App header\n"
                self._send(HTTPStatus.FORBIDDEN, body, "text/plain; charset=utf-8")
            elif not self._authorized(parse_qs(parts.query)):
                self._send(
                    HTTPStatus.UNAUTHORIZED, b"401 unauthorized\n", "text/plain; charset=utf-8"
                )
            elif route is None:
                self._send(HTTPStatus.NOT_FOUND, b"404 not found\n", "text/plain; charset=utf-8")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client left

    def _host_allowed(self) -> bool:
        """Without a token: only Host names that mean this machine's loopback (DNS
        rebinding gives a hostile page a Host of its own)."""
        config = self.app.config
        if config.token:
            return True  # the token guards every data route
        host = self.headers.get("Host")
        if host is None:
            return True  # HTTP/1.0 clients; browsers always send one
        return host_is_allowed(host, config.host, config.allowed_hosts)

    def do_GET(self) -> None:
        self.app.requests += 1
        self.rfile.raw.deadline = None  # the head is in; the response has its own timeout
        self.connection.settimeout(WRITE_TIMEOUT_S)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        try:
            if not self._host_allowed():
                body = b"403 forbidden: this Host name is not allowed (see web.allowed_hosts)\n"
                self._send(HTTPStatus.FORBIDDEN, body, "text/plain; charset=utf-8")
                return
            # The page's own files hold no data (and a browser fetches them without the
            # token); everything that shows the camera or its results needs it.
            public = path == "/healthz" or path in STATIC
            if not public and not self._authorized(query):
                body = b"401 unauthorized: send 'Authorization: Bearer TOKEN' or ?token=TOKEN\n"
                self._send(
                    HTTPStatus.UNAUTHORIZED,
                    body,
                    "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Bearer realm="edge-app"'},
                )
                return
            route = ROUTES.get(path)
            if route is None and path.startswith("/media/"):
                route = Handler.media
            if route is not None:
                route(self)
            elif path in STATIC:
                name, content_type = STATIC[path]
                self._send(HTTPStatus.OK, self.app.static[name], content_type)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"404 not found\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client left

    # -- routes --------------------------------------------------------------------------
    def latest(self) -> None:
        record = self.app.backend.latest_json()
        if record is None:
            stats = self.app.backend.stats()
            self._json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "no result yet", "source_state": stats.get("source_state")},
            )
        else:
            self._json(HTTPStatus.OK, record)

    def stats(self) -> None:
        self._json(HTTPStatus.OK, self.app.backend.stats())

    def health(self) -> None:
        ok, detail = self.app.backend.health()
        self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)

    def metrics(self) -> None:
        body = self.app.backend.metrics_text().encode()
        self._send(HTTPStatus.OK, body, METRICS_CONTENT_TYPE)

    def snapshot(self) -> None:
        jpeg = self.app.backend.feed.snapshot()
        if jpeg is None:
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE,
                b"no frame yet\n",
                "text/plain; charset=utf-8",
                {"Retry-After": "1"},
            )
        else:
            self._send(HTTPStatus.OK, jpeg, "image/jpeg")

    def _stream_headers(self, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")  # proxies: do not buffer a live stream
        self.send_header("Connection", "close")
        self.end_headers()

    def _begin_stream(self) -> bool:
        if not self.app.open_stream():
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE,
                b"too many viewers\n",
                "text/plain; charset=utf-8",
                {"Retry-After": "5"},
            )
            return False
        lower_thread_priority()
        self.connection.settimeout(WRITE_TIMEOUT_S)
        return True

    def mjpeg(self) -> None:
        if not self._begin_stream():
            return
        try:
            overlay = parse_qs(urlsplit(self.path).query).get("overlay", ["0"])[0]
            backend = self.app.backend
            feed = backend.feed if overlay == "1" else getattr(backend, "clean_feed", backend.feed)
            self._stream_headers(f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            if self.command == "HEAD":
                return
            with feed.watching():
                seq = feed.start_seq()
                while not self.app.closing.is_set() and not feed.closed:
                    new_seq, jpeg = feed.wait_next(seq, 1.0)
                    if new_seq == seq or jpeg is None:
                        continue
                    seq = new_seq
                    self._send_part(jpeg)
        finally:
            self.app.close_stream()

    def _send_part(self, jpeg: bytes) -> None:
        """One JPEG of a multipart/x-mixed-replace stream (the live picture, a clip)."""
        self.wfile.write(
            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
            + jpeg
            + b"\r\n"
        )
        self.wfile.flush()

    def events(self) -> None:
        if not self._begin_stream():
            return
        try:
            backend = self.app.backend
            self._stream_headers("text/event-stream; charset=utf-8")
            if self.command == "HEAD":
                return
            self.wfile.write(b"retry: 2000\n\n")
            seq, last_stats, last_sent = -1, 0.0, 0.0
            while not self.app.closing.is_set():
                new_seq, result = backend.results.wait_newer(seq, STATS_EVERY_S)
                if self.app.closing.is_set():
                    break
                now = time.monotonic()
                chunks = []
                if new_seq != seq:
                    seq = new_seq
                    if result is not None:
                        chunks.append(_event("result", result.to_json()))
                if now - last_stats >= STATS_EVERY_S:
                    last_stats = now
                    chunks.append(_event("stats", backend.stats()))
                if chunks:
                    self.wfile.write(b"".join(chunks))
                    self.wfile.flush()
                    last_sent = now
                elif now - last_sent >= 15.0:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    last_sent = now
                # At most max_fps result events: a fast pipeline does not flood browsers.
                pause = 1.0 / self.app.config.max_fps - (time.monotonic() - now)
                if pause > 0:
                    self.app.closing.wait(pause)
        finally:
            self.app.close_stream()

    # -- events: history and media (edge_app/service/event_store.py) -------------------
    def history(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        try:
            since = float(query["since"][0]) if "since" in query else None
            limit = int(query.get("limit", ["50"])[0])
            before = int(query["before"][0]) if "before" in query else None
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "since, limit and before are numbers"})
            return
        label = query.get("label", [""])[0] or None
        page = self.app.backend.history(since=since, label=label, limit=limit, before=before)
        self._json(HTTPStatus.OK, page)

    def series(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        try:
            since = float(query.get("since", ["0"])[0])
        except ValueError:
            since = 0.0
        self._json(HTTPStatus.OK, {"samples": self.app.backend.series.since(since)})

    def media(self) -> None:
        """/media/<event id>/<name>: only names the store knows, inside its folder."""
        parts = urlsplit(self.path).path.split("/")
        not_found = (HTTPStatus.NOT_FOUND, b"404 no such media\n", "text/plain; charset=utf-8")
        if len(parts) != 4:
            self._send(*not_found)
            return
        event_id, name = parts[2], parts[3]
        if name == "clip.mjpg":
            self._clip_stream(event_id)
            return
        path = self.app.backend.media_file(event_id, name)
        if path is None:
            self._send(*not_found)
            return
        content_type = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        self._send_file(path, content_type)

    def _send_file(self, path, content_type: str) -> None:
        """A file, with single byte ranges (video elements seek with them)."""
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if wanted and size and (wanted.group(1) or wanted.group(2)):
            if wanted.group(1):
                start = int(wanted.group(1))
                end = min(int(wanted.group(2)), size - 1) if wanted.group(2) else size - 1
            else:
                start = max(0, size - int(wanted.group(2)))
            if start > end or start >= size:
                self._send(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    b"",
                    "text/plain",
                    {"Content-Range": f"bytes */{size}"},
                )
                return
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "private, max-age=3600")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.connection.settimeout(WRITE_TIMEOUT_S)
        with open(path, "rb") as source:
            source.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = source.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _clip_stream(self, event_id: str) -> None:
        """An event's clip as MJPEG at its own frame rate, once through."""
        from edge_app.service.clips import clip_fps, iter_clip_jpegs

        backend = self.app.backend
        path = None
        for name in ("clip.avi", "clip.webm", "clip.mp4"):
            path = backend.media_file(event_id, name)
            if path is not None:
                break
        if path is None:
            self._send(HTTPStatus.NOT_FOUND, b"404 no such clip\n", "text/plain; charset=utf-8")
            return
        if not self._begin_stream():
            return
        try:
            self._stream_headers(f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            if self.command == "HEAD":
                return
            interval = 1.0 / clip_fps(path)
            next_at = time.monotonic()
            for jpeg in iter_clip_jpegs(path):
                if self.app.closing.is_set():
                    break
                self.app.closing.wait(max(0.0, next_at - time.monotonic()))
                next_at += interval
                self._send_part(jpeg)
        finally:
            self.app.close_stream()


MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
}


class _DeadlineReader(io.RawIOBase):
    """A socket's reads under one overall deadline (None: the socket's own timeout)."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.sock = sock
        self.deadline: float | None = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request head not complete in time")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


def _refuse_busy(sock: socket.socket) -> None:
    try:
        sock.setblocking(False)
        sock.send(
            b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    except OSError:
        pass


def _host_name(host: str) -> str:
    """The name in a Host header, without the port and brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_is_allowed(host: str, configured: str, allowed: str) -> bool:
    name = _host_name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    extra = {_host_name(h) for h in allowed.split(",") if h.strip()}
    return name == _host_name(configured) or name in extra


def _event(name: str, obj) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


ROUTES = {
    "/stream.mjpg": Handler.mjpeg,
    "/snapshot.jpg": Handler.snapshot,
    "/api/latest": Handler.latest,
    "/api/stats": Handler.stats,
    "/api/events": Handler.events,
    "/api/history": Handler.history,
    "/api/series": Handler.series,
    "/healthz": Handler.health,
    "/metrics": Handler.metrics,
}
# The Teach panel's routes (edge_app/service/teach.py).
ROUTES.update(teach_routes.GET_ROUTES)
POST_ROUTES = dict(teach_routes.POST_ROUTES)

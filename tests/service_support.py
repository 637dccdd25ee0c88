"""Helpers for the service tests: config files, a running `edge-app serve`, a systemd
notify socket, and a strict Prometheus text-format parser."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings share JSON's escapes
    raise TypeError(f"no TOML for {value!r}")


def to_toml(document: dict) -> str:
    """A small TOML writer: sections of scalars, one level of sub-tables, and arrays of
    tables — what the service's config uses."""
    lines = []
    for section, body in document.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            continue
        lines.append(f"[{section}]")
        subtables = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if k not in subtables]
        for name, sub in subtables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


def demo_config(demo_video: Path, model: Path, state_dir: Path, port: int, **sections) -> dict:
    """The demo video looping like a camera, the shared model, the web view on ``port``."""
    document = {
        "source": {"spec": str(demo_video), "loop": True, "pace": True},
        "model": {"model": str(model), "threads": 1},
        "web": {"port": port},
        "service": {"state_dir": str(state_dir)},
    }
    for name, body in sections.items():
        if isinstance(body, dict) and isinstance(document.get(name), dict):
            document[name] = {**document[name], **body}
        else:
            document[name] = body
    return document


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (abstract namespace)."""

    def __init__(self) -> None:
        self.name = f"edge-app-test-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.messages: list[str] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    def wait_for(self, field: str, timeout: float) -> str:
        """The first message (since the last match) holding the line ``field``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
            if field in data.split("\n"):
                return data
        raise AssertionError(f"no {field} within {timeout} s; got {self.messages[-5:]}")

    def drain(self) -> None:
        """Read what is queued. Systemd reads at once; a test socket left unread fills
        up, and the service (never blocking on it) would drop what comes next."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait_for_prefix(self, prefix: str, timeout: float) -> str:
        """The first line starting with ``prefix`` in the next messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
            for line in data.split("\n"):
                if line.startswith(prefix):
                    return line
        raise AssertionError(f"no {prefix}... within {timeout} s; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


class ServiceProcess:
    """`edge-app serve --config FILE` as a child process, as systemd would run it."""

    def __init__(self, config: dict, tmp_path: Path, *, env: dict | None = None, token=None):
        self.config_path = tmp_path / "config.toml"
        self.config_path.write_text(to_toml(config))
        self.port = config["web"]["port"]
        self.token = token
        self.stderr_path = tmp_path / "serve.stderr"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_APP_")}
        environ.update(env or {})
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=environ,
            cwd=tmp_path,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def request(self, path: str, *, token: str | None = "default", timeout: float = 10.0):
        """(status, headers, body) for a GET; the service's token unless told otherwise."""
        token = self.token if token == "default" else token
        request = urllib.request.Request(self.url(path))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str, **kwargs):
        status, _, body = self.request(path, **kwargs)
        return status, json.loads(body)

    def wait_until(self, predicate, timeout: float, what: str):
        """Poll ``predicate()`` (a falsy value or an exception means not yet)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"edge-app serve exited ({self.proc.returncode}) waiting for {what}:\n"
                    + self.stderr()
                )
            try:
                value = predicate()
                if value:
                    return value
            except (OSError, ValueError, KeyError) as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what} (last: {last}):\n{self.stderr()}")

    def wait_for_result(self, timeout: float = 60.0) -> dict:
        def latest():
            status, body = self.get_json("/api/latest", timeout=5)
            return body if status == 200 else None

        return self.wait_until(latest, timeout, "the first result")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


# -- Prometheus text format (0.0.4), parsed strictly -------------------------------------
_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^({_METRIC_NAME})(?:\{{((?:{_LABEL_PAIR})(?:,{_LABEL_PAIR})*,?)?\}})? "
    r"([^ ]+)(?: (-?\d+))?$"
)
_LABEL_ITEM = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_prometheus(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; AssertionError on
    anything the exposition format does not allow."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict] = {}
    current = None
    seen_samples: set = set()
    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {number}: {line!r}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_METRIC_NAME, name), where
                family = families.setdefault(name, {"type": "untyped", "help": None, "samples": []})
                if parts[1] == "TYPE":
                    assert len(parts) == 4 and parts[3] in _TYPES, where
                    assert not family["samples"], f"TYPE after samples: {where}"
                    assert "typed" not in family, f"second TYPE: {where}"
                    family["type"], family["typed"] = parts[3], True
                else:
                    assert family["help"] is None, f"second HELP: {where}"
                    family["help"] = parts[3] if len(parts) == 4 else ""
                current = name
            continue  # other comments are allowed
        assert line.strip(), f"blank line: {where}"
        match = _SAMPLE.match(line)
        assert match, f"not a sample: {where}"
        name, labels_text, value_text = match.group(1), match.group(2) or "", match.group(3)
        value = float(value_text)  # ValueError for anything but a Go-style float
        if value_text not in ("NaN", "+Inf", "-Inf"):
            assert not math.isnan(value) and not math.isinf(value), where
        labels = {k: _unescape(v) for k, v in _LABEL_ITEM.findall(labels_text)}
        family_name = name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and families.get(base, {}).get("type") in (
                "histogram",
                "summary",
            ):
                family_name = base
        assert family_name == current, f"sample outside its family's block: {where}"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen_samples, f"duplicate sample: {where}"
        seen_samples.add(key)
        families[family_name]["samples"].append((name, labels, value))
    return families

"""`edge-app models fetch` over real HTTP on 127.0.0.1: archives, resume, proxies, LAN cache.

The official archives are stood in for by archives built here from the shared models and
served, under their official paths, by a small HTTP server (with Range support, and able
to cut a connection mid-transfer) reached through EDGE_APP_MODEL_BASE_URL. A test
manifest is the real one with the stand-in archive's sha256. Nothing leaves loopback.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import os
import re
import socket
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_app.cli import cli
from edge_app.errors import FetchError
from edge_app.inference import model_store

INT8 = "mobilenet_v1_1.0_224_int8"
QUANT = "mobilenet_v1_1.0_224_quant"
ARCHIVE_PATH = (
    "download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_1.0_224_quant.tgz"
)
OFFICIAL_ARCHIVE_SHA = "d32432d28673a936b2d6281ab0600c71cf7226dfe4cdcef3012555f691744166"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def errors(result) -> list[str]:
    return [x for x in result.stderr.splitlines() if x.startswith("edge-app: error:")]


def make_archive(members: dict[str, bytes]) -> bytes:
    """A .tgz laid out like the official ones (./name entries, other files beside)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mtime, info.mode = len(data), 1533168000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def archive(shared_models) -> bytes:
    return make_archive(
        {
            "mobilenet_v1_1.0_224_quant_info.txt": b"Model: mobilenet_v1_1.0_224_quant\n",
            f"{QUANT}.tflite": (shared_models / f"{QUANT}.tflite").read_bytes(),
        }
    )


class Server:
    """A folder over HTTP on 127.0.0.1 with Range support; ``cuts`` holds byte counts
    after which the next responses break off; ``requests`` logs (path, Range)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.cuts: list[int] = []
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                owner.requests.append((self.path, self.headers.get("Range")))
                path = owner.folder / urllib.parse.unquote(self.path.lstrip("/"))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if wanted:
                    start = int(wanted.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cuts:
                    self.wfile.write(body[: owner.cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Proxy:
    """A forward HTTP proxy on 127.0.0.1: relays absolute-URL GETs, refuses CONNECT
    (tunnels for https) with 502 after noting them; ``requests`` logs both."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_CONNECT(self):  # noqa: N802
                owner.requests.append(("CONNECT", self.path))
                self.send_error(502, "no tunnels here")

            def do_GET(self):  # noqa: N802
                owner.requests.append(("GET", self.path))
                target = urllib.parse.urlsplit(self.path)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=20)
                headers = {k: v for k, v in self.headers.items() if k.lower() == "range"}
                conn.request("GET", target.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                self.send_response(response.status)
                for name in ("Content-Range",):
                    if response.getheader(name):
                        self.send_header(name, response.getheader(name))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, archive):
    folder = tmp_path / "served"
    (folder / ARCHIVE_PATH).parent.mkdir(parents=True)
    (folder / ARCHIVE_PATH).write_bytes(archive)
    srv = Server(folder)
    yield srv
    srv.close()


@pytest.fixture
def store(tmp_path, monkeypatch, server, archive) -> Path:
    """An empty models folder, no mirror, the official host redirected to ``server``, and
    the manifest naming the stand-in archive's sha256."""
    folder = tmp_path / "models"
    text = model_store.manifest_path().read_text()
    assert OFFICIAL_ARCHIVE_SHA in text
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(text.replace(OFFICIAL_ARCHIVE_SHA, hashlib.sha256(archive).hexdigest()))
    monkeypatch.setenv("EDGE_APP_MODELS_DIR", str(folder))
    monkeypatch.setenv("EDGE_APP_MODEL_MANIFEST", str(manifest))
    monkeypatch.setenv("EDGE_APP_MODEL_BASE_URL", server.url)
    monkeypatch.delenv("EDGE_APP_MODEL_MIRROR", raising=False)
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return folder


def pinned(name: str) -> str:
    return model_store.load_manifest()[name].sha256


def test_default_model_from_the_official_archive(store, server):
    result = run("models", "fetch")
    assert result.exit_code == 0, result.output
    dest = store / f"{INT8}.tflite"
    assert result.stdout.strip() == f"{INT8}: fetched: {dest}"
    assert f"edge-app: downloading {QUANT} from {server.url}/{ARCHIVE_PATH}" in result.stderr
    assert f"edge-app: extracting {QUANT}.tflite from {QUANT}.tgz" in result.stderr
    assert f"edge-app: deriving {INT8} from {QUANT}" in result.stderr
    assert model_store.sha256_of(dest) == pinned(INT8)
    assert model_store.sha256_of(store / f"{QUANT}.tflite") == pinned(QUANT)
    # the archive is not kept, nothing temporary is left
    assert sorted(p.name for p in store.iterdir()) == [dest.name, f"{QUANT}.tflite"]
    assert server.requests == [(f"/{ARCHIVE_PATH}", None)]
    again = run("models", "fetch")
    assert again.stdout.strip() == f"{INT8}: already present: {dest}"
    assert len(server.requests) == 1


def test_derived_bytes_are_the_same_on_every_device(store, monkeypatch, tmp_path):
    first = model_store.fetch(INT8)
    monkeypatch.setenv("EDGE_APP_MODELS_DIR", str(tmp_path / "second"))
    second = model_store.fetch(INT8)
    assert first != second
    assert first.read_bytes() == second.read_bytes()


def test_progress_reports_bytes_and_nothing_shows_under_the_name_meanwhile(store, archive):
    dest = store / f"{QUANT}.tflite"
    seen: list[tuple[int, int]] = []

    def on_progress(done: int, total: int) -> None:
        seen.append((done, total))
        assert not dest.exists()  # installed only once verified

    steps: list[str] = []
    model_store.fetch(QUANT, on_progress=on_progress, on_step=steps.append)
    assert seen[0] == (0, len(archive)) and seen[-1] == (len(archive), len(archive))
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert [s.split()[0] for s in steps] == ["downloading", "extracting"]


def test_a_cut_connection_is_resumed(store, server, archive):
    server.cuts = [1_000_000, 500_000]  # two breaks, then the rest
    path = model_store.fetch(QUANT, on_step=lambda text: None)
    assert model_store.sha256_of(path) == pinned(QUANT)
    assert server.requests == [
        (f"/{ARCHIVE_PATH}", None),
        (f"/{ARCHIVE_PATH}", "bytes=1000000-"),
        (f"/{ARCHIVE_PATH}", "bytes=1500000-"),
    ]
    assert not [p for p in store.iterdir() if p.name.startswith(".")]


def test_a_part_left_by_an_earlier_run_is_resumed(store, server, archive):
    store.mkdir()
    (store / f".{QUANT}.tgz.part").write_bytes(archive[:2_000_000])
    result = CliRunner().invoke(cli, ["models", "fetch", QUANT])
    assert result.exit_code == 0, result.output
    assert "(resuming)" in result.stderr
    assert server.requests == [(f"/{ARCHIVE_PATH}", "bytes=2000000-")]
    assert model_store.sha256_of(store / f"{QUANT}.tflite") == pinned(QUANT)
    assert not (store / f".{QUANT}.tgz.part").exists()


def test_an_interrupted_download_keeps_its_part_for_the_next_run(store, server, archive):
    server.cuts = [300_000] * 10  # every response breaks off: the link is gone for now
    with pytest.raises(FetchError) as excinfo:
        model_store.fetch(QUANT, on_step=lambda text: None)
    assert "connection closed" in excinfo.value.message or "IncompleteRead" in str(excinfo.value)
    part = store / f".{QUANT}.tgz.part"
    cut_total = 300_000 * (model_store.MAX_RESUMES + 1)
    assert part.stat().st_size == cut_total
    assert not (store / f"{QUANT}.tflite").exists()
    server.cuts = []
    model_store.fetch(QUANT, on_step=lambda text: None)  # the link is back
    assert server.requests[-1] == (f"/{ARCHIVE_PATH}", f"bytes={cut_total}-")
    assert model_store.sha256_of(store / f"{QUANT}.tflite") == pinned(QUANT)
    assert not part.exists()


def test_stale_parts_are_cleaned(store):
    store.mkdir()
    stale = store / ".mobilenet_v1_0.5_160_quant.tflite.abc123.part"
    stale.write_bytes(b"x" * 100)
    week_ago = time.time() - model_store.STALE_PART_S - 60
    os.utime(stale, (week_ago, week_ago))
    fresh = store / ".mobilenet_v1_0.75_192_quant.tflite.part"
    fresh.write_bytes(b"y" * 100)
    model_store.fetch(QUANT, on_step=lambda text: None)
    assert not stale.exists()
    assert fresh.exists()  # maybe another fetch's: resumed by it, not ours to remove


def test_checksum_mismatch_is_one_error_and_leaves_nothing(store, server, shared_models):
    wrong = make_archive(
        {f"{QUANT}.tflite": (shared_models / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()}
    )
    (server.folder / ARCHIVE_PATH).write_bytes(wrong)
    result = run("models", "fetch")
    assert result.exit_code == 2
    [line] = errors(result)
    assert line.startswith(
        f"edge-app: error: checksum mismatch for {QUANT} from {server.url}/{ARCHIVE_PATH}: "
    )
    assert line.endswith("the file was not kept")
    assert list(store.iterdir()) == []


def test_a_resumed_part_that_does_not_verify_is_fetched_again_from_scratch(store, server):
    store.mkdir()
    (store / f".{QUANT}.tgz.part").write_bytes(b"\0" * 1_000_000)  # from some other file
    path = model_store.fetch(QUANT, on_step=lambda text: None)
    assert model_store.sha256_of(path) == pinned(QUANT)
    assert server.requests == [(f"/{ARCHIVE_PATH}", "bytes=1000000-"), (f"/{ARCHIVE_PATH}", None)]


def test_http_proxy_is_used(store, server, monkeypatch):
    proxy = Proxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        path = model_store.fetch(QUANT, on_step=lambda text: None)
    finally:
        proxy.close()
    assert model_store.sha256_of(path) == pinned(QUANT)
    assert proxy.requests == [("GET", f"{server.url}/{ARCHIVE_PATH}")]


def test_https_proxy_is_used_for_the_official_host(store, monkeypatch):
    """Without the LAN cache the official https host is reached through HTTPS_PROXY (a
    CONNECT tunnel); this proxy notes the tunnel and refuses it, so nothing leaves the
    machine and the failure is one line."""
    monkeypatch.delenv("EDGE_APP_MODEL_BASE_URL")
    proxy = Proxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        result = run("models", "fetch", QUANT)
    finally:
        proxy.close()
    assert proxy.requests == [("CONNECT", "storage.googleapis.com:443")]
    assert result.exit_code == 2
    [line] = errors(result)
    assert line.startswith(
        f"edge-app: error: cannot download {QUANT} from https://storage.googleapis.com/"
        f"{ARCHIVE_PATH} ("
    )


def test_mirror_holding_the_official_archive(store, monkeypatch, tmp_path, archive, server):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"{QUANT}.tgz").write_bytes(archive)
    monkeypatch.setenv("EDGE_APP_MODEL_MIRROR", str(mirror))
    path = model_store.fetch(INT8, on_step=lambda text: None)
    assert model_store.sha256_of(path) == pinned(INT8)
    assert server.requests == []


def test_mirror_holding_only_the_uint8_model(store, monkeypatch, tmp_path, shared_models, server):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"{QUANT}.tflite").write_bytes((shared_models / f"{QUANT}.tflite").read_bytes())
    monkeypatch.setenv("EDGE_APP_MODEL_MIRROR", str(mirror))
    result = run("models", "fetch")
    assert result.exit_code == 0, result.output
    assert model_store.sha256_of(store / f"{INT8}.tflite") == pinned(INT8)
    assert server.requests == []


def test_archive_member_without_metadata_gets_a_sidecar(store, server, shared_models):
    """An official archive's file has no metadata, so its bytes differ from the pinned
    mirror file: it is recorded as verified in <file>.sha256, and so is its int8."""
    from edge_app.inference import tflite_meta, tflite_model

    model = tflite_model.load((shared_models / f"{QUANT}.tflite").read_bytes())
    tflite_model.set_metadata_buffer(model, tflite_meta.METADATA_BUFFER_NAME, None)
    bare_archive = make_archive({f"{QUANT}.tflite": tflite_model.pack(model)})
    (server.folder / ARCHIVE_PATH).write_bytes(bare_archive)
    manifest = Path(os.environ["EDGE_APP_MODEL_MANIFEST"])
    good = hashlib.sha256(bare_archive).hexdigest()
    manifest.write_text(
        (model_store.MANIFEST_CANDIDATES[0]).read_text().replace(OFFICIAL_ARCHIVE_SHA, good)
    )
    result = run("models", "fetch")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in store.iterdir())
    assert names == sorted(
        [f"{INT8}.tflite", f"{INT8}.tflite.sha256", f"{QUANT}.tflite", f"{QUANT}.tflite.sha256"]
    )
    dest = store / f"{INT8}.tflite"
    assert (store / f"{INT8}.tflite.sha256").read_text().split()[0] == model_store.sha256_of(dest)
    again = run("models", "fetch")
    assert again.stdout.strip() == f"{INT8}: already present: {dest}"
    dest.write_bytes(dest.read_bytes()[:-10])  # damaged: no longer verified
    assert not model_store.verified(model_store.load_manifest()[INT8])


def test_progress_line_shows_bytes_rate_and_time_left():
    """The download bar is the shared progress bar in bytes mode: label, sizes, rate and
    time left; a resumed download's bytes already on disk are not counted as speed."""
    from edge_app.cli.progress import ByteProgress

    out = io.StringIO()
    now = [0.0]
    bar = ByteProgress(out, force=True, clock=lambda: now[0])
    bar.start("downloading x")
    for at, done in ((0.0, 400_000), (1.0, 600_000), (1.05, 620_000), (3.0, 1_000_000)):
        now[0] = at  # 400 kB were there already (resumed); 1.05 s: too soon to redraw
        bar(done, 1_000_000)
    bar.finish()
    lines = [line for line in out.getvalue().split("\r") if line.strip("\x1b[K")]
    assert lines and all(line.startswith("\x1b[Kdownloading x: [") for line in lines)
    assert len(lines) == 3  # the throttled call drew nothing
    assert "600.0 kB / 1.0 MB" in lines[1]
    assert "1.0 MB / 1.0 MB" in lines[-1]
    # 600 kB in 3 s of this run: about 200 kB/s (smoothed), not the 333 kB/s that counting
    # the resumed part would give
    rate = float(re.search(r"([\d.]+) kB/s", lines[-1]).group(1))
    assert 180 < rate < 220
    assert out.getvalue().endswith("\r\x1b[K")  # the line is erased when done
    quiet = io.StringIO()  # not a terminal: nothing drawn
    ByteProgress(quiet)(10, 100)
    assert quiet.getvalue() == ""
